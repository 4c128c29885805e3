"""The documents keep their promises: links resolve, the playbook's helm commands render, and its
shell wait-loop really waits for a real Dask scheduler."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.harness.dask_cluster import DaskCluster, free_port
from tests.harness.helm import container, deployment, env_of, run_helm

PLAYBOOK = REPO_ROOT / "docs" / "tpot_playbook.md"
DOCUMENTS = sorted(
    [REPO_ROOT / "README.md", *REPO_ROOT.glob("docs/*.md"), *REPO_ROOT.glob("*/README.md")]
    + list(REPO_ROOT.glob("charts/*/README.md"))
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
# helm flags that only mean something against a live cluster.
CLUSTER_ONLY_FLAGS = {"--create-namespace", "--install", "--wait", "--atomic"}


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(document: Path) -> set[str]:
    body = FENCE.sub("", document.read_text())
    return {_anchor(line.lstrip("#")) for line in body.splitlines() if line.startswith("#")}


def _links(document: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", document.read_text()))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_names_a_file_and_heading_that_exist(document: Path) -> None:
    broken = []
    for target in _links(document):
        if re.match(r"^[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading with anchor #{anchor}")

    assert not broken, f"{document.relative_to(REPO_ROOT)}: {broken}"


def _shell_commands(document: Path, program: str) -> list[list[str]]:
    """Every `program ...` command in the document's bash blocks, continuation lines joined."""
    commands = []
    for language, body in FENCE.findall(document.read_text()):
        if language != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [program]:
                commands.append(words)
    return commands


def _as_template(words: list[str]) -> list[str]:
    """`helm install|upgrade NAME CHART FLAGS` as the `helm template` of the same objects."""
    args = ["template"] + [w for w in words[2:] if w not in CLUSTER_ONLY_FLAGS]
    return [str(REPO_ROOT / w) if (REPO_ROOT / w).exists() and "/" in w else w for w in args]


PLAYBOOK_RELEASES = [w for w in _shell_commands(PLAYBOOK, "helm") if w[1] in ("install", "upgrade")]


def test_the_playbook_walks_through_install_canary_upgrade_and_rollback() -> None:
    assert len(PLAYBOOK_RELEASES) >= 5
    shares = [w.split("=", 1)[1] for c in PLAYBOOK_RELEASES for w in c if "distributedShare=" in w]
    assert {"0.1", "0"} <= set(shares)


@pytest.mark.render
@pytest.mark.parametrize("words", PLAYBOOK_RELEASES, ids=lambda w: " ".join(w[1:2] + w[4:]))
def test_playbook_helm_command_renders_what_it_says(words: list[str], helm_bin: str) -> None:
    rendered = [doc for doc in yaml.safe_load_all(run_helm(*_as_template(words))) if doc]

    env = env_of(container(rendered, "backend"))
    sets = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    share = float(sets.get("tpot.distributedShare", 1.0))
    assert float(env["TPOT_DISTRIBUTED_SHARE"]) == share
    image = container(rendered, "worker")["image"]
    assert image.startswith(sets["image.repository"] + ":")
    if "worker.replicas" in sets:
        assert deployment(rendered, "worker")["spec"]["replicas"] == int(sets["worker.replicas"])


# -- the shell wait-loop -----


def _wait_loop(tmp_path: Path) -> Path:
    text = PLAYBOOK.read_text()
    marker = text.index("<!-- wait-loop")
    language, body = FENCE.search(text, marker).groups()
    assert language == "bash"
    script = tmp_path / "wait-for-scheduler.sh"
    script.write_text(body)
    return script


def _start_loop(script: Path, port: int, wait_seconds: int) -> subprocess.Popen[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "SCHEDULER_HOST": "127.0.0.1",
        "SCHEDULER_PORT": str(port),
        "WAIT_SECONDS": str(wait_seconds),
    }
    return subprocess.Popen(
        ["bash", str(script), "echo", "command started"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.run
def test_wait_loop_runs_the_command_once_a_late_scheduler_listens(tmp_path: Path) -> None:
    script = _wait_loop(tmp_path)
    cluster = DaskCluster(n_workers=0, work_dir=tmp_path / "cluster")
    loop = _start_loop(script, cluster.scheduler_port, wait_seconds=120)
    try:
        time.sleep(4)
        assert loop.poll() is None, "the loop gave up before its budget"

        cluster.start()
        stdout, stderr = loop.communicate(timeout=60)
    finally:
        loop.kill()
        cluster.stop()

    assert loop.returncode == 0, stderr
    assert stdout == "command started\n"
    assert "event=scheduler_retry" in stderr
    assert f"event=scheduler_reachable scheduler=127.0.0.1:{cluster.scheduler_port}" in stderr


@pytest.mark.run
def test_wait_loop_fails_after_its_budget_without_running_the_command(tmp_path: Path) -> None:
    script = _wait_loop(tmp_path)
    started = time.monotonic()

    loop = _start_loop(script, free_port(), wait_seconds=3)
    stdout, stderr = loop.communicate(timeout=60)

    assert loop.returncode == 1
    assert stdout == ""
    assert "event=scheduler_wait_failed" in stderr and "budget_seconds=3" in stderr
    # The budget, plus at most one back-off sleep (16 s cap) that began just before it ran out.
    assert time.monotonic() - started < 3 + 16 + 5


# -- the benchmark figures ----


def test_benchmarks_doc_quotes_the_recorded_run() -> None:
    """docs/benchmarks.md reports the run in benchmarks/results/latest.json, not other numbers."""
    report = json.loads((REPO_ROOT / "benchmarks" / "results" / "latest.json").read_text())
    results = report["results"]
    doc = (REPO_ROOT / "docs" / "benchmarks.md").read_text()

    assert report["mode"] == "full" and set(report["items"]) == set(results)
    assert report["source"]["uncommitted_changes_in"] == []
    assert f"`{report['source']['commit'][:7]}`" in doc
    first_local = results["fallback"]["first_job"]["local_search_started_after_start_seconds"]
    quoted = {
        "throughput": f"**{results['throughput']['ratio']:.2f}**",
        "scaling": f"**{results['scaling']['ratio']:.2f}**",
        "overhead": f"**{results['overhead']['ratio']:.2f}**",
        "fallback": f"**{first_local:.1f} s**",
        "image": f"**{results['scaleout']['image']['size_mb']} MB**",
        "registered": f"**{results['scaleout']['registered_seconds_median']:.2f} s**",
    }
    missing = {item: text for item, text in quoted.items() if text not in doc}
    assert not missing, f"docs/benchmarks.md does not quote latest.json: {missing}"
    for run in results["rows"]["runs"]:
        assert f"| {run['rows']:,} |".replace(",", " ") in doc
        assert run["data_shipped"]["objects"] == 2, "data must go to the cluster once per job"

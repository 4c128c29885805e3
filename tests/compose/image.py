"""What the compose tier needs before `up`: a Docker engine, compose, a base, wheels, the image.

No image can be pulled on this project's CI (nor on air-gapped hosts), so the image is built from a
locally made Debian base (`ci/build-base-image.sh`) and from wheels that pip on the host downloads
into ``.cache/wheels`` with the host's own index configuration; the build itself then installs with
``--no-index`` and needs no network. Both caches survive between runs, so a warm build only re-runs
the layers whose inputs changed.

Run it on its own to build the image the compose file uses::

    .venv/bin/python -m tests.compose.image            # tags tpot-backend:<chart appVersion>
    .venv/bin/python -m tests.compose.image --base python:3.11.14-slim-bookworm
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.tpot.yml"
COMPOSE_BIN = REPO_ROOT / ".tools" / "bin" / "docker-compose"
DOCKERFILE = REPO_ROOT / "backend" / "Dockerfile"
LOCK = REPO_ROOT / "backend" / "requirements.lock"
CACHE_DIR = REPO_ROOT / ".cache"
WHEELHOUSE = CACHE_DIR / "wheels"
BUILD_LOG = CACHE_DIR / "docker" / "build.log"

LOCAL_BASE_IMAGE = "tpot-local-base:bookworm"
# Build back-end of the tpot-backend package; pip's isolated build takes them from the wheelhouse.
BUILD_TOOL_PINS = ("setuptools==80.9.0", "wheel==0.45.1")
# Where the Dockerfile puts the wheelhouse it copied from .cache/wheels.
OFFLINE_PIP_OPTIONS = "--no-index --find-links /tmp/build/wheels"
ENGINE_TIMEOUT_SECONDS = 20
BUILD_TIMEOUT_SECONDS = 1200

logger = logging.getLogger(__name__)


class DockerUnavailable(RuntimeError):
    """No Docker engine or compose can be had here; the message says what is needed."""


def chart_app_version() -> str:
    """The chart's appVersion: the tag of the image (docs/architecture.md)."""
    text = (REPO_ROOT / "charts" / "tpot" / "Chart.yaml").read_text()
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?', text, re.MULTILINE)
    if not match:
        raise ValueError("charts/tpot/Chart.yaml has no appVersion")
    return match.group(1)


def docker_env() -> dict[str, str]:
    """Environment for docker commands: the classic builder (BuildKit is not on every engine)."""
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=ENGINE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


def setup_allowed() -> bool:
    """Installing and starting an engine needs consent: TPOT_WITH_DOCKER=1 (CI sets it)."""
    return os.environ.get("TPOT_WITH_DOCKER") == "1"


def ensure_engine() -> None:
    """Make sure an engine answers and compose is installed, running ci/docker.sh when allowed."""
    if engine_answers() and COMPOSE_BIN.exists():
        return
    if not setup_allowed():
        if not engine_answers():
            raise DockerUnavailable(
                "needs a running Docker engine (or TPOT_WITH_DOCKER=1 to install and start one)"
            )
    started = time.monotonic()
    setup = subprocess.run(
        ["bash", str(REPO_ROOT / "ci" / "docker.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if setup.returncode != 0 or not engine_answers() or not COMPOSE_BIN.exists():
        last = (setup.stderr.strip().splitlines() or ["no output"])[-1]
        raise DockerUnavailable(f"needs a Docker engine and compose; ci/docker.sh said: {last}")
    logger.info("event=docker_ready elapsed_seconds=%.1f", time.monotonic() - started)


def image_exists(tag: str) -> bool:
    inspect = subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True, text=True, check=False
    )
    return inspect.returncode == 0


def ensure_local_base(tag: str = LOCAL_BASE_IMAGE) -> str:
    """The debootstrap base, from the cached tarball when there is one (ci/build-base-image.sh)."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "ci" / "build-base-image.sh"), tag],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ci/build-base-image.sh failed: {result.stderr.strip()[-2000:]}")
    logger.info(
        "event=base_image_ready image=%s elapsed_seconds=%.1f", tag, time.monotonic() - started
    )
    return tag


def wheelhouse_key() -> str:
    digest = hashlib.sha256(LOCK.read_bytes())
    digest.update("\n".join(BUILD_TOOL_PINS).encode())
    return digest.hexdigest()[:16]


def ensure_wheelhouse() -> Path:
    """Wheels for every pin of the lock plus the build tools, made by pip on the host.

    pip here uses the machine's own configuration (index, mirrors, certificates); the build then
    installs from these files alone. The folder is rebuilt only when the lock changes.
    """
    stamp = WHEELHOUSE / "KEY"
    key = wheelhouse_key()
    if stamp.is_file() and stamp.read_text().strip() == key:
        return WHEELHOUSE

    started = time.monotonic()
    partial = CACHE_DIR / "wheels.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(partial),
            "-r",
            str(LOCK),
            *BUILD_TOOL_PINS,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip wheel for the lock failed: {result.stderr.strip()[-2000:]}")
    (partial / "KEY").write_text(key + "\n")
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    partial.rename(WHEELHOUSE)
    logger.info(
        "event=wheelhouse_ready wheels=%d elapsed_seconds=%.1f",
        len(list(WHEELHOUSE.glob("*.whl"))),
        time.monotonic() - started,
    )
    return WHEELHOUSE


def build_image(tag: str, *, base_image: str, offline: bool = True) -> float:
    """`docker build` of backend/Dockerfile from the repository root; returns its seconds."""
    command = [
        "docker",
        "build",
        "--rm",
        "--force-rm",
        "-f",
        str(DOCKERFILE),
        "-t",
        tag,
        "--build-arg",
        f"BASE_IMAGE={base_image}",
    ]
    if offline:
        command += ["--build-arg", f"PIP_INSTALL_OPTIONS={OFFLINE_PIP_OPTIONS}"]
    command.append(str(REPO_ROOT))

    started = time.monotonic()
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with BUILD_LOG.open("w") as log:
        result = subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=docker_env(),
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        tail = "\n".join(BUILD_LOG.read_text().splitlines()[-25:])
        raise RuntimeError(
            f"docker build failed after {elapsed:.0f} s (.cache/docker/build.log):\n{tail}"
        )
    logger.info("event=image_built image=%s base=%s elapsed_seconds=%.1f", tag, base_image, elapsed)
    return elapsed


def image_size_bytes(tag: str) -> int:
    out = subprocess.run(
        ["docker", "image", "inspect", tag, "--format", "{{.Size}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def prepare_image(tag: str | None = None, *, base_image: str | None = None) -> str:
    """Engine, base, wheels and image, in that order; returns the image tag."""
    tag = tag or f"tpot-backend:{chart_app_version()}"
    ensure_engine()
    base = base_image or os.environ.get("TPOT_BASE_IMAGE_FOR_TESTS") or ensure_local_base()
    ensure_wheelhouse()
    build_image(tag, base_image=base)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the tpot-backend image without pulling.")
    parser.add_argument("--tag", default=None, help="image tag (default tpot-backend:<appVersion>)")
    parser.add_argument(
        "--base", default=None, help=f"base image (default: build {LOCAL_BASE_IMAGE})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        tag = prepare_image(args.tag, base_image=args.base)
    except DockerUnavailable as error:
        logger.error("event=docker_unavailable reason=%s", error)
        return 2
    logger.info("event=image_ready image=%s size_mb=%d", tag, image_size_bytes(tag) // 10**6)
    return 0


if __name__ == "__main__":
    sys.exit(main())

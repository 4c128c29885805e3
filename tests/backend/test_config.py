"""Settings are validated at start-up, and the small commands the chart relies on behave."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from distributed import Client
from tpot_backend.cluster import backoff_delays
from tpot_backend.config import ConfigError, Settings
from tpot_backend.jobs import choose_arm

from tests.backend.conftest import run_backend
from tests.harness.dask_cluster import DaskCluster

pytestmark = pytest.mark.backend


BAD_SETTINGS = [
    ("TPOT_PARALLEL_MODE", "fast", "distributed, local, auto"),
    ("TPOT__MEMORY_LIMIT_MB", "512", "from 1024"),
    ("TPOT_DISTRIBUTED_SHARE", "1.5", "from 0.0 to 1.0"),
    ("DASK_SCHEDULER_ADDRESS", "scheduler:8786", "tcp://HOST:PORT"),
    ("TPOT_HTTP_PORT", "eighty", "an integer"),
    ("TPOT_API_TOKEN", "short", "at least 16 characters"),
    ("TPOT_MAX_CONCURRENT_JOBS", "0", "from 1"),
    ("TPOT_DEFAULT_SCORING_CLASSIFICATION", "speed", "scorer name"),
    ("TPOT_DATABASE_URL", "mysql://db/tpot", "postgresql"),
    ("TPOT_SCHEDULER_WAIT_SECONDS", "-1", "from 0.0"),
    ("TPOT_LOG_FORMAT", "xml", "json, text"),
]


@pytest.mark.parametrize(("variable", "value", "accepted"), BAD_SETTINGS)
def test_bad_setting_is_rejected_with_a_message_naming_it_and_what_it_accepts(
    variable: str, value: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})

    message = str(raised.value)
    assert variable in message and accepted in message
    assert "\n" not in message


@pytest.mark.parametrize("command", ["serve", "check-config", "wait-for-scheduler", "run"])
def test_bad_setting_stops_every_command_with_one_line_and_exit_code_2(
    backend_env: dict[str, str], command: str
) -> None:
    args = [command] + (["bundled"] if command == "run" else [])

    result = run_backend(args, {**backend_env, "TPOT_PARALLEL_MODE": "fast"}, timeout_seconds=60)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TPOT_PARALLEL_MODE='fast'" in lines[0] and "distributed, local, auto" in lines[0]


def test_check_config_prints_resolved_settings_with_the_token_redacted(
    backend_env: dict[str, str],
) -> None:
    token = "s3cret-token-0123456789"
    env = {
        **backend_env,
        "TPOT_API_TOKEN": token,
        "TPOT_PARALLEL_MODE": "distributed",
        "DASK_SCHEDULER_ADDRESS": "tcp://tpot-scheduler:8786",
        "TPOT_DATABASE_URL": "postgresql+psycopg://tpot:hunter2@db/tpot",
    }

    result = run_backend(["check-config"], env, timeout_seconds=60)

    assert result.returncode == 0, result.stderr
    assert token not in result.stdout and "hunter2" not in result.stdout
    resolved = json.loads(result.stdout)
    assert resolved["api_token"] == "<redacted>"
    assert resolved["parallel_mode"] == "distributed"
    assert resolved["scheduler_source"] == "tcp://tpot-scheduler:8786"
    assert resolved["memory_limit_mb"] == 1024
    assert resolved["limits"]["max_upload_mb"] == 100


def test_scheduler_address_wins_over_the_scheduler_file() -> None:
    both = Settings.from_env(
        {"DASK_SCHEDULER_ADDRESS": "tcp://a:8786", "TPOT_SCHEDULER_FILE": "/x/scheduler.json"}
    )
    file_only = Settings.from_env({"TPOT_SCHEDULER_FILE": "/x/scheduler.json"})

    assert both.scheduler_source == "tcp://a:8786"
    assert file_only.scheduler_source == "file:/x/scheduler.json"


def test_plain_postgresql_urls_get_the_driver_the_image_ships() -> None:
    for scheme in ("postgresql", "postgres"):
        settings = Settings.from_env({"TPOT_DATABASE_URL": f"{scheme}://u:p@db:5432/tpot"})
        assert settings.database_url == "postgresql+psycopg://u:p@db:5432/tpot"


def test_default_cap_below_default_is_rejected() -> None:
    with pytest.raises(ConfigError, match="TPOT_DEFAULT_GENERATIONS"):
        Settings.from_env({"TPOT_DEFAULT_GENERATIONS": "50", "TPOT_MAX_GENERATIONS": "10"})


def test_arm_is_deterministic_per_job_and_follows_the_distributed_share() -> None:
    canary = Settings.from_env({"TPOT_DISTRIBUTED_SHARE": "0.3"})
    ids = [f"{i:032x}" for i in range(2000)]

    arms = [choose_arm(job_id, canary) for job_id in ids]

    assert arms == [choose_arm(job_id, canary) for job_id in ids]
    assert 0.25 < arms.count("distributed") / len(ids) < 0.35
    assert {choose_arm(i, Settings.from_env({"TPOT_DISTRIBUTED_SHARE": "0"})) for i in ids} == {
        "local"
    }
    local = Settings.from_env({"TPOT_PARALLEL_MODE": "local"})
    assert {choose_arm(i, local) for i in ids} == {"local"}


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    delays = backoff_delays(1.0, 8.0, rng=random.Random(7))

    drawn = [next(delays) for _ in range(7)]

    ceilings = [1, 2, 4, 8, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(drawn, ceilings, strict=True))
    assert len({round(d, 6) for d in drawn}) == len(drawn)


def test_written_scheduler_file_lets_a_dask_client_connect(
    shared_cluster: DaskCluster, backend_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "run" / "scheduler.json"

    result = run_backend(
        ["write-scheduler-file", "--address", shared_cluster.address, "--path", str(path)],
        backend_env,
        timeout_seconds=60,
    )

    assert result.returncode == 0, result.stderr
    with Client(scheduler_file=str(path), timeout=10, set_as_default=False) as client:
        assert client.scheduler.address == shared_cluster.address
        assert len(client.scheduler_info()["workers"]) == 2


def test_write_scheduler_file_rejects_an_address_without_port(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_backend(
        ["write-scheduler-file", "--address", "tpot-scheduler", "--path", str(tmp_path / "s.json")],
        backend_env,
        timeout_seconds=60,
    )

    assert result.returncode == 2
    assert "--address" in result.stderr
    assert not (tmp_path / "s.json").exists()

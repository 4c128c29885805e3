"""Process hygiene for every process that imports TPOT: the backend, its local workers and the
cluster's workers.

* `import tpot` asks the package index whether a newer TPOT exists (a 1 s request and a stderr
  line in every process). With egress denied that is wasted time, so the check is switched off
  before TPOT is imported.
* The root filesystem is read-only in Kubernetes: caches (matplotlib, the update checker) must go
  to the temporary directory, never to the home directory.

Workers get the same treatment through `BackendWorkerPlugin`, which the backend registers on every
client it opens (the scheduler replays it to workers that join later), or through
``dask worker --preload tpot_backend.runtime`` for workers started outside the backend.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from tpot_backend.logs import event

logger = logging.getLogger(__name__)

_prepared = False


def disable_tpot_update_check() -> None:
    """Make TPOT's import-time version check a no-op (it must run before `import tpot`)."""
    import update_checker

    def _no_update_check(*args: Any, **kwargs: Any) -> None:
        return None

    update_checker.update_check = _no_update_check
    update_checker.core.update_check = _no_update_check
    if "tpot" in sys.modules and hasattr(sys.modules["tpot"], "update_check"):
        sys.modules["tpot"].update_check = _no_update_check


def point_caches_at_tmp() -> None:
    """Send library caches to the temporary directory unless the operator chose a place."""
    tmp = tempfile.gettempdir()
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, "matplotlib"))
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(tmp, ".cache"))
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tmp, "numba"))
    os.environ.setdefault("JOBLIB_TEMP_FOLDER", tmp)


def prepare_process() -> None:
    """Idempotent: quiet TPOT's update check and keep every cache under the temporary directory."""
    global _prepared
    if _prepared:
        return
    point_caches_at_tmp()
    disable_tpot_update_check()
    _prepared = True


class BackendWorkerPlugin(WorkerPlugin):
    """Prepares each worker process the way `prepare_process` prepares the backend.

    The plugin name is fixed, so registering it again (every backend start) replaces it instead of
    stacking copies.
    """

    name = "tpot-backend-runtime"
    idempotent = True

    def setup(self, worker: Any) -> None:
        prepare_process()


def dask_setup(worker: Any) -> None:
    """Entry point for ``dask worker --preload tpot_backend.runtime``."""
    prepare_process()
    event(logger, "worker_prepared", worker=getattr(worker, "name", None))

# preStop hook of a worker pod (run with `python -c`): retire this worker before Kubernetes stops it.
# 1. Ask the scheduler to give the worker no new tasks and to copy its results to other workers.
# 2. Wait, within the budget, for the tasks still running on it.
# 3. Retire it for good (results copied again, worker closed). Always exits 0: a missing scheduler
#    must not hold the pod beyond its grace period, and the kubelet sends SIGTERM next anyway.
import json
import os
import sys
import time

from distributed import Client


def log(event, **fields):
    line = {"event": event, "pod": os.environ.get("POD_NAME"), **fields}
    sys.stderr.write(json.dumps(line) + "\n")


def main():
    name = os.environ["POD_NAME"]
    budget = float(os.environ.get("TPOT_RETIRE_TIMEOUT_SECONDS", "60"))
    deadline = time.monotonic() + budget
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        client = Client(address, timeout=10)
    else:
        client = Client(scheduler_file=os.environ["TPOT_SCHEDULER_FILE"], timeout=10)
    with client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        matches = [addr for addr, info in workers.items() if str(info.get("name")) == name]
        if not matches:
            log("worker_retire_skipped", reason="not registered with the scheduler")
            return
        worker = matches[0]
        log("worker_retire_started", worker=worker, budget_seconds=budget)
        client.retire_workers(names=[name], close_workers=False, remove=False)
        while time.monotonic() < deadline:
            running = client.processing(workers=[worker]).get(worker, [])
            if not running:
                break
            time.sleep(1)
        left = client.processing(workers=[worker]).get(worker, [])
        client.retire_workers(names=[name], close_workers=True, remove=True)
        log("worker_retired", worker=worker, tasks_left=len(left),
            elapsed_seconds=round(budget - max(0.0, deadline - time.monotonic()), 1))


try:
    main()
except Exception as error:  # the pod stops either way; say why the retirement did not finish
    log("worker_retire_failed", error=repr(error))

# `helm test` (run with `python -c`): a computation through the scheduler on the workers, then the
# backend's readiness. Prints one JSON line per step; any failure exits non-zero and fails the test.
import json
import os
import sys
import urllib.request

from distributed import Client, get_worker

TIMEOUT_SECONDS = float(os.environ.get("TPOT_TEST_TIMEOUT_SECONDS", "120"))


def log(event, **fields):
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def square_on_worker(x):
    return x * x, get_worker().name


def main():
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        client = Client(address, timeout=30)
    else:
        client = Client(scheduler_file=os.environ["TPOT_SCHEDULER_FILE"], timeout=30)
    with client:
        client.wait_for_workers(1, timeout=TIMEOUT_SECONDS)
        futures = client.map(square_on_worker, range(20))
        results = client.gather(futures)
        total = sum(value for value, _ in results)
        workers = sorted({str(name) for _, name in results})
        if total != sum(x * x for x in range(20)):
            raise SystemExit(f"wrong result from the workers: {total}")
        log("computation_checked", total=total, workers=workers)

    url = os.environ["TPOT_BACKEND_URL"].rstrip("/") + "/readyz"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode(errors="replace")
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}: {body}")
    log("backend_ready", url=url, body=body[:200])


main()

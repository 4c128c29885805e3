"""How busy the host was with other work while a measurement ran.

Other processes on a shared machine (tests, builds) take CPU from the one being measured. `Busy`
reads the machine's total CPU time from /proc/stat and this process tree's own CPU time (the stack's
local processes are its children, reaped children included) before and after a block; the difference
is CPU time spent by everything else, reported as a share of the machine's capacity over the block.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as handle:
        fields = handle.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _own_tree_seconds() -> float:
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


@dataclass
class Busy:
    """Context manager: `report()` gives wall seconds, load averages and other work's CPU share."""

    started: float = 0.0
    machine_start: float = 0.0
    own_start: float = 0.0
    load_start: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)

    def __enter__(self) -> Busy:
        self.started = time.monotonic()
        self.machine_start = _machine_busy_seconds()
        self.own_start = _own_tree_seconds()
        self.load_start = os.getloadavg()[0]
        return self

    def __exit__(self, *_: object) -> None:
        elapsed = time.monotonic() - self.started
        machine = _machine_busy_seconds() - self.machine_start
        own = _own_tree_seconds() - self.own_start
        capacity = elapsed * len(os.sched_getaffinity(0))
        self.result = {
            "wall_seconds": round(elapsed, 1),
            "load_1m_before": round(self.load_start, 2),
            "load_1m_after": round(os.getloadavg()[0], 2),
            "own_cpu_share": round(own / capacity, 3) if capacity else None,
            "other_cpu_share": round(max(0.0, machine - own) / capacity, 3) if capacity else None,
        }

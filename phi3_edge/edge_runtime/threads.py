"""How many threads a decode step should use, and the onnxruntime session options that carry the choice."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort


def physical_cores() -> int:
    """Physical cores this process may run on; 0 (ORT picks its own default) where the topology is unknown.

    A decode step is bound by memory bandwidth and matmul units: a second thread on a hyper-threaded core
    shares both with the first, so it adds synchronisation cost without adding compute. Linux exposes the
    topology in sysfs; we count distinct (package, core) pairs among the CPUs in our affinity mask, which
    also honours taskset and cpusets (a container pinned to 2 CPUs of a 64-core host gets 2 threads, not 32).
    """
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return 0
    cores: set[tuple[str, str]] = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # sysfs not mounted (some sandboxes)
            return 0
    return len(cores)


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Full graph optimisation; intra_op_threads defaults to physical_cores()."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = physical_cores() if intra_op_threads is None else intra_op_threads
    return options

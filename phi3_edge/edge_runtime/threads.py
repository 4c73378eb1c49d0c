"""How many threads a decode step should use, and the onnxruntime session options that carry the choice."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


OPTIMIZATION_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionTuning:
    """The session options a decode step's speed depends on, beside the thread count.

    The defaults are the measured choice: bench/session_ab.py on mini-8l cpu-int4 (Phi-3-mini shapes, 8 of 32
    layers), 2 threads, prompt 128, 32 new tokens, on a shared 2-core machine; each figure is the median over
    interleaved rounds of (variant / ORT's defaults) in the same round, three runs at load averages ~3, ~10
    and ~14 and one on a quiet machine. Only spinning moved decode beyond the noise, and its sign depends on
    the load (below); everything else stays at onnxruntime's default. Other values exist for that bench and
    for a deployment that measures its own machine.
    """

    # Spinning (ORT's default) on a quiet machine: decode ms/token 0.815x of no spinning, TTFT 0.96x
    # (session_ab --variants default spin --rounds 5, 64 new tokens, load ~0.8): the measured default, since
    # an edge device generating is mostly running just that. On a shared machine the other way round: no
    # spinning measured 0.60x, 0.95x, 0.70x (TTFT 0.92x, 1.31x, 0.90x) at load ~3, ~10, ~14, because a
    # spinning pool thread keeps its core busy between kernels, taken from the thread doing the work (and it
    # burns power): SessionTuning(spinning=False) there.
    spinning: bool = True
    # With spinning, None: ORT's own spin time; 100 us: 0.57x, 1.24x (noise); spinning only inside a run
    # (session.force_spinning_stop): 1.49x, 1.10x (no gain)
    spin_duration_us: int | None = None
    # 0: ORT's static split of a parallel loop; 4 (dynamic blocks): 0.91x, 1.59x, 0.96x (noise, no gain)
    dynamic_block_base: int = 0
    # Pin each pool thread beyond the caller's to one logical CPU (session.intra_op_thread_affinities):
    # 1.00x, 1.52x (no gain; pinning also fights the scheduler on a shared machine)
    pin_threads: bool = False
    cpu_arena: bool = True  # off: 0.95x, 1.46x (no gain)
    mem_pattern: bool = True  # off: 0.96x, 1.95x (no gain)
    optimization: str = "all"  # OPTIMIZATION_LEVELS key; "extended": 0.91x, 1.37x (no gain)
    extra: tuple[tuple[str, str], ...] = ()  # more session config entries, verbatim (bench experiments)
    # onnxruntime's log level (0 verbose .. 3 error). At its default (2, warning) every load of our graphs
    # prints "Initializer logits_to_keep appears in graph inputs ...": that input is overridable on purpose
    # (io_spec.LOGITS_TO_KEEP). onnxruntime-genai prints nothing for the same folder. Errors still show, and
    # the provider a session really runs on is checked by us (providers.session_provider), not read from logs.
    log_severity: int = 3


DEFAULT_TUNING = SessionTuning()


def session_options(intra_op_threads: int | None = None, tuning: SessionTuning = DEFAULT_TUNING) -> ort.SessionOptions:
    """intra_op_threads defaults to physical_cores(); `tuning` carries everything else."""
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[tuning.optimization]
    threads = physical_cores() if intra_op_threads is None else intra_op_threads
    options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = tuning.cpu_arena
    options.enable_mem_pattern = tuning.mem_pattern
    options.log_severity_level = tuning.log_severity
    entries = {"session.intra_op.allow_spinning": "1" if tuning.spinning else "0"}
    if tuning.spin_duration_us is not None:
        entries["session.intra_op.spin_duration_us"] = str(tuning.spin_duration_us)
    if tuning.dynamic_block_base > 0:
        entries["session.dynamic_block_base"] = str(tuning.dynamic_block_base)
    affinities = thread_affinities(threads) if tuning.pin_threads else None
    if affinities:
        entries["session.intra_op_thread_affinities"] = affinities
    entries.update(tuning.extra)
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return options


def thread_affinities(threads: int) -> str | None:
    """ORT's affinity string for a pool of `threads` (the caller's thread is the first, ORT pins the other
    threads - 1): one 1-based logical CPU id per pool thread, from our affinity mask, skipping the first CPU
    (the caller's). None where we may run on fewer CPUs than threads, or the mask is unknown."""
    if threads < 2 or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < threads:
        return None
    return ";".join(str(cpu + 1) for cpu in cpus[1:threads])

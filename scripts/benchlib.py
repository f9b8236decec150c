"""Small helpers the benchmark scripts share (scripts/ is on ``sys.path`` when one runs)."""

from __future__ import annotations

import time
from typing import Any, Callable


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall time in seconds."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def machine_state() -> str:
    """The machine and its load in one line, for a benchmark's header: CPU model, CPUs, load
    average (1, 5, 15 min) and CPU pressure (PSI ``some``), where ``/proc`` has them."""
    import os
    import platform
    from pathlib import Path

    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((" ".join(line.partition(":")[2].split()) for line in lines if line.startswith("model name")), model)
    except OSError:
        pass
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    psi = Path("/proc/pressure/cpu")
    some = psi.read_text().splitlines()[0].replace("some ", "") if psi.exists() else "n/a"
    return f"{model}, {os.cpu_count()} CPUs, load average {load}, CPU pressure (PSI some) {some}"


def add_augment_option(parser: Any) -> None:
    """``--augment`` for a benchmark that trains: every training run of the bench uses it.

    The default, ``none``, is the protocol the committed figures were measured with; the CLI's
    default (``auto``: random crops, plus flips where a mirror keeps the label) changed them,
    so a bench must not inherit it silently."""
    from stitchnas.core.training import AUGMENTS

    parser.add_argument("--augment", choices=AUGMENTS, default="none",
                        help="training augmentation of every run (default none, the protocol of BENCHMARKS.md's "
                             "figures; the CLI's default is auto)")

"""Run folders: one per search, holding its config, checkpoints, results and exports.

A run folder is claimed by writing ``run_config.json``. Resuming requires the same config, so
a resumed run can never silently mix results produced under two different settings.

Beside the options the file records the thread policy in force (``"threads"``:
:meth:`stitchnas.core.threads.ThreadPolicy.to_json`). Results differ in the last bits between
thread counts and are identical for the same count, so resuming with another count is allowed
(the count belongs to the machine, not to the experiment: another node, another cgroup, Ray's
CPUs) but warns in one line naming ``--threads`` to match. Folders written before the key
existed resume without the check.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from stitchnas.core import threads
from stitchnas.core.io import atomic_write_json, read_json
from stitchnas.core.records import RUN_FACTS

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"


def run_options(run_config: dict[str, Any]) -> dict[str, Any]:
    """``run_config`` without the facts recorded beside the options (:data:`RUN_FACTS`)."""
    return {k: v for k, v in run_config.items() if k not in RUN_FACTS}


def _check_threads(out: Path, previous: dict[str, Any], now: threads.ThreadPolicy) -> None:
    recorded = previous.get("threads")
    before = recorded.get("num_threads") if isinstance(recorded, dict) else None
    if isinstance(before, int) and before != now.num_threads:
        log.warning("run folder %s: started with %d torch threads, resuming with %d; results may differ in the "
                    "last bits from an uninterrupted run (pass --threads %d to match)", out, before,
                    now.num_threads, before)


def _absolute_data_dir(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a relative ``data.data_dir`` resolved from the working directory, as the
    loader resolves it: runs written before the command line recorded ``--data-dir`` absolute,
    and Python callers, may hold it as given; resume compares the files, not the spelling."""
    data = options.get("data")
    if isinstance(data, dict) and isinstance(data.get("data_dir"), str) and not os.path.isabs(data["data_dir"]):
        return {**options, "data": {**data, "data_dir": os.path.abspath(os.path.expanduser(data["data_dir"]))}}
    return options


def prepare_run_dir(out_dir: str | Path, run_config: dict[str, Any], resume: bool) -> Path:
    """Create or reopen ``out_dir`` for a run described by ``run_config`` (its options; the
    thread policy in force is recorded beside them, see the module docstring)."""
    run_config = run_options(run_config)
    out = Path(out_dir)
    config_path = out / RUN_CONFIG
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out}: exists and is not a folder; choose another --out")
    if out.is_symlink() and not out.exists():
        raise ValueError(f"output folder {out}: a symbolic link to {out.readlink()}, which does not exist")
    if config_path.exists():
        if not resume:
            raise ValueError(
                f"output folder {out}: already holds a run ({RUN_CONFIG}); pass --resume to continue it "
                "or choose another --out"
            )
        previous = read_json(config_path, "run config")
        if not isinstance(previous, dict):
            raise ValueError(f"run config {config_path}: expected a JSON object, got {type(previous).__name__}")
        # Compare through JSON so tuples and lists of the same values are equal.
        options, current = _absolute_data_dir(run_options(previous)), _absolute_data_dir(run_config)
        if json.loads(json.dumps(options)) != json.loads(json.dumps(current)):
            changed = sorted(k for k in set(options) | set(current) if options.get(k) != current.get(k))
            raise ValueError(
                f"output folder {out}: --resume needs the options of the original run; differing: {changed}"
            )
        _check_threads(out, previous, threads.current())
        log.info("resuming run in %s; threads: %s", out, threads.current().describe())
        return out
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"output folder {out}: exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config_path, {**run_config, "threads": threads.current().to_json()})
    log.info("run folder: %s; threads: %s", out.resolve(), threads.current().describe())
    return out

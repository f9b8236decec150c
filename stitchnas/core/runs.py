"""Run folders: one per search, holding its config, checkpoints, results and exports.

A run folder is claimed by writing ``run_config.json``. Resuming requires the same config, so
a resumed run can never silently mix results produced under two different settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stitchnas.core.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"


def prepare_run_dir(out_dir: str | Path, run_config: dict[str, Any], resume: bool) -> Path:
    """Create or reopen ``out_dir`` for a run described by ``run_config``."""
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
        if json.loads(json.dumps(previous)) != json.loads(json.dumps(run_config)):
            changed = sorted(k for k in set(previous) | set(run_config) if previous.get(k) != run_config.get(k))
            raise ValueError(
                f"output folder {out}: --resume needs the options of the original run; differing: {changed}"
            )
        log.info("resuming run in %s", out)
        return out
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"output folder {out}: exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config_path, run_config)
    log.info("run folder: %s", out.resolve())
    return out

#!/usr/bin/env python
"""Ray job entry point: run a ``stitchnas`` command inside a job on a running Ray cluster.

From the repository root, against a cluster whose dashboard listens on 127.0.0.1:8265::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python scripts/ray_job.py search pooling --space resnet20 --epochs 5 \\
        --search nsga2 --budget 20 --out /shared/runs/resnet20-nsga2

Every command that evaluates candidates (``search pooling``, ``stitch train|evaluate``,
``learngene pool|evaluate``) gets ``--backend ray --address auto`` unless it gives them, so the
search joins the job's own cluster instead of starting a second Ray. The job also gets
``RAY_CHDIR_TO_TRIAL_DIR=0`` and ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``. Give ``--out`` as an
absolute path on storage the driver's node keeps: a relative one would land in the job's
unpacked working directory, which Ray deletes later.

The working directory is put on ``sys.path``, so the job runs the submitted source even on
nodes where stitchnas is not installed (its dependencies must be).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

JOB_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
#: Commands with a candidate-evaluation backend (``--backend``, ``--address``).
EVALUATING_COMMANDS = (("search", "pooling"), ("stitch", "train"), ("stitch", "evaluate"), ("learngene", "pool"),
                       ("learngene", "evaluate"))


def job_argv(argv: Sequence[str]) -> list[str]:
    """The command line with the cluster defaults added to commands that evaluate candidates."""
    args = list(argv)
    if tuple(args[:2]) in EVALUATING_COMMANDS:
        if not any(a == "--backend" or a.startswith("--backend=") for a in args):
            args += ["--backend", "ray"]
        if not any(a == "--address" or a.startswith("--address=") for a in args):
            args += ["--address", "auto"]
    return args


def check_out(args: Sequence[str]) -> None:
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--out" and i + 1 < len(args) else arg[6:] if arg.startswith("--out=") else None
        if value is not None and not Path(value).is_absolute():
            print(f"ray_job: warning: --out {value} is relative to the job's working directory, which Ray "
                  "deletes later; pass an absolute path", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in JOB_ENV.items():
        os.environ.setdefault(key, value)
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    args = job_argv(sys.argv[1:] if argv is None else argv)
    check_out(args)
    from stitchnas.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())

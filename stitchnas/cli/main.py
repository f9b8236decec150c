"""The ``stitchnas`` command line.

Every command validates its input up front and fails with one line naming the bad option or
file. Ctrl-C leaves the last checkpoint in place; rerun with ``--resume`` to continue. One
module per command family: :mod:`~stitchnas.cli.pooling`, :mod:`~stitchnas.cli.stitch`,
:mod:`~stitchnas.cli.learngene`, :mod:`~stitchnas.cli.studies`; shared options and the
"run with a backend and print the front" helper: :mod:`~stitchnas.cli.options`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from stitchnas.cli import learngene, pooling, stitch, studies
from stitchnas.core import threads

THREADS_HELP = ("torch threads (default: the CPUs this process may use: affinity, cgroup quota, or the CPUs Ray "
                "gave it; OMP_NUM_THREADS if set); recorded in run_config.json")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block would bury the line that names the bad
    option (sub-commands inherit the class through ``add_subparsers``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stitchnas", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    pooling.add_commands(sub)
    studies.add_commands(sub)
    stitch.add_stitch_commands(sub)
    learngene.add_commands(sub)
    _add_threads(parser)
    return parser


def _add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads`` on every command (the leaves of the sub-command tree), parsed before any
    command module imports torch; each leaf also records itself, so an unknown option is reported
    by the command it was given to."""
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        parser.add_argument("--threads", type=threads.parse_threads, default=None, metavar="N", help=THREADS_HELP)
        parser.set_defaults(command_parser=parser)
        return
    for action in children:
        for child in {id(p): p for p in action.choices.values()}.values():
            _add_threads(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command, whose --help lists what it takes
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    threads.configure(getattr(args, "threads", None))  # before any command imports torch
    try:
        return args.handler(args)
    except ValueError as err:  # bad options or input files: one line naming them
        return _error(str(err), 2)
    except OSError as err:  # a path the OS refused (not a folder, read-only, disk full, ...)
        return _error(_os_error(err), 2)
    except FloatingPointError as err:  # training diverged: never a result, never exit 0
        return _error(str(err).splitlines()[0] if str(err) else type(err).__name__, 1)
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f" rerun the same command with --resume to continue in {out}" if out else ""
        print(f"stitchnas: interrupted; checkpoints and results written so far are kept;{hint}", file=sys.stderr)
        return 130


def _error(message: str, code: int) -> int:
    print(f"stitchnas: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _os_error(err: OSError) -> str:
    """``PATH: reason`` (both paths of a rename), whatever raised it."""
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    reason = err.strerror or str(err)
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


if __name__ == "__main__":
    sys.exit(main())

"""The ``stitchnas`` command line (entry point :func:`main`)."""

from stitchnas.cli.main import build_parser, main

__all__ = ["build_parser", "main"]

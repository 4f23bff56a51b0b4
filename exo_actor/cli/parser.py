"""The `exo-actor` argument parser: global flags, then one subcommand a module."""

from __future__ import annotations

import argparse

from .. import __version__
from . import bench, download, keygen, models, peers, plan, run, start, status
from .flags import Parser

COMMANDS = (run, start, status, plan, peers, download, bench, keygen, models)  # in `--help` order


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand sets `func`, the function that runs it."""
    p = Parser(prog="exo-actor", description="Run one LLM across the devices you own.")
    p.add_argument("--version", action="version", version=f"exo-actor {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (and tracebacks on errors)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return p

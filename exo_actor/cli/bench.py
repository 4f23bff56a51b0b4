"""`exo-actor bench`: the benchmark suite of a source checkout, run in its own process."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExoError

if TYPE_CHECKING:
    from .flags import Subparsers


def add_parser(sub: Subparsers) -> None:
    """Register `bench` and its flags."""
    bench = sub.add_parser(
        "bench",
        help="run the benchmark suite (transport, engine, pipeline, speculative, batching, prefix, gateway, memory)",
    )
    bench.add_argument(
        "--profile", choices=("quick", "full"), default="quick", help="quick: a smoke run (~2 min); full: ~10 min"
    )
    bench.add_argument("--out", type=Path, default=Path("bench-out"), help="where the JSON, markdown and PNGs go")
    bench.add_argument("--only", help="comma-separated sections to run (default: all)")
    bench.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """The benchmark suite lives in the source checkout (benchmarks/, beside the package): run it in
    its own process, without the OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE overrides (they must be gone
    before numpy loads, and this process has loaded it)."""
    roots = [Path(__file__).resolve().parents[2], Path.cwd()]  # the checkout holding exo_actor/cli/, then here
    root = next((r for r in roots if (r / "benchmarks" / "suite.py").is_file()), None)
    if root is None:
        raise ExoError(
            "`exo-actor bench` runs the benchmark suite of a source checkout (benchmarks/suite.py was not found "
            "beside the package or in the current directory): clone the repository, "
            "`pip install -e '.[bench,test,reference]'`, and run it there"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    cmd = [sys.executable, "-m", "benchmarks.suite", "--profile", args.profile, "--out", str(args.out.resolve())]
    if args.only:
        cmd += ["--only", args.only]
    return subprocess.run(cmd, cwd=root, env=env).returncode

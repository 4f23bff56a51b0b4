"""Running the real command line as a subprocess, and what a one-line error looks like."""

from __future__ import annotations

import subprocess
import sys


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m exo_actor.cli ARGS`, output captured (env: the whole environment, default this one's)."""
    return subprocess.run(
        [sys.executable, "-m", "exo_actor.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -c CODE ARGS` (the CLI run under a patched import system), output captured."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failed run: no traceback, no stdout, one stderr line "exo-actor: error: ..." holding every needle."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("exo-actor: error:"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    assert proc.stdout == ""

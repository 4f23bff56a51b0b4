"""`exo-actor bench --profile quick`: the whole suite runs (CI smoke run; its numbers are not asserted)
and writes its report: JSON with every section, the markdown tables, one PNG per section."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.suite import SECTIONS

pytestmark = pytest.mark.slow


def test_the_quick_suite_runs_and_writes_its_report(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "exo_actor.cli", "bench", "--profile", "quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "suite.json").read_text())
    assert report["profile"] == "quick" and report["failed"] == [] and report["date"] and report["machine"]
    md = (out / "suite.md").read_text()
    for name in SECTIONS:
        assert report[name]["rows"], name
        assert f"## {name}" in md and (out / f"{name}.png").stat().st_size > 1000
    assert "Note: llama.cpp" in md or "llama.cpp" in json.dumps(report["engine"]["rows"])  # run, or said why not


def test_an_unknown_section_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "exo_actor.cli", "bench", "--only", "engine,warp", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown section(s) warp" in proc.stderr and "Traceback" not in proc.stderr

"""The benchmark suite's own logic (benchmarks/suite.py), without measuring anything: the report it writes
(JSON with every section, the markdown tables, one PNG per section, a failed section named) and the
command line's errors. The suite itself runs as its own CI step (`tox -e bench-quick`, see .ci/run)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from benchmarks import suite


def _fine(p: dict[str, Any]) -> suite.Section:
    rows = [{"streams": n, "tps": 10.0 * n} for n in (1, 4)]

    def plot(ax: Any) -> None:
        ax.plot([r["streams"] for r in rows], [r["tps"] for r in rows])

    table = ["| streams | tok/s |", "|---|---|", *[f"| {r['streams']} | {r['tps']:.0f} |" for r in rows]]
    return suite.Section("fine", rows, table, notes=[f"{p['decode_tokens']} tokens"], plot=plot)


def _broken(p: dict[str, Any]) -> suite.Section:
    raise RuntimeError("the ring did not start")


def test_the_report_has_every_section_its_plot_and_the_failed_one(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "SECTIONS", {"fine": _fine, "broken": _broken})
    out = tmp_path / "bench"
    assert suite.run("quick", out, ["fine", "broken"]) == 1  # a failed section fails the command
    report = json.loads((out / "suite.json").read_text())
    assert report["profile"] == "quick" and report["date"] and report["machine"]
    assert report["failed"] == ["broken"] and "the ring did not start" in report["broken"]["error"]
    assert report["fine"]["rows"][1] == {"streams": 4, "tps": 40.0} and report["fine"]["plot"] == "fine.png"
    assert (out / "fine.png").stat().st_size > 1000
    md = (out / "suite.md").read_text()
    assert "## fine" in md and "| 4 | 40 |" in md and "Note: 16 tokens" in md and "![fine](fine.png)" in md
    assert "## broken" in md and "FAILED: RuntimeError: the ring did not start" in md
    assert "FAILED sections: broken" in md.splitlines()[-1]


def test_both_profiles_set_the_same_sizes():
    assert set(suite.PROFILES) == {"quick", "full"}
    assert set(suite.PROFILES["quick"]) == set(suite.PROFILES["full"])


def test_sections_are_parsed_and_checked():
    assert suite.parse_sections(None) == list(suite.SECTIONS)
    assert suite.parse_sections(" engine, batching ") == ["engine", "batching"]
    with pytest.raises(ValueError, match="unknown section"):
        suite.parse_sections(",")


def test_an_unknown_section_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "exo_actor.cli", "bench", "--only", "engine,warp", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown section(s) warp" in proc.stderr and "Traceback" not in proc.stderr

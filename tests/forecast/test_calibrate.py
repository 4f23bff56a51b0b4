"""Calibration's storage and its cheap probes (the whole `--calibrate` runs in benchmarks/bench_plan.py)."""

from __future__ import annotations

import logging

from exo_actor.forecast import Calibration, load_calibration, save_calibration
from exo_actor.forecast.calibrate import hop_ms, raw_bandwidth_gbps


def test_a_saved_calibration_loads_back(tmp_path):
    cal = Calibration(bandwidth_efficiency=0.7, hop_ms=1.5, measured={"cores": 2, "raw_bandwidth_gbps": {"1": 20.0}})
    path = save_calibration(cal, tmp_path / "sub" / "calibration.json")
    assert load_calibration(path) == cal


def test_a_missing_or_broken_calibration_falls_back_to_the_defaults(tmp_path, caplog):
    assert load_calibration(tmp_path / "none.json") == Calibration()
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert load_calibration(broken) == Calibration()
    assert "ignoring the calibration" in caplog.text
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"hop_ms": "fast"}')
    assert load_calibration(wrong) == Calibration()


def test_the_probes_measure_something_plausible():
    assert 0.001 < hop_ms() < 50  # a ZeroMQ round trip through the codec, halved
    assert 0.5 < raw_bandwidth_gbps(1) < 2000

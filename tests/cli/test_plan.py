"""`exo-actor plan` as a user runs it: a table or JSON for a model not downloaded, one-line errors."""

from __future__ import annotations

import json

from tests.cli.helpers import assert_one_line_error, cli

MINIS = [f"--device=mini{i}:64:273:17" for i in range(4)]


def test_a_table_for_four_minis_and_llama_70b():
    p = cli("plan", "llama-3.1-70b", *MINIS, "--link-ms", "0.3", "--link-gbps", "10", "--streams", "4")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:2] == ["DEVICE", "LAYERS"] and lines[1].startswith("mini0")
    assert "0-19 (20)" in lines[1] and "60-79 (20)" in lines[4]
    assert any(line.startswith("one stream:") and "tok/s" in line for line in lines)
    assert any(line.startswith("4 streams:") for line in lines)


def test_json_with_speculation():
    p = cli(
        "plan",
        "qwen2.5-32b",
        "--device",
        "pc1:24:900:80",
        "--device",
        "pc2:24:900:80",
        "--device",
        "laptop:16:100",
        "--acceptance",
        "0.6",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    f = json.loads(p.stdout)
    assert sum(d["layers"][1] - d["layers"][0] for d in f["devices"]) == 64
    assert f["speculative_tps"] >= f["single_tps"] > 0


def test_errors_are_one_line():
    assert_one_line_error(cli("plan", "llama-3.1-70b"), "--device")
    assert_one_line_error(cli("plan", "llama-3.1-70b", "--device", "mini"), "NAME:MEMORY_GB:BANDWIDTH_GBps")
    assert_one_line_error(cli("plan", "llama-3.1-70b", "--device", "a:8:100"), "does not fit")
    assert_one_line_error(cli("plan", "llama-3.1-70b", *MINIS, "--acceptance", "3"), "acceptance")
    assert_one_line_error(cli("plan", "llama-3.1-70b", *MINIS, "--host-slots", "x"), "HOST=N")
    assert_one_line_error(cli("plan"), "MODEL")

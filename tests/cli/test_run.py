"""`exo-actor run` (and the commands around it), as a real subprocess: output, stats line, one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from tests.cli.helpers import assert_one_line_error, cli, python
from tests.tiny import TinySpec, write_gguf, write_hf_folder


def test_help_everywhere():
    for args in ([], ["run"], ["models"]):
        proc = cli(*args, "--help")
        assert proc.returncode == 0 and "usage: exo-actor" in proc.stdout


def test_run_prints_completion_and_one_stats_line(tiny_gguf):
    proc = cli("run", str(tiny_gguf), "--prompt", "Hello", "--max-tokens", "8", "--shards", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout  # a random model's text (often whitespace)
    (stats,) = proc.stderr.strip().splitlines()
    assert (
        "completion tokens: 8," in stats
        and "prompt tokens:" in stats
        and "time to first token" in stats
        and "tok/s" in stats
    )


def test_models_lists_the_registry():
    proc = cli("models")
    assert proc.returncode == 0
    for name in ("smollm2-135m", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-0.5b"):
        assert name in proc.stdout


def test_unknown_model():
    assert_one_line_error(cli("run", "gpt-17", "--prompt", "x"), "unknown model", "smollm2-135m")


def test_missing_file(tmp_path):
    assert_one_line_error(cli("run", str(tmp_path / "nope.gguf"), "--prompt", "x"), "no such file")


def test_registry_model_not_available_locally(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # (cli() passes the environment on)
    assert_one_line_error(
        cli("run", "llama-3.1-70b", "--prompt", "x"), "not available locally", "meta-llama/", "HF_HUB_OFFLINE"
    )


def test_truncated_gguf(tmp_path, tiny_gguf):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[:3000])
    assert_one_line_error(cli("run", str(bad), "--prompt", "x"), "bad.gguf")


def test_corrupt_safetensors(tmp_path):
    write_hf_folder(tmp_path, TinySpec())
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 5)
    assert_one_line_error(cli("run", str(tmp_path), "--prompt", "x"), "safetensors")


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_unsupported_quantization(tmp_path, engine):
    spec = TinySpec()
    block, size = GGML_QUANT_SIZES[Q.Q8_1]
    raw = np.zeros((spec.intermediate, spec.hidden_size // block * size), dtype=np.uint8)
    write_gguf(tmp_path / "q.gguf", spec, raw_override={"blk.0.ffn_up.weight": (raw, Q.Q8_1)})
    proc = cli("run", str(tmp_path / "q.gguf"), "--prompt", "x", "--engine", engine)
    assert_one_line_error(proc, "Q8_1", "not supported", "Q4_K", "Q6_K", "--quantize")


_WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from exo_actor.cli import main; sys.exit(main(sys.argv[1:]))"


def test_a_missing_torch_names_its_extra(tiny_gguf):
    proc = python(_WITHOUT_TORCH, "run", str(tiny_gguf), "--prompt", "x", "--engine", "torch")
    assert_one_line_error(proc, "exo-actor[torch]")


def test_a_bad_engine_in_the_environment_is_named(tiny_gguf):
    proc = cli("run", str(tiny_gguf), "--prompt", "x", timeout=60, env={**os.environ, "EXO_ACTOR_ENGINE": "gpu"})
    assert_one_line_error(proc, "EXO_ACTOR_ENGINE='gpu'", "torch")


def test_bad_quantize_and_device_values_are_refused(tiny_gguf):
    assert_one_line_error(cli("run", str(tiny_gguf), "--prompt", "x", "--quantize", "q3"), "--quantize", "q4")
    assert_one_line_error(cli("run", str(tiny_gguf), "--prompt", "x", "--engine", "numpy", "--device", "cuda"), "torch")


def test_prompt_longer_than_the_context(tiny_gguf):
    assert_one_line_error(cli("run", str(tiny_gguf), "--prompt", "word " * 100), "context window is 48")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--temperature", "-1"], "temperature"),
        (["--temperature", "warm"], "temperature"),
        (["--top-p", "0"], "top_p"),
        (["--top-k", "-5"], "top_k"),
        (["--min-p", "1.5"], "min_p"),
        (["--max-tokens", "0"], "max-tokens"),
        (["--seed", "-1"], "seed"),
        (["--shards", "0"], "shards"),
        (["--shards", "99"], "shards"),
        (["--engine", "cuda"], "engine"),
    ],
)
def test_invalid_values(tiny_gguf, flags, needle):
    assert_one_line_error(cli("run", str(tiny_gguf), "--prompt", "x", *flags), needle)


def test_missing_prompt_and_unknown_command():
    assert_one_line_error(cli("run", "smollm2-135m"), "--prompt")
    assert_one_line_error(cli("fly"), "fly")


def test_no_chat_template_suggests_raw(tmp_path):
    write_hf_folder(tmp_path, TinySpec())
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert_one_line_error(cli("run", str(tmp_path), "--prompt", "x"), "--raw")
    assert cli("run", str(tmp_path), "--prompt", "x", "--raw", "--max-tokens", "3").returncode == 0


def test_run_with_speculation_prints_the_same_text_and_the_acceptance(tiny_gguf):
    base = ["run", str(tiny_gguf), "--prompt", "Hello Hello Hello", "--max-tokens", "12"]
    plain = cli(*base)
    spec = cli(*base, "--enable-speculative", "--draft-model", f"{tiny_gguf}:layers=2", "--draft-tokens", "3")
    assert spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout
    (stats,) = spec.stderr.strip().splitlines()
    assert "acceptance" in stats and "tokens/pass" in stats and "layers=2" in stats


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--draft-model", "ngram"], "needs --enable-speculative"),
        (["--draft-tokens", "3"], "need --enable-speculative"),
        (["--enable-speculative"], "no default draft model"),
        (["--enable-speculative", "--draft-model", "x:layers=two"], "layers=K"),
        (["--enable-speculative", "--draft-model", "nosuchmodel"], "unknown model"),
        pytest.param(  # reads the real model's vocabulary
            ["--enable-speculative", "--draft-model", "smollm2-135m"],
            "vocabulary of 49152 tokens",
            marks=pytest.mark.slow,
        ),
        (["--enable-speculative", "--draft-tokens", "0"], "draft-tokens"),
        (["--enable-speculative", "--draft-tokens", "17"], "draft-tokens"),
    ],
)
def test_bad_speculation_flags(tiny_gguf, flags, needle):
    assert_one_line_error(cli("run", str(tiny_gguf), "--prompt", "x", *flags), needle)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: "{not json", "not valid JSON"),
        (lambda c: "[1, 2]", "JSON object"),
        (lambda c: json.dumps({**c, "model_type": "gpt9"}), "not supported"),
        (lambda c: json.dumps({k: v for k, v in c.items() if k != "hidden_size"}), "config.json"),
        (lambda c: json.dumps({**c, "hidden_size": "wide"}), "hidden_size"),
        (lambda c: json.dumps({**c, "num_hidden_layers": -3}), "num_hidden_layers"),
        (lambda c: json.dumps({**c, "num_attention_heads": 0}), "num_attention_heads"),
        (lambda c: json.dumps({**c, "rms_norm_eps": [1]}), "rms_norm_eps"),
    ],
)
def test_bad_config_json_is_one_line(tmp_path, change, needle):
    write_hf_folder(tmp_path, TinySpec())
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(change(cfg))
    assert_one_line_error(cli("run", str(tmp_path), "--prompt", "x"), needle)

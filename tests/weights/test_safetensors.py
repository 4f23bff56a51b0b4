"""Hugging Face folders: f32/f16/bf16 safetensors, sharded with an index, and damaged files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exo_actor.errors import ModelNotFoundError, UnsupportedModelError, WeightsError
from exo_actor.weights import open_model
from exo_actor.weights.safetensors_source import SafetensorsSource
from tests.conftest import require
from tests.tiny import TinySpec, write_hf_folder


@pytest.mark.parametrize(("dtype", "index_files"), [("F32", 0), ("F16", 0), ("BF16", 0), ("BF16", 3)])
def test_reads_what_was_written(tmp_path, dtype, index_files):
    weights = write_hf_folder(tmp_path, TinySpec(tied=False), dtype=dtype, index_files=index_files)
    src = SafetensorsSource(tmp_path)
    for name, want in weights.items():
        if dtype == "F16":
            want = want.astype(np.float16).astype(np.float32)
        got = src.get(name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_bf16_matches_torch(tmp_path):
    torch = require("torch")
    from safetensors.torch import save_file

    t = torch.randn(8, 16, dtype=torch.bfloat16)
    save_file({"x": t}, str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(SafetensorsSource(tmp_path).get("x"), t.float().numpy())


def test_truncated_file(tmp_path):
    write_hf_folder(tmp_path, TinySpec())
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="truncated"):
        open_model(tmp_path)


@pytest.mark.parametrize(
    "garbage", [b"", b"\x01\x02", b"\xff" * 8 + b"{}", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"]
)
def test_corrupt_header(tmp_path, garbage):
    write_hf_folder(tmp_path, TinySpec())
    (tmp_path / "model.safetensors").write_bytes(garbage)
    with pytest.raises(WeightsError):
        open_model(tmp_path)


def test_index_pointing_at_a_missing_file(tmp_path):
    write_hf_folder(tmp_path, TinySpec(), index_files=2)
    next(tmp_path.glob("model-00002-*.safetensors")).unlink()
    files = open_model(tmp_path)
    with pytest.raises(WeightsError, match="missing"):
        files.shard_weights(0, files.args.num_hidden_layers)


def test_config_problems(tmp_path):
    write_hf_folder(tmp_path, TinySpec())
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        open_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json"):
        open_model(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelNotFoundError):
        open_model(tmp_path)


def test_wrong_tensor_shape_is_reported(tmp_path):
    write_hf_folder(tmp_path, TinySpec())
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 80}))
    files = open_model(tmp_path)
    with pytest.raises(WeightsError, match="shape"):
        files.shard_weights(0, 1)

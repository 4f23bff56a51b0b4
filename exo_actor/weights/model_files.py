"""open_model: a GGUF file or a Hugging Face folder -> config, tokenizer and a tensor source."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

from ..errors import ModelNotFoundError, WeightsError
from ..models.config import ModelArgs
from ..models.llama import ShardWeights
from ..tokenizer import TextTokenizer, tokenizer_from_gguf, tokenizer_from_hf_folder
from . import sizes
from .base import ShardTensors, TensorSource, float_weights, load_shard_tensors, load_shard_weights
from .gguf_source import GGUFSource, field, open_reader
from .safetensors_source import SafetensorsSource


@dataclass
class ModelFiles:
    """A model on disk: its hyper-parameters, tokenizer and a way to read any shard's weights."""

    path: Path
    args: ModelArgs
    tokenizer: TextTokenizer
    open_source: Callable[[], TensorSource]
    # (stored kind, values) of a tensor by Hugging Face name, when known without reading it (GGUF)
    kinds: Callable[[str], tuple[str, int] | None] = dc_field(default=lambda name: None)

    def layer_bytes(self, engine: str = "numpy", quantize: str | None = None) -> int:
        """Bytes one decoder layer takes in memory on `engine` (weights/sizes.py)."""
        return sizes.layer_bytes(self.args, self.kinds, engine, quantize)

    def shard_bytes(self, start: int, end: int, engine: str = "numpy", quantize: str | None = None) -> int:
        """Bytes the weights of layers [start, end) take on `engine`, embedding / head included."""
        return sizes.shard_bytes(self.args, self.kinds, start, end, engine, quantize)

    def shard_weights(self, start: int, end: int, quantize: str | None = None) -> ShardWeights:
        """Float32 weights of layers [start, end): reads only those layers' tensors. With `quantize`
        (q4 / q8), the float32 values of the weights quantized that way."""
        if quantize in (None, "none"):
            src = self.open_source()
            weights = load_shard_weights(self.args, src, start, end)
            release = getattr(src, "release_pages", None)
            if release is not None:  # the float32 copies are made: the file's pages can go
                release()
            return weights
        return float_weights(self.args, load_shard_tensors(self.args, self.open_source(), start, end, quantize))

    def shard_tensors(self, start: int, end: int, quantize: str | None = None, layers: bool = True) -> ShardTensors:
        """Weights of layers [start, end) as stored (block-quantized tensors kept so), or converted by
        `quantize` (q4 / q8 / none): what quantized engines load. layers=False: only the embedding / head
        tables and the final norm (an engine with the layers from its own cache)."""
        return load_shard_tensors(self.args, self.open_source(), start, end, quantize, layers)


def _open_gguf(path: Path) -> ModelFiles:
    reader = open_reader(path)
    src = GGUFSource(path, reader)
    keys = [k for k in reader.fields if k.startswith("tokenizer.")]
    tokenizer = tokenizer_from_gguf({k: field(reader, k) for k in keys})
    return ModelFiles(path=path, args=src.args, tokenizer=tokenizer, open_source=lambda: src, kinds=src.kind)


def _open_hf_folder(path: Path) -> ModelFiles:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{cfg_path} does not hold a JSON object")
    args = ModelArgs.from_hf_dict(cfg)
    tokenizer = tokenizer_from_hf_folder(path)
    src = SafetensorsSource(path)  # validates the index / headers now, reads tensors on demand
    return ModelFiles(path=path, args=args, tokenizer=tokenizer, open_source=lambda: src)


def open_model(path: str | Path) -> ModelFiles:
    """Open a `.gguf` file or a Hugging Face model folder (config.json, tokenizer.json, safetensors)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if not (p / "config.json").exists() and len(ggufs) == 1:
            return _open_gguf(ggufs[0])
        return _open_hf_folder(p)
    if p.suffix.lower() != ".gguf":
        raise ModelNotFoundError(f"{p} is neither a .gguf file nor a Hugging Face model folder")
    return _open_gguf(p)

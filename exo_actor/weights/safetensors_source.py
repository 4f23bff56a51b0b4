"""Hugging Face safetensors (single file, several files, or sharded with an index), as float32.

The `safetensors` package's numpy backend cannot return bfloat16, the dtype most Llama checkpoints
use, so this reads the (simple, documented) format itself: an 8-byte little-endian header length, a
JSON header of {name: {dtype, shape, data_offsets}}, then the raw bytes, memory-mapped.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import WeightsError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
_MAX_HEADER = 100 * 1024 * 1024


class _File:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise WeightsError(f"{path} is truncated (no safetensors header)")
                (n,) = struct.unpack("<Q", raw)
                if n > min(_MAX_HEADER, size - 8):
                    raise WeightsError(f"{path} is not a valid safetensors file (header length {n})")
                header = json.loads(f.read(n))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{path} is not a valid safetensors file: {exc}") from None
        if not isinstance(header, dict):
            raise WeightsError(f"{path} is not a valid safetensors file (header is not an object)")
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype, shape, (lo, hi) = e["dtype"], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise WeightsError(f"{path}: malformed header entry for {name}") from None
            if dtype not in _DTYPES:
                raise WeightsError(f"{path}: tensor {name} has unsupported dtype {dtype}")
            itemsize = np.dtype(_DTYPES[dtype]).itemsize
            if hi - lo != itemsize * int(np.prod(shape)) or lo < 0:
                raise WeightsError(f"{path}: tensor {name} byte range does not match its shape")
            if self.data_start + hi > size:
                raise WeightsError(f"{path} is truncated: tensor {name} ends past the end of the file")
            self.entries[name] = (dtype, shape, lo, hi)
        self._map: np.memmap | None = None

    def get(self, name: str) -> np.ndarray:
        dtype, shape, lo, hi = self.entries[name]
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._map[self.data_start + lo : self.data_start + hi]
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        arr = raw.view(_DTYPES[dtype]).reshape(shape)
        return arr if dtype == "F32" else arr.astype(np.float32)


# where a multimodal checkpoint keeps its text model (Gemma 3 4B+: Hub files, and as transformers 5 saves it)
_TEXT_PREFIXES = (("language_model.model.", "language_model.lm_head."), ("model.language_model.", "lm_head."))


def text_model_names(where: Mapping[str, str]) -> dict[str, str]:
    """The names a text-only checkpoint uses (`model.layers.N...`) -> the file's names, when the folder holds
    a multimodal model (its vision tower is never read)."""
    if "model.embed_tokens.weight" in where:
        return {}
    for body, head in _TEXT_PREFIXES:
        if body + "embed_tokens.weight" in where:
            out = {"model." + k[len(body) :]: k for k in where if k.startswith(body)}
            if head + "weight" in where:
                out["lm_head.weight"] = head + "weight"
            return out
    return {}


class SafetensorsSource:
    """All tensors of a Hugging Face model folder; files are opened only when a tensor is needed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        index = folder / "model.safetensors.index.json"
        self._where: dict[str, str] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise WeightsError(f"{index} is not a valid safetensors index: {exc}") from None
            self._where = {str(k): str(v) for k, v in weight_map.items()}
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise WeightsError(f"{folder} has no *.safetensors files")
            for f in files:
                for name in _File(folder / f.name).entries:
                    self._where[name] = f.name
        self._files: dict[str, _File] = {}
        self._alias = text_model_names(self._where)  # text-model name -> the file's name
        self._where.update({alias: self._where[real] for alias, real in self._alias.items()})

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> np.ndarray:
        fname = self._where[name]
        if fname not in self._files:
            path = self.folder / fname
            if not path.exists():
                raise WeightsError(f"{path} is missing (listed in the safetensors index)")
            self._files[fname] = _File(path)
        f = self._files[fname]
        name = self._alias.get(name, name)
        if name not in f.entries:
            raise WeightsError(f"{f.path} does not contain {name} (the index says it does)")
        return f.get(name)

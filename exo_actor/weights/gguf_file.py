"""A GGUF file's header as plain Python values, its tensors left in the memory-mapped file.

The gguf package's GGUFReader keeps every metadata value as numpy arrays (two per string): ~150 MB of
small objects for a 49k-token vocabulary, and the heap they leave behind stays partly resident once the
reader is gone (measured on a SmolLM2 node: ~24 MiB after malloc_trim). This reads the same header with
`struct` into str / int / float / bool and lists of them, and keeps one small record per tensor, whose
data is a view of the file's map. The format's constants (value types, ggml's tensor types and block
sizes, as ggml.h numbers them) are written out here, so opening a file does not import the gguf package
(~4 MiB resident); gguf_source imports its decoders only for block types.

Layout (GGUF v2 / v3): magic "GGUF", version u32, tensor count u64, key-value count u64; each key-value
is a string key, a value type u32 and the value (a string is a u64 length and UTF-8 bytes; an array is
an item type u32, a u64 count and the items); each tensor info is a name, n_dims u32, the dims u64
(innermost first), a block type u32 and an offset u64 from the data section, which starts at the next
multiple of `general.alignment` (32 by default).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

_MAGIC = b"GGUF"
_Order = Literal["<", ">"]  # the file's byte order
_VERSIONS = (2, 3)
_ALIGNMENT = 32


class GGUFValueType(IntEnum):
    """The type of a metadata value."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class GGMLType(IntEnum):
    """ggml's tensor types, numbered as GGUF files store them (equal to gguf.GGMLQuantizationType's)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


# (values, bytes) of one block of each type
BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 40),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
    GGMLType.NVFP4: (64, 36),
    GGMLType.Q1_0: (128, 18),
}
_SCALARS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
# block types whose data is an array of plain numbers (the others are bytes of blocks)
PLAIN_TYPES = {
    GGMLType.F16: np.float16,
    GGMLType.F32: np.float32,
    GGMLType.F64: np.float64,
    GGMLType.I8: np.int8,
    GGMLType.I16: np.int16,
    GGMLType.I32: np.int32,
    GGMLType.I64: np.int64,
}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's header entry; `data` views the mapped file (numbers for plain types, [.., bytes]
    of blocks for quantized ones, outermost dimension first)."""

    name: str
    tensor_type: GGMLType
    shape: tuple[int, ...]  # GGUF order: innermost dimension first
    n_elements: int
    n_bytes: int
    data: np.ndarray


class _Cursor:
    """Sequential reads from the header (raises ValueError / struct.error past the end)."""

    def __init__(self, buf: memoryview, order: _Order) -> None:
        self.buf, self.pos, self.order = buf, 0, order
        self._structs: dict[str, struct.Struct] = {}

    def scalar(self, code: str) -> Any:
        s = self._structs.get(code)
        if s is None:
            s = self._structs[code] = struct.Struct(self.order + code)
        (value,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return value

    def _span(self, n: int, what: str) -> tuple[int, int]:
        start, end = self.pos, self.pos + n
        if end > len(self.buf):
            raise ValueError(f"{what} at byte {start} runs past the end of the file")
        self.pos = end
        return start, end

    def string(self) -> str:
        start, end = self._span(self.scalar("Q"), "a string")
        return str(self.buf[start:end], "utf-8")

    def value(self, kind: GGUFValueType) -> Any:
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            item, count = GGUFValueType(self.scalar("I")), self.scalar("Q")
            code = _SCALARS.get(item)
            if code is None:  # strings or arrays: one by one (each takes at least 8 bytes)
                if count * 8 > len(self.buf) - self.pos:
                    raise ValueError(f"an array of {count} items at byte {self.pos} runs past the end of the file")
                return [self.value(item) for _ in range(count)]
            dtype = np.dtype(code).newbyteorder(self.order)
            start, _ = self._span(count * dtype.itemsize, "an array")
            return np.frombuffer(self.buf, dtype, count, start).tolist()
        return self.scalar(_SCALARS[kind])


class GGUFFile:
    """The header of a GGUF file: `fields` (key -> value), `tensors` (in file order) and `data`, the
    file's read-only memory map. Raises ValueError (or struct.error) on a malformed or truncated file."""

    def __init__(self, path: Path | str) -> None:
        self.data: np.ndarray = np.memmap(path, mode="r")
        buf = memoryview(self.data)  # type: ignore[arg-type]
        try:
            self.fields, infos, base, order = _parse(buf)
        finally:
            buf.release()
        self.tensors = _tensors(self.data, infos, base, order)


_Info = tuple[str, tuple[int, ...], GGMLType, int]  # name, dims, block type, offset


def _parse(buf: memoryview) -> tuple[dict[str, Any], list[_Info], int, _Order]:
    """(fields, tensor infos, where the data section starts, byte order) from the header."""
    if bytes(buf[:4]) != _MAGIC:
        raise ValueError("the file does not start with the GGUF magic")
    order: _Order = "<"
    version = struct.unpack_from("<I", buf, 4)[0]
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        order = ">"
        version = struct.unpack_from(">I", buf, 4)[0]
    if version not in _VERSIONS:
        raise ValueError(f"GGUF version {version} is not supported ({', '.join(map(str, _VERSIONS))} are)")
    cur = _Cursor(buf, order)
    cur.pos = 8
    n_tensors, n_fields = cur.scalar("Q"), cur.scalar("Q")
    fields: dict[str, Any] = {}
    for _ in range(n_fields):
        key = cur.string()
        fields[key] = cur.value(GGUFValueType(cur.scalar("I")))
    infos: list[_Info] = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(cur.scalar("Q") for _ in range(cur.scalar("I")))
        infos.append((name, dims, _ggml_type(name, cur.scalar("I")), cur.scalar("Q")))
    align = fields.get("general.alignment", _ALIGNMENT)
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
        raise ValueError(f"general.alignment {align!r} is not a power of two")
    return fields, infos, -(-cur.pos // align) * align, order


def _tensors(data: np.ndarray, infos: list[_Info], base: int, order: _Order) -> list[GGUFTensor]:
    tensors: list[GGUFTensor] = []
    seen: set[str] = set()
    for name, dims, kind, offset in infos:
        if name in seen:
            raise ValueError(f"tensor {name} appears twice")
        seen.add(name)
        block, type_size = BLOCK_SIZES[kind]
        n = math.prod(dims)
        n_bytes = n * type_size // block
        start = base + offset
        if start + n_bytes > len(data):
            raise ValueError(f"tensor {name} runs past the end of the file")
        shape = tuple(reversed(dims))
        raw = data[start : start + n_bytes]
        if kind in PLAIN_TYPES:
            view = raw.view(np.dtype(PLAIN_TYPES[kind]).newbyteorder(order)).reshape(shape)
        else:  # [..., bytes of a row's blocks]
            if not shape or shape[-1] % block:
                raise ValueError(f"tensor {name}: rows of {shape[-1:]} values are not whole blocks of {block}")
            view = raw.reshape(*shape[:-1], shape[-1] // block * type_size)
        tensors.append(GGUFTensor(name, kind, dims, n, n_bytes, view))
    return tensors


def _ggml_type(name: str, raw: int) -> GGMLType:
    try:
        return GGMLType(raw)
    except ValueError:
        raise ValueError(f"tensor {name} has tensor type {raw}, which this reader does not know") from None

"""gguf_file.GGUFFile: the same header values and tensor views as the gguf package's reader, and one
WeightsError for a header cut anywhere."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFValueType, GGUFWriter
from gguf import GGMLQuantizationType as Q

from exo_actor.errors import WeightsError
from exo_actor.weights import gguf_file
from exo_actor.weights.gguf_file import GGUFFile
from exo_actor.weights.gguf_source import open_reader
from tests.tiny import TinySpec, write_gguf


def _write(path):
    w = GGUFWriter(path, "llama")
    w.add_string("t.text", "Paris, 巴黎")
    w.add_uint8("t.u8", 200)
    w.add_int32("t.i32", -7)
    w.add_uint64("t.u64", 2**40)
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.flag", True)
    w.add_array("t.words", ["a", "", "ĠParis", "<|im_end|>"])
    w.add_array("t.ints", [3, -1, 2**20])
    w.add_array("t.floats", [0.5, -2.25])
    w.add_array("t.flags", [True, False, True])
    w.add_tensor("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b.weight", np.arange(6, dtype=np.float16).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_header_and_tensors_match_the_gguf_packages_reader(tmp_path):
    _write(tmp_path / "f.gguf")
    ours, theirs = GGUFFile(tmp_path / "f.gguf"), GGUFReader(tmp_path / "f.gguf", "r")
    for key, f in theirs.fields.items():
        if not key.startswith("GGUF."):  # the package's own entries for the header counts
            assert ours.fields[key] == f.contents() and type(ours.fields[key]) is type(f.contents()), key
    assert ours.fields["t.words"] == ["a", "", "ĠParis", "<|im_end|>"]
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.tensor_type, a.shape, a.n_elements, a.n_bytes) == (
            b.tensor_type,
            tuple(b.shape),
            b.n_elements,
            b.n_bytes,
        )
        assert a.data.dtype == b.data.dtype
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(ours.tensors[0].data, np.arange(12, dtype=np.float32).reshape(3, 4))


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0])
def test_quantized_tensors_are_byte_views_of_the_file(tmp_path, qtype):
    write_gguf(tmp_path / "q.gguf", TinySpec(hidden_size=64, intermediate=128), qtype=qtype)
    ours, theirs = GGUFFile(tmp_path / "q.gguf"), GGUFReader(tmp_path / "q.gguf", "r")
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.data.shape == b.data.shape and a.data.dtype == b.data.dtype
        assert a.data.ctypes.data - ours.data.ctypes.data == b.data.ctypes.data - theirs.data.ctypes.data
        np.testing.assert_array_equal(a.data, b.data)


def test_a_header_cut_anywhere_is_one_weights_error(tmp_path):
    _write(tmp_path / "f.gguf")
    data = (tmp_path / "f.gguf").read_bytes()
    header = len(data) - 12 * 4 - 6 * 2  # the two tensors' bytes end the file
    for cut in range(1, header, 7):
        (tmp_path / "t.gguf").write_bytes(data[:cut])
        with pytest.raises(WeightsError, match="not a valid GGUF"):
            open_reader(tmp_path / "t.gguf")


def test_a_wrong_magic_or_version_is_refused(tmp_path):
    _write(tmp_path / "f.gguf")
    data = bytearray((tmp_path / "f.gguf").read_bytes())
    (tmp_path / "m.gguf").write_bytes(b"GGUX" + data[4:])
    with pytest.raises(WeightsError, match="magic"):
        open_reader(tmp_path / "m.gguf")
    data[4:8] = (9).to_bytes(4, "little")
    (tmp_path / "v.gguf").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="version 9"):
        open_reader(tmp_path / "v.gguf")


def test_the_format_constants_are_the_gguf_packages():
    assert {t.name: int(t) for t in gguf_file.GGUFValueType} == {t.name: int(t) for t in GGUFValueType}
    assert {t.name: int(t) for t in gguf_file.GGMLType} == {t.name: int(t) for t in Q}
    assert {int(t): size for t, size in gguf_file.BLOCK_SIZES.items()} == {
        int(t): s for t, s in GGML_QUANT_SIZES.items()
    }


def test_an_unknown_tensor_type_is_named(tmp_path):
    _write(tmp_path / "f.gguf")
    data = bytearray((tmp_path / "f.gguf").read_bytes())
    at = data.index(b"b.weight") + len(b"b.weight") + 4 + 2 * 8  # after the name, n_dims and the dims
    assert int.from_bytes(data[at : at + 4], "little") == Q.F16
    data[at : at + 4] = (77).to_bytes(4, "little")
    (tmp_path / "u.gguf").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="b.weight has tensor type 77"):
        open_reader(tmp_path / "u.gguf")

"""The wire codec: every kind round-trips; every malformed message is one ProtocolError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exo_actor.transport import (
    Draft,
    Drafted,
    Failure,
    Forward,
    Free,
    Hello,
    Logits,
    Ping,
    Pong,
    ProtocolError,
    Truncate,
    decode,
)
from exo_actor.transport.messages import MAX_HEADER_BYTES, Beacon

text = st.text(max_size=40)
count = st.integers(0, 2**53 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
arrays = st.sampled_from([np.float32, np.float16, np.int32, np.int64]).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
)
messages = st.one_of(
    st.builds(Hello, text, text, count, text, text, count, count),
    st.builds(Beacon, text, text, count, text, text),
    st.builds(Ping, text, count),
    st.builds(Pong, text, count),
    st.builds(Free, text, text),
    st.builds(Truncate, text, text, count, count),
    st.builds(Failure, text, text, text, text),
    st.builds(Forward, text, text, text, count, count, count, arrays),
    st.builds(Logits, text, text, count, arrays),
    st.builds(Hello, text, text, count, text, text, count, count, text),
    st.builds(Draft, text, text, count, count, count, finite, count, finite, finite, arrays),
    st.builds(Drafted, text, text, count, st.lists(count, max_size=64), arrays),
)


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    for k, v in vars(a).items():
        w = getattr(b, k)
        if isinstance(v, np.ndarray):
            if v.dtype != w.dtype or v.shape != w.shape or not np.array_equal(v, w, equal_nan=True):
                return False
        elif v != w:
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(messages)
def test_round_trip(msg):
    frames = msg.encode()
    assert _same(decode([bytes(f) for f in frames]), msg)


def test_tensor_is_a_view_of_the_received_frame():
    frame = bytearray(np.arange(4, dtype=np.float32).tobytes())
    header = Logits("r", "n", 0, np.zeros(4, np.float32)).encode()[0]
    msg = decode([header, frame])
    frame[:4] = np.float32(9).tobytes()
    assert msg.data[0] == 9  # no copy was made


def _header(**fields):
    base = {"v": 1, "k": "logits", "rid": "r", "src": "n", "pos": 0, "dt": "float32", "sh": [2]}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...})


GOOD_TENSOR = np.zeros(2, np.float32).tobytes()


def _drafted(**fields):
    base = {"v": 1, "k": "drafted", "rid": "r", "src": "n", "seq": 1, "tokens": [1, 2], "dt": "float32", "sh": [0]}
    base.update(fields)
    return [msgpack.packb(base), b""]


def _draft(**fields):
    base = {"v": 1, "k": "draft", "rid": "r", "src": "n", "seq": 1, "n": 4, "seed": 0, "temperature": 0.5}
    base.update({"top_k": 0, "top_p": 1.0, "min_p": 0.0, "dt": "int64", "sh": [0]}, **fields)
    return [msgpack.packb(base), b""]


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        (_drafted(tokens=[1, -2]), "tokens must be a list"),
        (_drafted(tokens=list(range(65))), "tokens must be a list"),
        (_drafted(tokens="12"), "tokens must be a list"),
        (_drafted(tokens=[True]), "tokens must be a list"),
        (_draft(temperature=float("nan")), "temperature must be a finite number"),
        (_draft(top_p="1"), "top_p must be a finite number"),
        (_draft(min_p=False), "min_p must be a finite number"),
    ],
)
def test_malformed_draft_messages_are_rejected(frames, needle):
    with pytest.raises(ProtocolError, match=needle):
        decode(frames)


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([], "1 or 2 frames"),
        ([b"x", b"y", b"z"], "1 or 2 frames"),
        ([b"\xc1garbage"], "msgpack"),
        ([msgpack.packb([1, 2])], "map"),
        ([_header(v=2), GOOD_TENSOR], "version"),
        ([_header(v=...), GOOD_TENSOR], "version"),
        ([_header(k="launch"), GOOD_TENSOR], "unknown message kind"),
        ([_header()], "tensor frame"),
        ([msgpack.packb({"v": 1, "k": "ping", "src": "a", "seq": 1}), b"extra"], "no tensor frame"),
        ([_header(rid=...), GOOD_TENSOR], "lacks field rid"),
        ([_header(rid=5), GOOD_TENSOR], "rid must be a string"),
        ([_header(rid="x" * 1000), GOOD_TENSOR], "rid must be a string"),
        ([_header(pos=-1), GOOD_TENSOR], "pos must be a non-negative integer"),
        ([_header(pos=True), GOOD_TENSOR], "pos must be a non-negative integer"),
        ([_header(pos=2**60), GOOD_TENSOR], "pos must be a non-negative integer"),
        ([_header(dt="object"), GOOD_TENSOR], "dtype"),
        ([_header(dt="float64"), np.zeros(2).tobytes()], "dtype"),
        ([_header(sh=[3]), GOOD_TENSOR], "needs 12 bytes"),
        ([_header(sh="2"), GOOD_TENSOR], "shape"),
        ([_header(sh=[1, 1, 1, 1, 2]), GOOD_TENSOR], "shape"),
        ([_header(sh=[-2]), GOOD_TENSOR], "shape"),
        ([_header(sh=[2**40, 2**20]), GOOD_TENSOR], "bytes"),
        ([b"\x80" * (MAX_HEADER_BYTES + 1)], "exceeds"),
        ([msgpack.packb({1: 2})], "msgpack"),  # non-string map keys
    ],
)
def test_malformed_messages_are_rejected(frames, needle):
    with pytest.raises(ProtocolError, match=needle):
        decode(frames)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=3))
def test_random_bytes_never_escape_as_other_errors(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


def test_unsupported_dtype_cannot_be_sent():
    with pytest.raises(ProtocolError):
        Logits("r", "n", 0, np.zeros(2, np.float64)).encode()

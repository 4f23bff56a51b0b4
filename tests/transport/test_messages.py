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
    ForwardBatch,
    Free,
    Hello,
    Logits,
    LogitsBatch,
    Ping,
    Pong,
    ProtocolError,
    Truncate,
    decode,
)
from exo_actor.transport.messages import MAX_HEADER_BYTES, Beacon, Choice, Sampled, SampleSpec
from tests.conftest import require

text = st.text(max_size=40)
count = st.integers(0, 2**53 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
arrays = st.sampled_from([np.float32, np.float16, np.int32, np.int64]).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
)
word = st.integers(0, 2**64 - 1)
specs = st.builds(
    SampleSpec,
    finite,
    count,
    finite,
    finite,
    finite,
    finite,
    count,
    st.lists(count, max_size=8),
    st.lists(count, max_size=6).map(lambda c: c[: len(c) // 2 * 2]),
    st.one_of(st.just([]), st.lists(word, min_size=6, max_size=6).map(lambda w: [*w[:4], w[4] % 2, w[5]])),
)
choices = st.integers(1, 5).flatmap(
    lambda n: st.builds(
        Choice,
        st.lists(st.integers(0, 999), min_size=n, max_size=n),
        st.just(n - 1),
        st.just(1000),
        st.one_of(st.just([]), st.lists(word, min_size=6, max_size=6).map(lambda w: [*w[:4], w[4] % 2, w[5]])),
        st.one_of(
            st.just([]),
            st.lists(
                st.integers(0, 3).flatmap(
                    lambda k: st.tuples(
                        finite,
                        st.lists(st.integers(0, 999), min_size=k, max_size=k),
                        st.lists(finite, min_size=k, max_size=k),
                    ).map(list)
                ),
                min_size=n,
                max_size=n,
            ),
        ),
    )
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
    specs.flatmap(
        lambda sp: st.builds(
            Forward, text, text, text, count, count, st.just(len(sp.drafts) + 1), arrays, text, count, st.just([sp])
        )
    ),
    st.integers(1, 6).flatmap(
        lambda n: st.builds(
            Sampled,
            text,
            st.lists(text, min_size=n, max_size=n, unique=True),
            st.lists(count, min_size=n, max_size=n),
            st.lists(choices, min_size=n, max_size=n),
        )
    ),
    st.builds(Logits, text, text, count, arrays),
    st.builds(Hello, text, text, count, text, text, count, count, text),
    st.builds(Draft, text, text, count, count, count, finite, count, finite, finite, arrays),
    st.builds(Drafted, text, text, count, st.lists(count, max_size=64), arrays),
    st.integers(1, 8).flatmap(
        lambda n: st.builds(
            ForwardBatch,
            text,
            text,
            count,
            st.lists(text, min_size=n, max_size=n, unique=True),
            st.lists(count, min_size=n, max_size=n),
            st.lists(text, min_size=n, max_size=n),
            st.lists(count, min_size=n, max_size=n),
            st.one_of(hnp.arrays(np.int64, (n,)), hnp.arrays(np.float32, (n, 3))),
            st.just([]),
            st.one_of(st.just([]), st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        )
    ),
    st.integers(1, 8).flatmap(
        lambda n: st.builds(
            LogitsBatch,
            text,
            st.lists(text, min_size=n, max_size=n, unique=True),
            st.lists(count, min_size=n, max_size=n),
            hnp.arrays(np.float32, (n, 5)),
        )
    ),
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


def _batch(rids=("a", "b"), positions=(3, 4), adopt=("", ""), adopt_len=(0, 0), data=None):
    data = np.zeros((2, 3), np.float32) if data is None else data
    return ForwardBatch("n0", "n0", 1, list(rids), list(positions), list(adopt), list(adopt_len), data).encode()


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        (_batch(positions=(3,)), "must agree"),
        (_batch(adopt=("", "", "")), "must agree"),
        (_batch(data=np.zeros((3, 3), np.float32)), "must agree"),
        (_batch(data=np.zeros((), np.float32)), "must agree"),
        (_batch(rids=(), positions=(), adopt=(), adopt_len=(), data=np.zeros((0, 3), np.float32)), "must agree"),
        (_batch(rids=("a", "a")), "appears twice"),
        (_batch(data=np.zeros((2, 3, 1), np.float32)), "token ids"),
        (_batch(rids=("a", 5)), "list of at most 64 strings"),
        (
            ForwardBatch("n0", "n0", 1, ["a"], [3], ["s"], [2], np.zeros(1, np.int64), [], [2]).encode(),
            "adopt_copy",
        ),
        (
            ForwardBatch("n0", "n0", 1, ["a", "b"], [3, 4], ["", ""], [0, 0], np.zeros(2, np.int64), [], [1]).encode(),
            "adopt_copy",
        ),
        (Forward("r", "n0", "n0", 1, 0, 1, np.zeros(1, np.int64), "s", 3, [], 2).encode(), "adopt_copy"),
        (LogitsBatch("n0", ["a"], [1], np.zeros(4, np.float32)).encode(), "logits"),
        (LogitsBatch("n0", ["a", "b"], [1, 2], np.zeros((1, 4), np.float32)).encode(), "must agree"),
    ],
)
def test_malformed_batches_are_rejected(frames, needle):
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


def test_coverage_guided_fuzzing_of_the_decoder(tmp_path):
    """atheris (libFuzzer) mutates valid messages of every kind for 200,000 runs: no input crashes the
    decoder or yields a message that does not round-trip (tests/transport/fuzz_decode.py)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    require("atheris")  # wheels for Linux/macOS x86-64; CI installs it
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = [
        Hello("n0", "tcp://10.0.0.1:52416", 1 << 30, "numpy", "m", 3, 1, "ngram", 5, 10),
        Ping("n0", 7),
        Free("r1", "n0"),
        Truncate("r1", "n0", 5, 3),
        Failure("r1", "n0", "peer_down", "gone"),
        Forward("r1", "n0", "n0", 9, 4, 1, np.arange(6, dtype=np.float32).reshape(2, 3)),
        Logits("r1", "n0", 4, np.ones((1, 4), np.float32)),
        ForwardBatch("n0", "n0", 9, ["r1", "r2"], [4, 7], ["", "r0"], [0, 3], np.arange(2, dtype=np.int64)),
        LogitsBatch("n0", ["r1", "r2"], [4, 7], np.ones((2, 4), np.float32)),
        Drafted("r1", "n0", 2, [1, 2, 3], np.zeros((3, 2), np.float32)),
    ]
    for i, msg in enumerate(seeds):
        frames = [bytes(f) for f in msg.encode()]
        (corpus / f"seed{i}").write_bytes(bytes([len(frames) - 1]) + b"||".join(frames))
    script = Path(__file__).with_name("fuzz_decode.py")
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(corpus),
            "-runs=200000",
            "-max_total_time=120",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
            # libFuzzer's RSS check reads getrusage's max RSS, which on Linux the child inherits across
            # exec from this (possibly multi-GB) pytest process: it would report a false out-of-memory
            "-rss_limit_mb=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done and int(done.group(1)) >= 1000, proc.stderr[-1000:]


@pytest.mark.parametrize(
    "header",
    [
        {"v": 1, "k": ["fwd"]},  # an unhashable kind (found by the fuzzer)
        {
            "v": 1,
            "k": "fwd",
            "rid": "r",
            "src": "a",
            "router": "a",
            "plan": 1,
            "pos": 0,
            "num_logits": 1,
            "dt": ["float32"],
            "sh": [1],
        },  # an unhashable dtype (found by the fuzzer)
        {
            "v": 1,
            "k": "fwd",
            "rid": "r",
            "src": "a",
            "router": "a",
            "plan": 1,
            "pos": 0,
            "num_logits": 1,
            "dt": "float32",
            "sh": [2**32, 2**32, 2**32, 1],
        },  # a shape whose size wraps around int64
    ],
)
def test_fuzzer_findings_are_protocol_errors(header):
    with pytest.raises(ProtocolError):
        decode([msgpack.packb(header), b"\x00" * 4])


GREEDY_SPEC = SampleSpec(0.0, 0, 1.0, 0.0, 0.0, 0.0, 0, [], [], [])


def _sampled(choice: list) -> list:
    header = msgpack.unpackb(Sampled("n2", ["a"], [3], [Choice([5], 0, 10, [], [])]).encode()[0])
    header["choices"] = [choice]
    return [msgpack.packb(header)]


def _spec(**change) -> list:
    fields = dict(zip(["t", "k", "p", "m", "pp", "fp", "lp", "d", "c", "r"], GREEDY_SPEC.to_wire()))
    fields.update(change)
    header = msgpack.unpackb(Forward("a", "n0", "n0", 1, 0, 1, np.zeros(1, np.int64)).encode()[0])
    header["sample"] = [list(fields.values())]
    return [msgpack.packb(header), np.zeros(1, np.int64).tobytes()]


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        (_spec(t="hot"), "temperature must be a finite number"),
        (_spec(k=-1), "top_k"),
        (_spec(d=[1, -2]), "drafts"),
        (_spec(d=[1]), "one logits row per draft"),
        (_spec(c=[1, 2, 3]), "pairs"),
        (_spec(c=list(range(2000))), "counts"),
        (_spec(r=[1, 2, 3]), "rng"),
        (_spec(r=[-1, 0, 0, 0, 0, 0]), "rng"),
        (_spec(t=0.0, d=[], c=[], r=[]) + [b"x"], "1 or 2 frames"),
        (_sampled([[5], 1, 10, [], []]), "accepted drafts then one token"),
        (_sampled([[], 0, 10, [], []]), "accepted drafts then one token"),
        (_sampled([[50], 0, 10, [], []]), "in the vocabulary"),
        (_sampled([[5], 0, 10, [], [[0.0, [], []], [0.0, [], []]]]), "a logprob for each token"),
        (_sampled([[5], 0, 10, [], [[0.0, [1, 2], [0.5]]]]), "each alternative has its logprob"),
        (_sampled([[5], 0, 10, [], [[0.0, [11], [0.5]]]]), "alternatives"),
        (_sampled([[5], 0, 10]), "5 fields"),
        (Sampled("n2", ["a", "b"], [1], [Choice([5], 0, 10, [], [])]).encode(), "one position and one choice"),
        (
            ForwardBatch(
                "n0", "n0", 1, ["a", "b"], [1, 2], ["", ""], [0, 0], np.zeros(2, np.int64), [GREEDY_SPEC]
            ).encode(),
            "one sample per row",
        ),
    ],
)
def test_malformed_sampling_messages_are_rejected(frames, needle):
    with pytest.raises(ProtocolError, match=needle):
        decode(frames)

"""Wire messages: a msgpack header frame, then at most one raw tensor frame (zero-copy).

    frame 0: msgpack map {"v": version, "k": kind, <fields>, ["dt": dtype, "sh": shape]}
    frame 1: the tensor's bytes, C order (only for kinds that carry one)

Every message kind is a frozen dataclass. decode() checks everything (version, kind, field types
and ranges, dtype allow-list, shape x itemsize == frame length, size limits) and raises one
ProtocolError; callers drop and log such messages. No pickle, no array-to-list conversion: arrays go
out as memoryviews of their buffers and come back as numpy views of the received frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack
import numpy as np

from ..errors import ExoError

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # a batch of 64 sampled rows with penalty counts fits
MAX_TENSOR_BYTES = 1 << 30
MAX_TEXT = 512  # characters in any string field
MAX_INT = 2**53
MAX_DIMS = 4
MAX_LIST = 64  # items in a list field
DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64}
MAX_SAMPLE_INTS = 1024  # ints in a SampleSpec's penalty counts (token, count pairs)
MAX_CHOICE_TOKENS = 64  # tokens one pass yields (drafts + 1)
MAX_TOP = 64  # alternatives per logprob


class ProtocolError(ExoError):
    """A message that is not valid exo-actor wire protocol."""


_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, str], ...]:
    """(name, annotation) of a message class's fields, computed once per class."""
    # a plain dict, not functools.cache: mypy cannot see a class object as Hashable (python/mypy#20409)
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = tuple((f.name, str(f.type)) for f in fields(cls))
    return found


def _ints(kind: str, name: str, value: Any, limit: int, bound: int = MAX_INT) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > limit
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound for v in value)
    ):
        raise ProtocolError(f"{kind}.{name} must be a list of at most {limit} non-negative integers")
    return value


def _number(kind: str, name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ProtocolError(f"{kind}.{name} must be a finite number")
    return float(value)


def _rng(kind: str, value: Any) -> list[int]:
    """A PCG64 generator's state: six unsigned 64-bit words (the fifth 0 or 1), or none."""
    words = _ints(kind, "rng", value, 6, 1 << 64)
    if words and (len(words) != 6 or words[4] > 1):
        raise ProtocolError(f"{kind}.rng must be a generator's six 64-bit words, or none")
    return words


@dataclass(frozen=True)
class SampleSpec:
    """How the last shard chooses a pass's tokens itself (sampling/decide.py): the request's sampling
    parameters (range-checked again where they are rebuilt), the drafted tokens the pass verifies, the
    generated tokens' counts for the penalties (token, count pairs), and the seeded generator's state
    (6 words; [] for greedy). logprobs is how many alternatives to report plus one (0: no logprobs)."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    presence_penalty: float
    frequency_penalty: float
    logprobs: int
    drafts: list[int]
    counts: list[int]
    rng: list[int]

    def to_wire(self) -> list[Any]:
        return [
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.presence_penalty,
            self.frequency_penalty,
            self.logprobs,
            self.drafts,
            self.counts,
            self.rng,
        ]

    @classmethod
    def from_wire(cls, kind: str, value: Any) -> SampleSpec:
        if not isinstance(value, list) or len(value) != 10:
            raise ProtocolError(f"{kind}: a sample is a list of 10 fields")
        t, k, p, m, pp, fp, lp, drafts, counts, rng = value
        floats = [_number(kind, n, v) for n, v in (("temperature", t), ("top_p", p), ("min_p", m))]
        pens = [_number(kind, n, v) for n, v in (("presence_penalty", pp), ("frequency_penalty", fp))]
        k, lp = (_ints(kind, n, [v], 1)[0] for n, v in (("top_k", k), ("logprobs", lp)))
        drafts = _ints(kind, "drafts", drafts, MAX_CHOICE_TOKENS - 1)
        counts = _ints(kind, "counts", counts, MAX_SAMPLE_INTS)
        if len(counts) % 2:
            raise ProtocolError(f"{kind}.counts must be token, count pairs")
        rng = _rng(kind, rng)
        return cls(floats[0], k, floats[1], floats[2], pens[0], pens[1], lp, drafts, counts, rng)


@dataclass(frozen=True)
class Choice:
    """The last shard's decision for one pass: the tokens (accepted drafts, then one more), how many
    drafts it accepted, the vocabulary size, the generator's state after its draws ([] for greedy), and
    per token [logprob, alternative ids, their logprobs] when asked for."""

    tokens: list[int]
    accepted: int
    vocab: int
    rng: list[int]
    logprobs: list[list[Any]]

    def to_wire(self) -> list[Any]:
        return [self.tokens, self.accepted, self.vocab, self.rng, self.logprobs]

    @classmethod
    def from_wire(cls, kind: str, value: Any) -> Choice:
        if not isinstance(value, list) or len(value) != 5:
            raise ProtocolError(f"{kind}: a choice is a list of 5 fields")
        tokens = _ints(kind, "tokens", value[0], MAX_CHOICE_TOKENS)
        accepted, vocab = _ints(kind, "accepted/vocab", value[1:3], 2)
        rng = _rng(kind, value[3])
        lps = value[4]
        if not tokens or accepted != len(tokens) - 1 or any(t >= vocab for t in tokens):
            raise ProtocolError(f"{kind}: a choice has its accepted drafts then one token, all in the vocabulary")
        if not isinstance(lps, list) or len(lps) not in (0, len(tokens)):
            raise ProtocolError(f"{kind}: a choice has a logprob for each token, or none")
        for row in lps:
            if not isinstance(row, list) or len(row) != 3:
                raise ProtocolError(f"{kind}: a logprob is [logprob, alternative ids, their logprobs]")
            _number(kind, "logprob", row[0])
            ids = _ints(kind, "alternatives", row[1], MAX_TOP, vocab)
            if not isinstance(row[2], list) or len(row[2]) != len(ids):
                raise ProtocolError(f"{kind}: each alternative has its logprob")
            for v in row[2]:
                _number(kind, "alternative logprob", v)
        return cls(tokens, accepted, vocab, rng, lps)


class Message:
    """Base of all message kinds: KIND names it on the wire, TENSOR says whether it carries one."""

    KIND: ClassVar[str]
    TENSOR: ClassVar[bool] = False

    def check(self) -> None:
        """Rules across fields, checked by decode() after each field's own (raise ProtocolError)."""

    def encode(self) -> list[bytes | memoryview]:
        """The multipart frames of this message."""
        header: dict[str, Any] = {"v": PROTOCOL_VERSION, "k": self.KIND}
        frames: list[bytes | memoryview] = []
        for name, _ in _fields(type(self)):
            value = getattr(self, name)
            if name == "data":
                arr = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
                if arr.dtype.name not in DTYPES:
                    raise ProtocolError(f"dtype {arr.dtype} cannot go on the wire ({', '.join(DTYPES)})")
                header["dt"], header["sh"] = arr.dtype.name, list(arr.shape)
                frames.append(arr.reshape(-1).view(np.uint8).data)  # zero-copy byte view (a memoryview)
            elif isinstance(value, list) and value and isinstance(value[0], (SampleSpec, Choice)):
                header[name] = [v.to_wire() for v in value]
            else:
                header[name] = value
        return [msgpack.packb(header, use_bin_type=True), *frames]


@dataclass(frozen=True)
class Hello(Message):
    """A node introducing itself to a peer (on connect, and answered in kind)."""

    KIND: ClassVar[str] = "hello"
    src: str
    endpoint: str  # where this node's ROUTER listens, tcp://HOST:PORT
    memory: int  # bytes it offers for weights
    engine: str
    model: str
    loaded: int  # version of the plan whose shard this node has loaded (0: none yet)
    reply: int  # 1: please answer with your own Hello
    draft: str = ""  # the draft model this node's routers speculate with ("": none)
    download_done: int = 0  # bytes of this node's model files on disk, while it downloads them
    download_total: int = 0  # bytes it needs (0: no download)


@dataclass(frozen=True)
class Beacon(Message):
    """A UDP announcement (one datagram = the header frame): who we are and where to reach us."""

    KIND: ClassVar[str] = "beacon"
    src: str
    endpoint: str
    memory: int
    engine: str
    model: str


@dataclass(frozen=True)
class Ping(Message):
    """Liveness probe; any message from a peer counts as a sign of life. It carries the sender's view: the
    nodes it heard from recently (itself included) and the nodes it knew but has not heard from lately, from
    which every node agrees on which nodes can form a ring (cluster/planner.py agreed_members)."""

    KIND: ClassVar[str] = "ping"
    src: str
    seq: int
    hears: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Pong(Message):
    KIND: ClassVar[str] = "pong"
    src: str
    seq: int


@dataclass(frozen=True, eq=False)
class Forward(Message):
    """Run positions [pos, pos + T) of request rid through a shard: token ids or hidden states."""

    KIND: ClassVar[str] = "fwd"
    TENSOR: ClassVar[bool] = True
    rid: str
    src: str  # the node that sent this message
    router: str  # the node whose RouterActor drives the request (logits go back there)
    plan: int  # plan version this request runs on: a shard with another plan refuses it
    pos: int
    num_logits: int
    data: np.ndarray
    adopt: str = ""  # prefix cache: first take over this finished request's KV cache ("": none) ...
    adopt_len: int = 0  # ... cut to this many positions
    sample: list[SampleSpec] = field(default_factory=list)  # [one]: the last shard answers with Sampled
    adopt_copy: int = 0  # 1: copy `adopt`'s cache instead of taking it over (the source keeps running)

    def check(self) -> None:
        if self.adopt_copy not in (0, 1):
            raise ProtocolError("fwd: adopt_copy is 0 or 1")
        if len(self.sample) > 1:
            raise ProtocolError("fwd: at most one sample")
        if self.sample and len(self.sample[0].drafts) + 1 != self.num_logits:
            raise ProtocolError("fwd: a sampled pass has one logits row per draft, plus one")


@dataclass(frozen=True, eq=False)
class Logits(Message):
    """The last shard's answer: logits [num_logits, V] for the last positions of a Forward, or for a
    Forward with num_logits 0 the final-normed hidden states [T, D] of all its positions (embeddings)."""

    KIND: ClassVar[str] = "logits"
    TENSOR: ClassVar[bool] = True
    rid: str
    src: str
    pos: int
    data: np.ndarray


def _check_rows(msg: ForwardBatch | LogitsBatch, lists: tuple[list[Any], ...]) -> None:
    n = len(msg.rids)
    if n == 0 or any(len(x) != n for x in lists) or msg.data.ndim == 0 or msg.data.shape[0] != n:
        raise ProtocolError(f"{msg.KIND}: rids, positions, the other row lists and the tensor's rows must agree")
    if len(set(msg.rids)) != n:
        raise ProtocolError(f"{msg.KIND}: a request appears twice in one batch")


@dataclass(frozen=True, eq=False)
class ForwardBatch(Message):
    """Single-token decode steps of several requests through a shard in one pass (continuous
    batching): row i of data, a token id or hidden states [D], is request rids[i] at positions[i]."""

    KIND: ClassVar[str] = "bfwd"
    TENSOR: ClassVar[bool] = True
    src: str
    router: str
    plan: int
    rids: list[str]
    positions: list[int]
    adopt: list[str]  # per row, as Forward.adopt
    adopt_len: list[int]
    data: np.ndarray
    samples: list[SampleSpec] = field(default_factory=list)  # one per row (the answer is Sampled), or none
    adopt_copy: list[int] = field(default_factory=list)  # per row, as Forward.adopt_copy; [] when none copies

    def check(self) -> None:
        _check_rows(self, (self.positions, self.adopt, self.adopt_len))
        if self.adopt_copy and (
            len(self.adopt_copy) != len(self.rids) or any(c not in (0, 1) for c in self.adopt_copy)
        ):
            raise ProtocolError("bfwd: adopt_copy is one 0 or 1 per row, or empty")
        if self.data.ndim > 2:
            raise ProtocolError("bfwd: the tensor is token ids [B] or hidden states [B, D]")
        if self.samples and (len(self.samples) != len(self.rids) or any(s.drafts for s in self.samples)):
            raise ProtocolError("bfwd: one sample per row, or none; a row verifies no drafts")


@dataclass(frozen=True, eq=False)
class LogitsBatch(Message):
    """The last shard's answer to a ForwardBatch: row i of data holds the logits [V] of rids[i]."""

    KIND: ClassVar[str] = "blogits"
    TENSOR: ClassVar[bool] = True
    src: str
    rids: list[str]
    positions: list[int]
    data: np.ndarray

    def check(self) -> None:
        _check_rows(self, (self.positions,))
        if self.data.ndim != 2:
            raise ProtocolError("blogits: the tensor is logits [B, V]")


@dataclass(frozen=True)
class Sampled(Message):
    """The last shard's answer to a sampled pass (Forward with a sample, or ForwardBatch with samples):
    row i is request rids[i]'s pass at positions[i], and choices[i] the tokens it yields."""

    KIND: ClassVar[str] = "sampled"
    src: str
    rids: list[str]
    positions: list[int]
    choices: list[Choice]

    def check(self) -> None:
        n = len(self.rids)
        if n == 0 or len(self.positions) != n or len(self.choices) != n or len(set(self.rids)) != n:
            raise ProtocolError("sampled: one position and one choice per request, each request once")


@dataclass(frozen=True)
class Free(Message):
    """Drop a request's KV caches (it finished, failed or was cancelled)."""

    KIND: ClassVar[str] = "free"
    rid: str
    src: str


@dataclass(frozen=True)
class Truncate(Message):
    """Forget a request's positions >= length (drafts the target rejected).

    `after` is the start of the pass whose tail is dropped: a shard applies the message only if
    that pass is still its newest for the request, so a Truncate overtaken by the next pass's
    Forward (they travel different links) never erases the next pass's positions.
    """

    KIND: ClassVar[str] = "trunc"
    rid: str
    src: str
    length: int
    after: int


@dataclass(frozen=True, eq=False)
class Draft(Message):
    """Ask a DraftActor for up to n tokens following a context (the tensor: int64 token ids)."""

    KIND: ClassVar[str] = "draft"
    TENSOR: ClassVar[bool] = True
    rid: str
    src: str
    seq: int  # the router's number for this proposal (answers to older ones are ignored)
    n: int
    seed: int  # the draft's sampling draws come from this seed
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    data: np.ndarray


@dataclass(frozen=True, eq=False)
class Drafted(Message):
    """A DraftActor's answer: the drafted tokens and, for sampled drafts, their probabilities
    (float32 [len(tokens), V]; an empty [0, 0] tensor means each is one-hot on its token)."""

    KIND: ClassVar[str] = "drafted"
    TENSOR: ClassVar[bool] = True
    rid: str
    src: str
    seq: int
    tokens: list[int]
    data: np.ndarray


@dataclass(frozen=True)
class Failure(Message):
    """A shard could not run a request; the router ends it with this message."""

    KIND: ClassVar[str] = "fail"
    rid: str
    src: str
    code: str
    message: str


KINDS: dict[str, type[Message]] = {
    m.KIND: m
    for m in (
        Hello,
        Beacon,
        Ping,
        Pong,
        Forward,
        Logits,
        ForwardBatch,
        LogitsBatch,
        Sampled,
        Free,
        Truncate,
        Draft,
        Drafted,
        Failure,
    )
}


def _check_field(kind: str, name: str, expected: str, value: Any) -> Any:
    if expected == "str":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ProtocolError(f"{kind}.{name} must be a string of at most {MAX_TEXT} characters")
    elif expected == "int":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_INT:
            raise ProtocolError(f"{kind}.{name} must be a non-negative integer")
    elif expected == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ProtocolError(f"{kind}.{name} must be a finite number")
        value = float(value)
    elif expected == "list[int]":
        if (
            not isinstance(value, list)
            or len(value) > MAX_LIST
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_INT for v in value)
        ):
            raise ProtocolError(f"{kind}.{name} must be a list of at most {MAX_LIST} non-negative integers")
    elif expected == "list[str]":
        if (
            not isinstance(value, list)
            or len(value) > MAX_LIST
            or not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value)
        ):
            raise ProtocolError(f"{kind}.{name} must be a list of at most {MAX_LIST} strings")
    elif expected in ("list[SampleSpec]", "list[Choice]"):
        item = SampleSpec if expected == "list[SampleSpec]" else Choice
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise ProtocolError(f"{kind}.{name} must be a list of at most {MAX_LIST} items")
        value = [item.from_wire(kind, v) for v in value]
    return value


def _tensor(kind: str, header: dict[str, Any], frame: Any) -> np.ndarray:
    dt, shape = header.get("dt"), header.get("sh")
    if not isinstance(dt, str) or dt not in DTYPES:
        raise ProtocolError(f"{kind}: dtype {dt!r} is not allowed ({', '.join(DTYPES)})")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_INT for d in shape)
    ):
        raise ProtocolError(f"{kind}: shape must be a list of at most {MAX_DIMS} non-negative integers")
    buf = memoryview(frame)
    expected = math.prod(shape) * np.dtype(DTYPES[dt]).itemsize  # exact: no int64 wrap-around
    if expected > MAX_TENSOR_BYTES or buf.nbytes != expected:
        raise ProtocolError(f"{kind}: shape {shape} of {dt} needs {expected} bytes, the frame has {buf.nbytes}")
    return np.frombuffer(buf, dtype=DTYPES[dt]).reshape(shape)


def decode(frames: list[Any]) -> Message:
    """Frames (bytes, memoryviews or zmq.Frames) -> a message, or ProtocolError."""
    if not 1 <= len(frames) <= 2:
        raise ProtocolError(f"a message has 1 or 2 frames, got {len(frames)}")
    raw = memoryview(frames[0])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {raw.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a msgpack map")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r} is not {PROTOCOL_VERSION}")
    kind = header.get("k")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    if cls.TENSOR != (len(frames) == 2):
        raise ProtocolError(f"{cls.KIND} carries {'one tensor frame' if cls.TENSOR else 'no tensor frame'}")
    kwargs: dict[str, Any] = {}
    for name, kind in _fields(cls):
        if name == "data":
            kwargs["data"] = _tensor(cls.KIND, header, frames[1])
        elif name not in header:
            raise ProtocolError(f"{cls.KIND} lacks field {name}")
        else:
            kwargs[name] = _check_field(cls.KIND, name, kind, header[name])
    msg = cls(**kwargs)
    msg.check()
    return msg

"""Draft sources for speculative decoding: something that proposes the next few tokens cheaply.

ngram            prompt lookup (Saxena 2023): continue the latest earlier occurrence of the
                 context's last n-gram. No model; strong when the output copies the input.
NAME             a registry model or path with the target's tokenizer (e.g. llama-3.2-1b for
                 llama-3.1-8b); the target itself as its own draft accepts every token.
NAME:layers=K    the first K layers of NAME plus its final norm and head ("self-draft").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from ..engines import get_engine
from ..errors import ExoError
from ..runtime.generation import LocalPipeline
from ..sampling import SamplingParams
from ..sampling.sampler import draw, filtered_probs
from ..storage.model_store import ensure_layers, ensure_model
from ..weights import ModelFiles, open_model
from .speculation import Drafter, Proposal

log = logging.getLogger(__name__)


class DraftError(ExoError):
    """A draft model that cannot serve the target (bad spec, other vocabulary, ...)."""


class NgramDrafter:
    """Prompt-lookup drafting: the tokens that followed the latest earlier match of the last n-gram."""

    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise DraftError(f"n-gram sizes must satisfy 1 <= min <= max, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(
        self, request_id: str, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator
    ) -> Proposal:
        return Proposal(ngram_lookup(context, n, self.max_ngram, self.min_ngram), None)

    def free(self, request_id: str) -> None:
        pass


def ngram_lookup(context: Sequence[int], n: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Up to n tokens following the latest earlier occurrence of the context's last g-gram, trying
    g = max_ngram first and shorter suffixes after; [] when nothing matches."""
    ctx = np.asarray(context, dtype=np.int64)
    L = len(ctx)
    if n <= 0:
        return []
    for g in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        # windows starting at 0 .. L-g-1: each is followed by at least one token, and none is the suffix
        windows = np.lib.stride_tricks.sliding_window_view(ctx[: L - 1], g)
        hits = np.flatnonzero((windows == ctx[L - g :]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + g
            return ctx[start : start + n].tolist()
    return []


class ModelDrafter:
    """A small model (or the target's first layers) run locally with its own per-request KV cache."""

    def __init__(self, name: str, pipeline: LocalPipeline, context_length: int) -> None:
        self.name, self.pipeline, self.context_length = name, pipeline, context_length
        self.seen: dict[str, list[int]] = {}  # the tokens whose KV each request's draft cache holds

    @property
    def weight_bytes(self) -> int:
        return sum(s.weight_bytes for s in self.pipeline.shards)

    def propose(
        self, request_id: str, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator
    ) -> Proposal:
        n = min(n, self.context_length - len(context))
        if n <= 0:
            return Proposal([], None)
        seen = self.seen.get(request_id, [])
        keep = 0
        limit = min(len(seen), len(context) - 1)  # feed at least one token to get logits
        while keep < limit and seen[keep] == context[keep]:
            keep += 1
        logits = self.pipeline.forward(request_id, np.asarray(context[keep:], np.int64), keep)
        pos = len(context)
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        for j in range(n):
            q = filtered_probs(logits[-1], params)
            x = int(np.argmax(q)) if params.greedy else draw(q, rng)
            tokens.append(x)
            rows.append(q)
            if j + 1 < n:
                logits = self.pipeline.forward(request_id, np.array([x], np.int64), pos)
                pos += 1
        self.seen[request_id] = [*context, *tokens[:-1]]
        return Proposal(tokens, np.stack(rows))

    def free(self, request_id: str) -> None:
        self.seen.pop(request_id, None)
        self.pipeline.free(request_id)


def parse_draft_spec(spec: str) -> tuple[str, int | None]:
    """'NAME' or 'NAME:layers=K' -> (NAME, K or None)."""
    name, sep, option = spec.partition(":layers=")
    if not name or (sep and not option):
        raise DraftError(f"invalid draft model {spec!r}: use ngram, a model name or path, or NAME:layers=K")
    if not sep:
        return name, None
    if not option.isdigit() or int(option) < 1:
        raise DraftError(f"invalid draft model {spec!r}: layers=K needs a positive integer K")
    return name, int(option)


def check_vocabulary(target: ModelFiles, draft: ModelFiles, draft_name: str) -> None:
    """Refuse a draft whose token ids mean something else than the target's."""
    if draft.args.vocab_size != target.args.vocab_size:
        raise DraftError(
            f"draft model {draft_name} has a vocabulary of {draft.args.vocab_size} tokens, the target "
            f"{target.args.vocab_size}: a draft must share the target's tokenizer"
        )
    a = target.tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    b = draft.tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    if a != b:
        differ = len(set(a.items()) ^ set(b.items()))
        raise DraftError(
            f"draft model {draft_name} uses another tokenizer than the target ({differ} token entries differ): "
            "a draft must share the target's tokenizer"
        )


def open_draft(spec: str, target: ModelFiles) -> ModelFiles:
    """The draft model's files (cut to K layers for NAME:layers=K), checked against the target."""
    name, layers = parse_draft_spec(spec)
    files = open_model(ensure_model(name, weights=False))  # the weights come when the draft is loaded
    check_vocabulary(target, files, name)
    if layers is not None:
        total = files.args.num_hidden_layers
        if layers > total:
            raise DraftError(f"draft {spec}: the model has only {total} layers")
        files = dataclasses.replace(files, args=dataclasses.replace(files.args, num_hidden_layers=layers))
    return files


def draft_bytes(spec: str, target: ModelFiles, engine: str = "numpy") -> int:
    """Memory the draft's weights take on `engine` (0 for prompt lookup)."""
    if spec == "ngram":
        return 0
    files = open_draft(spec, target)
    return files.shard_bytes(0, files.args.num_hidden_layers, engine)


def load_drafter(spec: str, target: ModelFiles, engine: str = "numpy") -> Drafter:
    """The drafter a --draft-model value names, checked against the target model."""
    if spec == "ngram":
        return NgramDrafter()
    files = open_draft(spec, target)
    n = files.args.num_hidden_layers
    ensure_layers(files.path, (0, n), head=True)
    runner = get_engine(engine).load_shard(files, 0, n)
    log.info("draft model %s: %d layers, %.0f MB", spec, n, runner.weight_bytes / 1e6)
    return ModelDrafter(spec, LocalPipeline([runner]), files.args.max_position_embeddings)

"""SentencePiece vocabularies stored in GGUF (`tokenizer.ggml.model = llama`) as `tokenizers` objects.

llama.cpp's SPM tokenizer, which Llama 1/2, Mistral v0.1-0.3, Gemma 1-3 and Phi-3 GGUFs run on, splits
the text into characters and repeatedly merges the adjacent pair whose concatenation is the vocabulary
piece with the highest score (leftmost first on ties); a character left without a piece falls back to
its UTF-8 bytes as `<0xNN>` pieces. That is the BPE model of `tokenizers` with merges ranked by the
score of the piece they make, and byte fallback: the same construction transformers uses for these
files. When the file carries `tokenizer.ggml.merges` those are used as they are.

Spaces become U+2581 and, with `add_space_prefix`, one is put before the text and again after every
special or user-defined token (llama.cpp's rule, also the original SentencePiece one); decoding undoes
both. Control and unknown pieces are special tokens; user-defined pieces are matched whole before the
merges, as both SentencePiece and llama.cpp do; unused and byte pieces are never formed by merging.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from .gguf_vocab import GGUFVocab, TokenType

SPACE = "\u2581"  # SentencePiece's visible space
_MERGEABLE = frozenset({TokenType.NORMAL, TokenType.UNDEFINED})


def merges_from_scores(tokens: list[str], types: list[TokenType], scores: list[float]) -> list[tuple[str, str]]:
    """Every (left, right) split of a normal piece into two pieces, best piece score first."""
    ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        ids.setdefault(t, i)  # a piece listed twice: its first id (and score) counts
    ranked: list[tuple[float, int, int, str, str]] = []
    for i, piece in enumerate(tokens):
        if types[i] not in _MERGEABLE or ids[piece] != i:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[i], i, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def sentencepiece_tokenizer(vocab: GGUFVocab, *, add_space_prefix: bool) -> Tokenizer:
    """A `tokenizers.Tokenizer` that tokenizes like llama.cpp's SPM tokenizer on this vocabulary."""
    tokens, types = vocab.tokens, vocab.types
    ids = {t: i for i, t in reversed(list(enumerate(tokens)))}  # a piece listed twice: its first id
    if vocab.merges is not None:
        merges = [(a, b) for a, b in vocab.merges if a in ids and b in ids and a + b in ids]
    else:
        assert vocab.scores is not None  # read_vocab(need_scores=True) saw to it
        merges = merges_from_scores(tokens, types, vocab.scores)
    unk_id = vocab.special_ids.get("unknown")
    if unk_id is None:
        unk_id = next((i for i, ty in enumerate(types) if ty == TokenType.UNKNOWN), None)
    # looked up by text, as llama.cpp does: old files without token types still fall back to bytes
    byte_fallback = any(f"<0x{b:02X}>" in ids for b in range(256))
    tok = Tokenizer(
        models.BPE(
            ids,
            merges,
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
    )
    replace = normalizers.Replace(" ", SPACE)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), replace]) if add_space_prefix else replace
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, types)
            if ty in (TokenType.CONTROL, TokenType.UNKNOWN)
        ]
    )
    # llama.cpp's converter stores user-defined pieces as raw text ("  " for Gemma's runs of spaces), so
    # they match the text as it is; one still spelled with U+2581 matches the text after escaping.
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=SPACE in t)
            for t, ty in zip(tokens, types)
            if ty == TokenType.USER_DEFINED
        ]
    )
    return tok

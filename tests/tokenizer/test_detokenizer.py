"""Incremental detokenization never breaks UTF-8 and never repeats or drops text."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exo_actor.tokenizer import IncrementalDetokenizer, TextTokenizer
from tests.tiny import SPECIALS, tiny_tokenizer

TOK = TextTokenizer(tiny_tokenizer(), "<|im_start|>", "<|im_end|>", frozenset({2}), None)


def _stream(ids: list[int]) -> list[str]:
    d = IncrementalDetokenizer(TOK)
    parts = [d.add(i) for i in ids]
    return [*parts, d.flush()]


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=60))
def test_stream_of_any_text_reassembles_exactly(text):
    assume(not any(s in text for s in SPECIALS))  # special tokens are not shown as text
    assume(not text.endswith("\ufffd"))  # a trailing U+FFFD reads as a cut-off character
    ids = TOK.encode(text, add_bos=False)
    parts = _stream(ids)
    assert "".join(parts) == TOK.decode(ids) == text
    if "\ufffd" not in text:  # no replacement character unless the text really has one
        assert not any("\ufffd" in p for p in parts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=3, max_value=TOK.vocab_size - 1), max_size=40))
def test_stream_of_any_token_ids_equals_the_full_decode(ids):
    """Arbitrary byte tokens (maybe invalid UTF-8) concatenate to the full decode, less a cut-off end."""
    parts = _stream(ids)
    assert "".join(parts) == TOK.decode(ids).rstrip("\ufffd")
    assert not parts[-1].endswith("\ufffd")


def _byte_token(b: int) -> int | None:
    """The byte-level BPE token of one raw byte (GPT-2's printable remapping of bytes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if b in printable:
        return TOK.token_id(chr(b))
    return TOK.token_id(chr(256 + sorted(set(range(256)) - set(printable)).index(b)))


def test_multibyte_character_split_across_tokens_is_held_back():
    byte_tokens = [_byte_token(b) for b in "日".encode()]
    assert None not in byte_tokens
    d = IncrementalDetokenizer(TOK)
    assert [d.add(i) for i in byte_tokens] == ["", "", "日"]

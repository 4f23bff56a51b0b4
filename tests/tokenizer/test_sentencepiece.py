"""SentencePiece vocabularies from GGUF give the ids of SentencePiece itself, llama.cpp's rules and
transformers, and decode back exactly."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exo_actor.errors import UnsupportedModelError, WeightsError
from exo_actor.tokenizer import IncrementalDetokenizer, TextTokenizer, chat_prompt_ids, tokenizer_from_gguf
from exo_actor.tokenizer.gguf_vocab import TokenType, read_vocab
from exo_actor.tokenizer.sentencepiece import merges_from_scores
from tests.conftest import require

require("sentencepiece", "test")  # the reference SentencePiece models are trained by the test
AutoTokenizer = require("transformers").AutoTokenizer

from .spm_gguf import (  # noqa: E402 - needs sentencepiece, checked just above
    GEMMA,
    LLAMA,
    TEXTS,
    Flavour,
    processor,
    tokenizer_fields,
    train,
    vocab_arrays,
    write_gguf,
)

FLAVOURS = {"llama": LLAMA, "gemma": GEMMA}


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def spm_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    flavour = FLAVOURS[request.param]
    model = train(flavour)
    folder = tmp_path_factory.mktemp(request.param)
    path = write_gguf(folder / "vocab.gguf", model, flavour)
    return {
        "flavour": flavour,
        "model": model,
        "sp": processor(model),
        "path": path,
        "ours": tokenizer_from_gguf(tokenizer_fields(path)),
        "hf": AutoTokenizer.from_pretrained(str(folder), gguf_file=path.name),
    }


def _specials_pattern(flavour: Flavour) -> re.Pattern[str]:
    words = [*flavour.control, *(u.replace("\u2581", " ") for u in flavour.user_defined)]
    return re.compile("(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")")


def llama_cpp_reference(case: dict[str, Any], text: str) -> list[int]:
    """llama.cpp's rule, built from SentencePiece itself: control and user-defined tokens are cut out of
    the text first, and each stretch between them is encoded on its own (so it gets the space prefix)."""
    sp = case["sp"]
    ids: list[int] = []
    for part in _specials_pattern(case["flavour"]).split(text):
        if not part:
            continue
        special = sp.piece_to_id(part.replace(" ", "\u2581") if part.isspace() else part)
        ids.extend([special] if _specials_pattern(case["flavour"]).fullmatch(part) else sp.encode(part))
    return ids


def test_vocabulary_and_special_tokens(spm_case: dict[str, Any]) -> None:
    ours: TextTokenizer = spm_case["ours"]
    sp = spm_case["sp"]
    assert ours.vocab_size == sp.get_piece_size()
    assert ours.token_id(ours.bos_token or "") == sp.bos_id()
    assert ours.token_id(ours.eos_token or "") == sp.eos_id()
    assert ours.token_id(ours.unk_token or "") == sp.unk_id()
    assert ours.add_bos and not ours.add_eos
    assert ours.chat_template == spm_case["flavour"].chat_template
    assert sp.eos_id() in ours.stop_ids
    if spm_case["flavour"] is GEMMA:
        assert ours.pad_token == "<pad>"
        assert ours.stop_ids == {sp.eos_id(), sp.piece_to_id("<end_of_turn>")}


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_sentencepiece_and_decode_back(spm_case: dict[str, Any], text: str) -> None:
    ours: TextTokenizer = spm_case["ours"]
    ids = ours.encode(text, add_bos=False)
    assert ids == llama_cpp_reference(spm_case, text)
    if "<tag>" not in text:
        assert ids == spm_case["sp"].encode(text)
        assert ours.decode(ids) == text
    assert ours.encode(text) == [spm_case["sp"].bos_id(), *ids]  # BOS as the GGUF asks


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers_gguf_tokenizer(spm_case: dict[str, Any], text: str) -> None:
    """transformers' GGUF conversion agrees, except where its Llama tokenizer knowingly parts from
    SentencePiece and llama.cpp: a text that starts with a space loses that space (Metaspace 'first'
    adds no prefix before an existing one), and no prefix follows a user-defined token."""
    ids = spm_case["ours"].encode(text, add_bos=False)
    if spm_case["flavour"] is LLAMA and (text[:1] == " " or "<tag>" in text):
        # where transformers parts from them, we follow llama.cpp (and SentencePiece, without tags)
        assert ids == llama_cpp_reference(spm_case, text) != spm_case["hf"].encode(text, add_special_tokens=False)
        return
    assert ids == spm_case["hf"].encode(text, add_special_tokens=False)
    assert spm_case["ours"].decode(ids) == spm_case["hf"].decode(ids, skip_special_tokens=True)


def test_bytes_outside_the_vocabulary_fall_back_to_byte_pieces(spm_case: dict[str, Any]) -> None:
    ours: TextTokenizer = spm_case["ours"]
    ids = ours.encode("🙂", add_bos=False)
    pieces = [ours.tokenizer.id_to_token(i) for i in ids]
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert ours.decode(ids) == "🙂"


def test_llama_space_prefix_after_special_tokens() -> None:
    """With add_space_prefix, text after a control token is prefixed again (llama.cpp; Meta's own
    Llama 2 chat format encodes "[INST]" after <s> as "\u2581[INST]")."""
    model = train(LLAMA)
    sp = processor(model)
    tokens, scores, types = vocab_arrays(model, LLAMA.user_defined)
    tokens = [*tokens, "<turn>"]
    ours = tokenizer_from_gguf(
        {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [*scores, 0.0],
            "tokenizer.ggml.token_type": [*types, TokenType.CONTROL],
            "tokenizer.ggml.bos_token_id": sp.bos_id(),
        }
    )
    turn = len(tokens) - 1
    assert ours.encode("<s>Hello<turn>Paris", add_bos=False) == [
        sp.bos_id(),
        *sp.encode("Hello"),
        turn,
        *sp.encode("Paris"),
    ]
    assert sp.id_to_piece(sp.encode("Paris")[0]).startswith("\u2581")  # the prefix really is there


def test_gemma_chat_prompt_matches_transformers(tmp_path: Path) -> None:
    model = train(GEMMA)
    path = write_gguf(tmp_path / "gemma.gguf", model, GEMMA)
    ours = tokenizer_from_gguf(tokenizer_fields(path))
    hf = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    messages = [
        {"role": "user", "content": "  Grüße, Paris! 🙂"},
        {"role": "assistant", "content": "Съешь ещё\n\n булок"},
        {"role": "user", "content": "def f():    return 1"},
    ]
    ids = chat_prompt_ids(ours, messages)
    expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert ids == (expected if isinstance(expected, list) else expected["input_ids"])
    assert ids[0] == ours.token_id("<bos>") and ids.count(ours.token_id("<bos>")) == 1


def test_incremental_detokenizer_streams_the_same_text(spm_case: dict[str, Any]) -> None:
    ours: TextTokenizer = spm_case["ours"]
    text = "  Straße 🙂 über\n\nКäse 日本語 end"
    ids = ours.encode(text, add_bos=False)
    detok = IncrementalDetokenizer(ours)
    streamed = "".join(detok.add(i) for i in ids) + detok.flush()
    assert streamed == ours.decode(ids)


def test_merges_from_the_file_are_used_as_given(tmp_path: Path) -> None:
    """A GGUF that carries tokenizer.ggml.merges (and no scores) tokenizes by those merges."""
    model = train(LLAMA)
    sp = processor(model)
    tokens, scores, types = vocab_arrays(model, LLAMA.user_defined)
    merges = merges_from_scores(tokens, [TokenType(t) for t in types], scores)
    fields = tokenizer_fields(write_gguf(tmp_path / "v.gguf", model, LLAMA, scores=None))
    with pytest.raises(WeightsError, match="neither tokenizer.ggml.scores nor tokenizer.ggml.merges"):
        tokenizer_from_gguf(fields)
    ours = tokenizer_from_gguf({**fields, "tokenizer.ggml.merges": [f"{a} {b}" for a, b in merges]})
    for text in TEXTS:
        assert ours.encode(text, add_bos=False) == llama_cpp_reference({"sp": sp, "flavour": LLAMA}, text), text
    backwards = tokenizer_from_gguf({**fields, "tokenizer.ggml.merges": [f"{a} {b}" for a, b in merges[::-1]]})
    assert backwards.encode("Paris is the capital", add_bos=False) != sp.encode("Paris is the capital")


def test_add_eos_and_space_prefix_flags(tmp_path: Path) -> None:
    model = train(LLAMA)
    sp = processor(model)
    fields = tokenizer_fields(write_gguf(tmp_path / "v.gguf", model, LLAMA))
    with_eos = tokenizer_from_gguf({**fields, "tokenizer.ggml.add_eos_token": True})
    assert with_eos.encode("Paris") == [sp.bos_id(), *sp.encode("Paris"), sp.eos_id()]
    assert with_eos.encode("Paris", add_bos=False) == sp.encode("Paris")  # explicit: the caller's choice
    no_prefix = tokenizer_from_gguf({**fields, "tokenizer.ggml.add_space_prefix": False})
    assert no_prefix.encode("Paris", add_bos=False) != sp.encode("Paris")
    assert no_prefix.decode(no_prefix.encode(" Paris", add_bos=False)) == " Paris"
    legacy = {k: v for k, v in fields.items() if k != "tokenizer.ggml.add_bos_token"}
    assert tokenizer_from_gguf(legacy).add_bos  # llama.cpp's default for SentencePiece vocabularies


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scores": "short"}, r"tokenizer.ggml.scores has \d+ entries but tokenizer.ggml.tokens has \d+"),
        ({"types": "short"}, r"tokenizer.ggml.token_type has \d+ entries"),
        ({"types": "bad"}, r"token_type holds 9, not a token type 0-6"),
        ({"tokens": None}, "no tokenizer.ggml.tokens"),
        ({"scores": None}, "neither tokenizer.ggml.scores nor tokenizer.ggml.merges"),
    ],
)
def test_inconsistent_token_arrays_get_one_clear_error(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    model = train(LLAMA)
    tokens, scores, types = vocab_arrays(model, LLAMA.user_defined)
    full = {"tokens": tokens, "scores": scores, "types": types}
    overrides = {}
    for name, how in change.items():
        overrides[name] = {"short": full[name][:-1], "bad": [*types[:-1], 9], None: None}[how]
    fields = tokenizer_fields(write_gguf(tmp_path / "bad.gguf", model, LLAMA, **overrides))
    with pytest.raises(WeightsError, match=message) as info:
        tokenizer_from_gguf(fields)
    assert "\n" not in str(info.value)


def test_unknown_tokenizer_model_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="'t5' is not supported"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]})


def test_out_of_range_special_id_is_ignored_like_llama_cpp() -> None:
    vocab = read_vocab({"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.eos_token_id": 7})
    assert vocab.special_text("eos") is None


def test_structured_output_sees_the_text_bytes_of_every_piece(spm_case: dict[str, Any]) -> None:
    """The grammar engine (llguidance) reads the tokenizer as serialized: U+2581 is a space, `<0xNN>`
    is one byte, a user-defined piece its raw text."""
    from exo_actor.sampling.grammar import _llg_tokenizer

    ours: TextTokenizer = spm_case["ours"]
    llt = _llg_tokenizer(ours)
    sp = spm_case["sp"]
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.id_to_piece(i) == "<0xFF>":
            continue  # llguidance marks special tokens with 0xFF, a byte no UTF-8 text holds
        piece = ours.tokenizer.id_to_token(i)
        expected = bytes([int(piece[3:5], 16)]) if sp.is_byte(i) else piece.replace("\u2581", " ").encode()
        assert llt.decode_bytes([i]) == expected, piece


def test_file_without_token_types_still_falls_back_to_bytes(tmp_path: Path) -> None:
    """Old GGUFs carry no token types: byte pieces are found by their `<0xNN>` text, as llama.cpp does."""
    model = train(LLAMA)
    fields = tokenizer_fields(write_gguf(tmp_path / "v.gguf", model, LLAMA, types=None))
    ours = tokenizer_from_gguf(fields)
    text = "Grüße 🙂 日本語\n"
    assert ours.encode(text, add_bos=False) == processor(model).encode(text)
    assert ours.decode(ours.encode(text, add_bos=False)) == text


def test_a_model_gguf_with_a_sentencepiece_vocabulary_opens(tmp_path: Path) -> None:
    """The loader's entry point (open_model) takes such a file: its tokenizer, and a vocabulary-sized
    embedding."""
    from exo_actor.weights import open_model
    from tests.tiny import TinySpec

    model = train(LLAMA)
    sp = processor(model)
    spec = TinySpec(layers=2)
    files = open_model(write_gguf(tmp_path / "tiny-spm.gguf", model, LLAMA, spec))
    assert files.args.vocab_size == sp.get_piece_size()
    weights = files.shard_weights(0, spec.layers)
    table = weights.embed if weights.embed is not None else weights.lm_head_t.T  # tied: the head serves lookups
    assert table.shape == (sp.get_piece_size(), spec.hidden_size)
    text = "  Grüße aus Paris 🙂\n"
    assert files.tokenizer.encode(text) == [sp.bos_id(), *sp.encode(text)]
    assert files.tokenizer.decode(files.tokenizer.encode(text)) == text


def _fields(model: bytes, flavour: Flavour) -> dict[str, Any]:
    tokens, scores, types = vocab_arrays(model, flavour.user_defined)
    sp = processor(model)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.add_space_prefix": flavour.add_dummy_prefix,
    }


_STREAM_MODELS = {name: train(f) for name, f in FLAVOURS.items()}
_STREAM_TOKS = {name: tokenizer_from_gguf(_fields(m, FLAVOURS[name])) for name, m in _STREAM_MODELS.items()}


def _stream(tok: TextTokenizer, ids: list[int]) -> list[str]:
    d = IncrementalDetokenizer(tok)
    return [*(d.add(i) for i in ids), d.flush()]


@pytest.mark.parametrize("name", sorted(FLAVOURS))
@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=40))
def test_any_text_matches_sentencepiece_and_streams_back(name: str, text: str) -> None:
    assume("<tag>" not in text and not text.endswith("\ufffd"))
    assume("\u2581" not in text)  # SentencePiece's space mark decodes as a space, in SentencePiece too
    tok = _STREAM_TOKS[name]
    ids = tok.encode(text, add_bos=False)
    assert ids == processor(_STREAM_MODELS[name]).encode(text)
    assert "".join(_stream(tok, ids)) == tok.decode(ids) == text


@pytest.mark.parametrize("name", sorted(FLAVOURS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_pieces_and_byte_spelled_characters_stream_to_the_full_decode(name: str, data: st.DataObject) -> None:
    """Pieces in any order, mixed with characters spelled as byte pieces (what a model emits for text
    outside the vocabulary), stream to the full decode; a character cut off at the end is held back."""
    tok = _STREAM_TOKS[name]
    sp = processor(_STREAM_MODELS[name])
    pieces = [i for i in range(sp.get_piece_size()) if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    chars = st.characters(codec="utf-8", exclude_characters="\ufffd")
    spelled = chars.map(lambda c: [sp.piece_to_id(f"<0x{b:02X}>") for b in c.encode()])
    chunks = data.draw(st.lists(st.one_of(st.sampled_from(pieces).map(lambda i: [i]), spelled), max_size=20))
    ids = [i for chunk in chunks for i in chunk]
    cut = data.draw(st.integers(min_value=0, max_value=len(ids)))  # maybe mid-character
    whole = max(n for n in itertools.accumulate((len(c) for c in chunks), initial=0) if n <= cut)
    assert "".join(_stream(tok, ids[:cut])) == tok.decode(ids[:whole])  # the cut-off character held back
    assert "".join(_stream(tok, ids)) == tok.decode(ids)
    assert "\ufffd" not in tok.decode(ids)

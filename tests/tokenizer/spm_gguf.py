"""Tiny SentencePiece models trained in the test, written into GGUF the way llama.cpp's converter does."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import sentencepiece as spm

from exo_actor.weights.gguf_source import field, open_reader
from tests.tiny import TinySpec, _permute, gguf_name, make_weights

# Multilingual on purpose: characters the tiny vocabulary keeps, and rarer ones (Chinese, Arabic, emoji)
# that only byte fallback can spell.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Grüße, Käse.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Le cœur a ses raisons que la raison ne connaît point. ¿Dónde está la biblioteca?",
    "def main():    return 42  # code with    runs of spaces and digits 1234567890",
    "日本語のテキストも少し。",
] * 30

TEXTS = [
    "Hello world",
    "  two leading spaces, and   three inside",
    " one leading space",
    "trailing spaces   ",
    "Straße über Käse — Grüße! ¿Dónde?",
    "Съешь ещё булок, да выпей чаю.",
    "我能吞下玻璃而不伤身体。日本語 العربية",
    "emoji 🙂👍🏽 and a zero-width\u200bjoiner 👨\u200d👩\u200d👧",
    "line one\nline two\n\n\ttabbed\r\nwindows",
    "\n\nstarts with newlines",
    "def f(x):\n    return x  # 1234567890",
    "a <tag> b<tag>c",
    "",
    " ",
]

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAMA_TEMPLATE = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"


@dataclass(frozen=True)
class Flavour:
    """How a model family's SentencePiece model is set up, and what its GGUF says."""

    architecture: str
    add_dummy_prefix: bool
    special_ids: dict[str, int]  # sentencepiece trainer's pad/unk/bos/eos ids
    special_pieces: dict[str, str]
    control: tuple[str, ...]
    user_defined: tuple[str, ...]
    chat_template: str


LLAMA = Flavour(
    architecture="llama",
    add_dummy_prefix=True,
    special_ids={"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1},
    special_pieces={"unk_piece": "<unk>", "bos_piece": "<s>", "eos_piece": "</s>"},
    control=(),
    user_defined=("<tag>",),
    chat_template=LLAMA_TEMPLATE,
)
# Gemma: pad/eos/bos/unk at 0-3, no dummy prefix, turn markers as control pieces and runs of spaces as
# user-defined pieces (which llama.cpp's converter stores as real spaces).
GEMMA = Flavour(
    architecture="gemma3",
    add_dummy_prefix=False,
    special_ids={"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3},
    special_pieces={"pad_piece": "<pad>", "eos_piece": "<eos>", "bos_piece": "<bos>", "unk_piece": "<unk>"},
    control=("<start_of_turn>", "<end_of_turn>"),
    user_defined=("<tag>", "\u2581\u2581", "\u2581\u2581\u2581\u2581"),
    chat_template=GEMMA_TEMPLATE,
)


def train(flavour: Flavour, vocab_size: int = 420) -> bytes:
    """A BPE SentencePiece model with byte fallback, trained on CORPUS; its serialized ModelProto."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.98,  # the rarest characters are left to byte fallback
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=flavour.add_dummy_prefix,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        control_symbols=list(flavour.control),
        user_defined_symbols=list(flavour.user_defined),
        minloglevel=2,
        **flavour.special_ids,
        **flavour.special_pieces,
    )
    return out.getvalue()


def processor(model: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=model)


def vocab_arrays(model: bytes, user_defined: tuple[str, ...]) -> tuple[list[str], list[float], list[int]]:
    """tokens, scores and token types as llama.cpp's converter writes them (`_create_vocab_sentencepiece`
    plus the user-defined tokens a repo's tokenizer_config lists: their U+2581 turned back into spaces)."""
    sp = processor(model)
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        kind = 1
        if sp.is_unknown(i):
            kind = 2
        elif sp.is_control(i):
            kind = 3
        elif piece in user_defined:
            kind = 4
        elif sp.is_unused(i):
            kind = 5
        elif sp.is_byte(i):
            kind = 6
        tokens.append(piece.replace("\u2581", " ") if kind == 4 else piece)
        scores.append(sp.get_score(i))
        types.append(kind)
    return tokens, scores, types


def write_gguf(path: Path, model: bytes, flavour: Flavour, spec: TinySpec | None = None, **overrides: Any) -> Path:
    """A vocabulary-only GGUF, or with `spec` a whole tiny random-weight model (float32 tensors, Llama
    q/k rows permuted as llama.cpp's converter does); `overrides` replace tokens/scores/types (None
    leaves one out)."""
    tokens, scores, types = vocab_arrays(model, flavour.user_defined)
    arrays: dict[str, Any] = {"tokens": tokens, "scores": scores, "types": types, **overrides}
    sp = processor(model)
    w = gguf.GGUFWriter(str(path), flavour.architecture)
    shape = spec or TinySpec(hidden_size=64, layers=1, heads=4, kv_heads=4)
    # the hyper-parameters transformers' GGUF reader wants before it builds a tokenizer, and a model needs
    sizes = {
        "context_length": shape.context,
        "embedding_length": shape.hidden_size,
        "block_count": shape.layers,
        "feed_forward_length": shape.intermediate,
        "attention.head_count": shape.heads,
        "attention.head_count_kv": shape.kv_heads,
    }
    for key, size in sizes.items():
        w.add_uint32(f"{flavour.architecture}.{key}", size)
    w.add_float32(f"{flavour.architecture}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{flavour.architecture}.rope.freq_base", shape.rope_theta)
    if spec is not None:
        for name, t in make_weights(spec, len(tokens)).items():
            if ".q_proj." in name or ".k_proj." in name:
                t = _permute(t, spec.heads if ".q_proj." in name else spec.kv_heads)
            w.add_tensor(gguf_name(name), t)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    if arrays["tokens"] is not None:
        w.add_token_list(arrays["tokens"])
    if arrays["scores"] is not None:
        w.add_token_scores(arrays["scores"])
    if arrays["types"] is not None:
        w.add_token_types(arrays["types"])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    if sp.pad_id() >= 0:
        w.add_pad_token_id(sp.pad_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(flavour.add_dummy_prefix)
    w.add_chat_template(flavour.chat_template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tokenizer_fields(path: Path) -> dict[str, Any]:
    """The `tokenizer.*` metadata of a GGUF, read as exo_actor.weights does."""
    reader = open_reader(path)
    return {k: field(reader, k) for k in reader.fields if k.startswith("tokenizer.")}

"""TextTokenizer: a `tokenizers.Tokenizer` plus the model's special tokens and chat template, from a GGUF's
metadata or a Hugging Face folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ..errors import UnsupportedModelError, WeightsError
from .gguf_vocab import GGUFVocab, TokenType, read_vocab
from .sentencepiece import sentencepiece_tokenizer

# Texts of control tokens that end an assistant turn in common chat formats. GGUF files often name
# only one EOS id (SmolLM2's even names <|im_start|>), so, like llama.cpp, every control token with
# one of these texts also stops generation.
END_OF_TURN_TEXTS = frozenset(
    {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>", "</s>"}
)

# Pre-tokenizer split patterns by GGUF `tokenizer.ggml.pre` name (from each model family's
# published tokenizer.json).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class TextTokenizer:
    """Encodes and decodes text; knows BOS, the ids that end generation, and the chat template."""

    tokenizer: Tokenizer
    bos_token: str | None
    eos_token: str | None
    stop_ids: frozenset[int]
    chat_template: str | None
    add_bos: bool = False  # prepend BOS to raw (non-chat) prompts
    add_eos: bool = False  # append EOS to raw prompts when BOS is left to the model (add_bos=None)
    unk_token: str | None = None
    pad_token: str | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; special-token texts in it map to their ids. add_bos=None: BOS (and EOS)
        as the model asks; an explicit add_bos is the caller's choice and then no EOS is added."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos_id = self.token_id(self.bos_token) if self.bos_token else None
        if (self.add_bos if add_bos is None else add_bos) and bos_id is not None:
            if not ids or ids[0] != bos_id:
                ids = [bos_id, *ids]
        eos_id = self.token_id(self.eos_token) if self.eos_token else None
        if add_bos is None and self.add_eos and eos_id is not None:
            ids = [*ids, eos_id]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_id(self, text: str) -> int | None:
        return self.tokenizer.token_to_id(text)


def _stop_ids(tok: Tokenizer, explicit: list[int]) -> frozenset[int]:
    ids = set(explicit)
    ids |= {i for i, t in tok.get_added_tokens_decoder().items() if t.special and t.content in END_OF_TURN_TEXTS}
    return frozenset(ids)


def tokenizer_from_gguf(fields: dict[str, Any]) -> TextTokenizer:
    """Build the tokenizer a GGUF's `tokenizer.ggml.*` metadata describes: byte-level BPE (`gpt2`)
    or SentencePiece (`llama`: Llama 1/2, Mistral, Gemma 1-3, Phi-3)."""
    kind = fields.get("tokenizer.ggml.model")
    if kind == "gpt2":
        vocab = read_vocab(fields)
        tok = _byte_level_bpe(vocab, fields.get("tokenizer.ggml.pre", "default"))
        add_bos_default = False
    elif kind == "llama":
        vocab = read_vocab(fields, need_scores=True)
        tok = sentencepiece_tokenizer(vocab, add_space_prefix=bool(fields.get("tokenizer.ggml.add_space_prefix", True)))
        add_bos_default = True  # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise
    else:
        raise UnsupportedModelError(
            f"GGUF tokenizer type {kind!r} is not supported (byte-level BPE 'gpt2' and SentencePiece 'llama' are); "
            "use the model's Hugging Face folder with tokenizer.json instead"
        )
    ends = [vocab.special_ids.get(k) for k in ("eos", "eot", "eom")]
    return TextTokenizer(
        tokenizer=tok,
        bos_token=vocab.special_text("bos"),
        eos_token=vocab.special_text("eos"),
        stop_ids=_stop_ids(tok, [i for i in ends if i is not None]),
        chat_template=fields.get("tokenizer.chat_template"),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", add_bos_default)),
        add_eos=bool(fields.get("tokenizer.ggml.add_eos_token", False)),
        unk_token=vocab.special_text("unknown"),
        pad_token=vocab.special_text("padding"),
    )


def _byte_level_bpe(vocab: GGUFVocab, pre: str) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) with the pre-tokenizer llama.cpp's `pre` name stands for."""
    tokens, types = vocab.tokens, vocab.types
    ids = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(ids, vocab.merges or [], ignore_merges=pre == "llama-bpe"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in ("llama-bpe", "qwen2"))
    if pre == "llama-bpe":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level]
        )
    elif pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level]
        )
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # control tokens and user-defined ones (llama.cpp's token types): matched whole, before BPE.
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TokenType.CONTROL]
    )
    tok.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == TokenType.USER_DEFINED]
    )
    return tok


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def _token_text(v: Any) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def tokenizer_from_hf_folder(folder: Path) -> TextTokenizer:
    """Load tokenizer.json plus tokenizer_config.json / generation_config.json of an HF folder."""
    path = folder / "tokenizer.json"
    if not path.exists():
        raise WeightsError(f"{folder} has no tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the Rust binding raises a plain Exception
        raise WeightsError(f"{path} could not be loaded: {exc}") from None
    cfg = _read_json(folder / "tokenizer_config.json")
    gen = _read_json(folder / "generation_config.json")
    model_cfg = _read_json(folder / "config.json")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    eos: list[Any] = []
    for source in (gen.get("eos_token_id"), model_cfg.get("eos_token_id")):
        eos.extend(source if isinstance(source, list) else [source])
    eos_text = _token_text(cfg.get("eos_token"))
    if eos_text is not None:
        eos.append(tok.token_to_id(eos_text))
    return TextTokenizer(
        tokenizer=tok,
        bos_token=_token_text(cfg.get("bos_token")),
        eos_token=eos_text,
        stop_ids=_stop_ids(tok, [i for i in eos if isinstance(i, int)]),
        chat_template=template,
        add_bos=bool(cfg.get("add_bos_token", False)),
    )

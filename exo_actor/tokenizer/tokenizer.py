"""TextTokenizer: a `tokenizers.Tokenizer` plus the model's special tokens and chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ..errors import UnsupportedModelError, WeightsError

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

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; special-token texts in it map to their ids."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos_id = self.token_id(self.bos_token) if self.bos_token else None
        if (self.add_bos if add_bos is None else add_bos) and bos_id is not None:
            if not ids or ids[0] != bos_id:
                ids = [bos_id, *ids]
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
    """Build a byte-level BPE tokenizer from GGUF `tokenizer.ggml.*` metadata."""
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(
            f"GGUF tokenizer type {kind!r} is not supported (byte-level BPE 'gpt2' is); "
            "use the model's Hugging Face folder with tokenizer.json instead"
        )
    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    types: list[int] = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges") or []]
    pre = fields.get("tokenizer.ggml.pre", "default")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=pre == "llama-bpe"))
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
    # 3 = control, 4 = user-defined (llama.cpp's token types): matched whole, before BPE.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])

    def tok_text(key: str) -> str | None:
        i = fields.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    ends = [fields.get("tokenizer.ggml.eos_token_id"), fields.get("tokenizer.ggml.eot_token_id")]
    return TextTokenizer(
        tokenizer=tok,
        bos_token=tok_text("tokenizer.ggml.bos_token_id"),
        eos_token=tok_text("tokenizer.ggml.eos_token_id"),
        stop_ids=_stop_ids(tok, [i for i in ends if isinstance(i, int)]),
        chat_template=fields.get("tokenizer.chat_template"),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
    )


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

"""Tokenizers (Hugging Face `tokenizers`), chat templates (jinja2), incremental detokenization."""

from .chat import chat_prompt_ids, render_chat
from .detokenizer import IncrementalDetokenizer
from .tokenizer import TextTokenizer, tokenizer_from_gguf, tokenizer_from_hf_folder

__all__ = [
    "IncrementalDetokenizer",
    "TextTokenizer",
    "chat_prompt_ids",
    "render_chat",
    "tokenizer_from_gguf",
    "tokenizer_from_hf_folder",
]

"""Weight readers: GGUF files and Hugging Face safetensors folders, one shard's tensors at a time."""

from .model_files import ModelFiles, open_model

__all__ = ["ModelFiles", "open_model"]

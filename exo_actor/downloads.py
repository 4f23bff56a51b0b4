"""Model downloads from the Hugging Face Hub: only the files a shard needs, resumable, verified.

Goes through `huggingface_hub` (so HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply). Files land in a
model folder (default $EXO_HOME/models/NAME). Weights files are fetched by Range requests into
`.exo-partial/NAME.part`, so a dropped connection or a killed process resumes where it stopped, and
a file takes its final name only once complete and checked against the Hub's SHA-256.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import ExoError

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
CONFIG = "config.json"
OPTIONAL = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja")


class DownloadError(ExoError):
    """A download that could not complete; the message says what to do."""


def files_for_layers(weight_map: Mapping[str, str], n_layers: int, start: int, end: int) -> list[str]:
    """The weights files holding layers [start, end), plus the embedding on the first shard and the
    final norm and head on the last (the embedding too when the head is tied to it)."""
    if not 0 <= start < end <= n_layers:
        raise DownloadError(f"layers {start}-{end - 1} are outside the model's 0-{n_layers - 1}")
    wanted = {f"model.layers.{i}." for i in range(start, end)}
    files = set()
    for name, file in weight_map.items():
        if name.startswith("model.layers."):
            prefix = ".".join(name.split(".")[:3]) + "."
            if prefix in wanted:
                files.add(file)
        elif name == "model.embed_tokens.weight" and (
            start == 0 or (end == n_layers and "lm_head.weight" not in weight_map)
        ):
            files.add(file)
        elif name in ("model.norm.weight", "lm_head.weight") and end == n_layers:
            files.add(file)
    return sorted(files)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _explain(exc: BaseException, repo: str, filename: str, dest: Path) -> DownloadError:
    from huggingface_hub import errors as hf

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf.LocalEntryNotFoundError) or isinstance(exc, ConnectionError):
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        return DownloadError(
            f"cannot download {filename} of {repo} from {_endpoint()}{offline}: no network? Set HF_ENDPOINT to "
            "a mirror, or download the model on another machine and pass its folder"
        )
    if isinstance(exc, hf.GatedRepoError) or status in (401, 403):
        return DownloadError(
            f"{repo} needs authorization (HTTP {status or 401}): set HF_TOKEN to a Hugging Face token that "
            f"has accepted the model's license at {_endpoint()}/{repo}"
        )
    if isinstance(exc, hf.RepositoryNotFoundError) or (status == 404 and filename == CONFIG):
        return DownloadError(f"repository {repo} was not found on {_endpoint()} (HTTP 404): check the name")
    if isinstance(exc, hf.EntryNotFoundError) or status == 404:
        return DownloadError(f"{repo} has no file {filename} on {_endpoint()} (HTTP 404)")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DownloadError(
            f"the disk is full while downloading {filename} into {dest}: free some space and run the same "
            "command again (the partial file resumes; no incomplete file is ever used)"
        )
    return DownloadError(f"downloading {filename} of {repo} failed: {type(exc).__name__}: {exc}")


def _fetch(repo: str, filename: str, dest: Path, revision: str, optional: bool = False) -> Path | None:
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, local_dir=dest, endpoint=_endpoint()))
    except hf.LocalEntryNotFoundError as exc:  # (a subclass of EntryNotFoundError): the Hub was unreachable
        raise _explain(exc, repo, filename, dest) from None
    except (hf.EntryNotFoundError, hf.RemoteEntryNotFoundError):
        if optional:
            return None
        raise _explain(hf.EntryNotFoundError(filename), repo, filename, dest) from None
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        err = _explain(exc, repo, filename, dest)
        if optional and "HTTP 404" in str(err):
            return None
        raise err from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_weights(repo: str, filename: str, dest: Path, revision: str, attempts: int = 3) -> Path:
    """A weights file, resumable: bytes accumulate in `.exo-partial/NAME.part` (kept when the transfer
    or the process is interrupted, continued by a Range request next time), are checked against the
    Hub's SHA-256, and only then take the final name."""
    import httpx
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, filename, revision=revision, endpoint=_endpoint())
    try:
        meta = get_hf_file_metadata(url)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise _explain(exc, repo, filename, dest) from None
    expected, size = (meta.etag or "").strip('"'), meta.size
    final = dest / filename
    if final.exists() and final.stat().st_size == size and (len(expected) != 64 or _sha256(final) == expected):
        return final
    part = dest / ".exo-partial" / f"{filename}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        headers = build_hf_headers()
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with httpx.stream("GET", meta.location or url, headers=headers, follow_redirects=True, timeout=60) as r:
                if r.status_code not in (200, 206):
                    raise _explain(httpx.HTTPStatusError("", request=r.request, response=r), repo, filename, dest)
                with part.open("ab" if r.status_code == 206 else "wb") as f:
                    for chunk in r.iter_bytes():  # as it arrives: a cut transfer keeps what came
                        f.write(chunk)
            break
        except DownloadError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _explain(exc, repo, filename, dest) from None
            if attempt + 1 == attempts:
                raise _explain(exc, repo, filename, dest) from None
        except httpx.HTTPError as exc:  # a dropped connection: resume from what arrived
            log.warning("download of %s interrupted (%s); resuming", filename, exc)
            if attempt + 1 == attempts:
                raise _explain(exc, repo, filename, dest) from None
    got = _sha256(part)
    if len(expected) == 64 and got != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{filename} of {repo} is corrupt (SHA-256 {got[:12]}..., the Hub says {expected[:12]}...): "
            "it was deleted; run the download again"
        )
    part.replace(final)
    return final


def download(
    repo: str,
    dest: Path,
    layers: tuple[int, int] | None = None,
    revision: str = "main",
    on_file: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Download what layers [start, end) of `repo` need (all of it when layers is None) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    config_path = _fetch(repo, CONFIG, dest, revision)
    assert config_path is not None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        n_layers = int(config["num_hidden_layers"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{repo}: config.json has no usable num_hidden_layers ({exc})") from None
    for name in OPTIONAL:
        _fetch(repo, name, dest, revision, optional=True)
    index = _fetch(repo, INDEX, dest, revision, optional=True)
    if index is None:
        weights = [SINGLE]
    else:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise DownloadError(f"{repo}: {INDEX} is not a valid index ({exc})") from None
        start, end = layers or (0, n_layers)
        weights = files_for_layers(weight_map, n_layers, start, end)
    for i, name in enumerate(weights):
        if on_file is not None:
            on_file(name, i, len(weights))
        _fetch_weights(repo, name, dest, revision)
    log.info("%s: %d weights file(s) in %s", repo, len(weights), dest)
    return dest

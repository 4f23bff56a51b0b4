"""Model downloads from the Hugging Face Hub: only the files a shard needs, resumable, verified.

Goes through `huggingface_hub` (so HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply). Files land in a
model folder (default $EXO_HOME/models/NAME). Weights files are fetched by Range requests into
`.exo-partial/NAME.part`, so a dropped connection or a killed process resumes where it stopped, and
a file takes its final name only once complete and checked against the Hub's SHA-256.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ExoError
from ..weights.safetensors_source import text_model_names

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
CONFIG = "config.json"
SOURCE = ".exo-source.json"  # written once config, tokenizer and index are in: where the folder came from
OPTIONAL = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja")


class DownloadError(ExoError):
    """A download that could not complete; the message says what to do."""


class DownloadCancelled(DownloadError):
    """The caller no longer wants the files (a re-planned ring); what arrived is kept for later."""


def files_for_layers(
    weight_map: Mapping[str, str], n_layers: int, start: int, end: int, head: bool | None = None
) -> list[str]:
    """The weights files holding layers [start, end), plus the embedding on the first shard and the
    final norm and head on the last (the embedding too when the head is tied to it). head=True asks
    for the head whatever the range (a draft made of the model's first layers needs it)."""
    if not 0 <= start < end <= n_layers:
        raise DownloadError(f"layers {start}-{end - 1} are outside the model's 0-{n_layers - 1}")
    wanted = {f"model.layers.{i}." for i in range(start, end)}
    last = end == n_layers if head is None else head
    aliases = text_model_names(weight_map)  # a multimodal checkpoint's text model (Gemma 3 4B+)
    weight_map = {**weight_map, **{alias: weight_map[real] for alias, real in aliases.items()}}
    files = set()
    for name, file in weight_map.items():
        if name.startswith("model.layers."):
            prefix = ".".join(name.split(".")[:3]) + "."
            if prefix in wanted:
                files.add(file)
        elif name == "model.embed_tokens.weight" and (start == 0 or (last and "lm_head.weight" not in weight_map)):
            files.add(file)
        elif name in ("model.norm.weight", "lm_head.weight") and last:
            files.add(file)
    return sorted(files)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _explain(exc: BaseException, repo: str, filename: str, dest: Path) -> DownloadError:
    from huggingface_hub import errors as hf

    status = getattr(getattr(exc, "response", None), "status_code", None)
    unreachable = isinstance(exc, ConnectionError | hf.LocalEntryNotFoundError) or type(exc).__name__ in (
        "ConnectError",  # httpx (huggingface_hub >= 1.0)
        "ConnectTimeout",
        "ConnectionError",  # requests (huggingface_hub 0.x)
    )
    if unreachable:
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
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # small files; the weights have our own progress

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


def _sha256_of(path: Path) -> Any:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


class Progress:
    """How far a download has come: written by the downloading thread, read by anyone (the CLI's
    progress bar, /v1/cluster, the Hello a node sends its peers)."""

    def __init__(self, listener: Callable[[Progress], None] | None = None) -> None:
        self.listener = listener
        self.repo = ""
        self.layers: tuple[int, int] | None = None
        self.state = "idle"  # idle -> downloading -> done | failed
        self.error: str | None = None
        self.current: str | None = None
        self.files: dict[str, list[int]] = {}  # name -> [bytes on disk, size]
        self._lock = threading.Lock()
        self._began = 0.0
        self._transferred = 0  # bytes that came over the network in this run (for the speed)

    def begin(self, repo: str, layers: tuple[int, int] | None, sizes: Mapping[str, tuple[int, int]]) -> None:
        with self._lock:
            self.repo, self.layers, self.state, self.error = repo, layers, "downloading", None
            self.files = {name: [done, total] for name, (done, total) in sizes.items()}
            self._began, self._transferred = time.monotonic(), 0
        self._notify()

    def advance(self, name: str, n: int, transferred: bool = True) -> None:
        with self._lock:
            self.current = name
            self.files[name][0] += n
            if transferred:
                self._transferred += n
        self._notify()

    def reset_file(self, name: str) -> None:
        with self._lock:
            self.files[name][0] = 0
        self._notify()

    def end(self, error: str | None = None) -> None:
        with self._lock:
            self.state, self.error, self.current = ("failed" if error else "done"), error, None
        self._notify()

    @property
    def done_bytes(self) -> int:
        return sum(done for done, _ in self.files.values())

    @property
    def total_bytes(self) -> int:
        return sum(total for _, total in self.files.values())

    def speed(self) -> float:
        """Bytes per second over the network since the download began."""
        elapsed = time.monotonic() - self._began
        return self._transferred / elapsed if self._began and elapsed > 0 else 0.0

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            files = [{"name": k, "done_bytes": d, "total_bytes": t} for k, (d, t) in self.files.items()]
        done, total, speed = self.done_bytes, self.total_bytes, self.speed()
        return {
            "repo": self.repo,
            "layers": list(self.layers) if self.layers else None,
            "state": self.state,
            "error": self.error,
            "done_bytes": done,
            "total_bytes": total,
            "percent": round(100.0 * done / total, 1) if total else 100.0,
            "bytes_per_second": round(speed),
            "eta_seconds": round((total - done) / speed, 1) if speed > 0 and self.state == "downloading" else None,
            "current_file": self.current,
            "files": files,
        }

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener(self)


def _metadata(repo: str, filename: str, dest: Path, revision: str):  # type: ignore[no-untyped-def]
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision, endpoint=_endpoint())
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise _explain(ConnectionError("HF_HUB_OFFLINE"), repo, filename, dest)
    try:
        return url, get_hf_file_metadata(url)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise _explain(exc, repo, filename, dest) from None


def _fetch_weights(
    repo: str,
    filename: str,
    dest: Path,
    url: str,
    meta: Any,  # huggingface_hub's HfFileMetadata
    progress: Progress,
    cancelled: Callable[[], bool] | None = None,
    attempts: int = 3,
) -> Path:
    """A weights file, resumable: bytes accumulate in `.exo-partial/NAME.part` (kept when the transfer
    or the process is interrupted, continued by a Range request next time), are checked against the
    Hub's SHA-256, and only then take the final name."""
    import httpx
    from huggingface_hub.utils import build_hf_headers

    expected, size = (meta.etag or "").strip('"'), meta.size
    part = _partial(dest, filename)
    part.parent.mkdir(parents=True, exist_ok=True)
    digest: Any = None  # SHA-256 of the .part's bytes, kept up to date as they arrive
    for attempt in range(attempts):
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            progress.reset_file(filename)
            offset = 0
        if digest is None or offset == 0:
            digest = _sha256_of(part) if offset else hashlib.sha256()
        headers = build_hf_headers()
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with httpx.stream("GET", meta.location or url, headers=headers, follow_redirects=True, timeout=60) as r:
                if r.status_code not in (200, 206):
                    raise _explain(httpx.HTTPStatusError("", request=r.request, response=r), repo, filename, dest)
                if r.status_code == 200 and offset:  # the server ignored the Range: start over
                    progress.reset_file(filename)
                    digest = hashlib.sha256()
                with part.open("ab" if r.status_code == 206 else "wb") as f:
                    for chunk in r.iter_bytes():  # as it arrives: a cut transfer keeps what came
                        f.write(chunk)
                        digest.update(chunk)  # hashed while the network waits, not in a second pass
                        progress.advance(filename, len(chunk))
                        if cancelled is not None and cancelled():
                            raise DownloadCancelled(f"download of {filename} cancelled")
            break
        except DownloadError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC or attempt + 1 == attempts:
                raise _explain(exc, repo, filename, dest) from None
        except httpx.HTTPError as exc:  # a dropped connection: resume from what arrived
            log.warning("download of %s interrupted (%s); resuming", filename, exc)
            if attempt + 1 == attempts:
                raise _explain(exc, repo, filename, dest) from None
    got = digest.hexdigest()
    if len(expected) == 64 and got != expected:
        part.unlink(missing_ok=True)
        progress.reset_file(filename)
        raise DownloadError(
            f"{filename} of {repo} is corrupt (SHA-256 {got[:12]}..., the Hub says {expected[:12]}...): "
            "it was deleted; run the download again"
        )
    final = dest / filename
    part.replace(final)
    return final


def _partial(dest: Path, filename: str) -> Path:
    return dest / ".exo-partial" / f"{filename}.part"


def read_source(folder: Path) -> dict[str, str] | None:
    """The repository a folder was downloaded from (None: not made by `download`, or not finished)."""
    try:
        data = json.loads((folder / SOURCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("repo"), str) else None


def _fetch_metadata(repo: str, dest: Path, revision: str) -> None:
    """config.json, the tokenizer files and the safetensors index; then the source record that says
    the folder's metadata is complete (so later runs, even offline, need no network for it)."""
    _fetch(repo, CONFIG, dest, revision)
    for name in OPTIONAL:
        _fetch(repo, name, dest, revision, optional=True)
    index = _fetch(repo, INDEX, dest, revision, optional=True)
    (dest / SOURCE).write_text(json.dumps({"repo": repo, "revision": revision, "index": index is not None}))


def weights_needed(dest: Path, layers: tuple[int, int] | None, head: bool | None = None) -> list[str]:
    """The weights files layers [start, end) of a downloaded folder need (every file for None)."""
    try:
        config = json.loads((dest / CONFIG).read_text(encoding="utf-8"))
        n_layers = int(config["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{dest / CONFIG} has no usable num_hidden_layers ({exc})") from None
    if not (dest / INDEX).exists():
        return [SINGLE]
    try:
        weight_map = json.loads((dest / INDEX).read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{dest / INDEX} is not a valid index ({exc})") from None
    start, end = layers or (0, n_layers)
    return files_for_layers(weight_map, n_layers, start, end, head=head)


def download(
    repo: str,
    dest: Path,
    layers: tuple[int, int] | None = None,
    revision: str = "main",
    progress: Progress | None = None,
    weights: bool = True,
    head: bool | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Path:
    """Download what layers [start, end) of `repo` need (all of it when layers is None) into dest.

    Files already complete in dest are not asked for again, so a finished folder needs no network.
    weights=False fetches only config, tokenizer and index (what a node needs to plan its ring).
    cancelled() returning True stops the download (DownloadCancelled), keeping partial files.
    """
    progress = progress or Progress()
    try:
        with _locked(dest, progress):
            names, fetched = _download(repo, dest, layers, revision, progress, weights, head, cancelled)
    except DownloadError as exc:
        progress.end(str(exc))
        raise
    except OSError as exc:  # the folder itself cannot be made or written
        err = _explain(exc, repo, CONFIG, dest)
        progress.end(str(err))
        raise err from None
    progress.end()
    log.info("%s: %d weights file(s) in %s (%d downloaded)", repo, len(names), dest, fetched)
    return dest


@contextlib.contextmanager
def _locked(dest: Path, progress: Progress) -> Iterator[None]:
    """One download into a folder at a time (several nodes on one machine share $EXO_HOME)."""
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / ".exo-lock").open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another download into %s", dest)
            progress.state = "waiting for another download"
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _download(
    repo: str,
    dest: Path,
    layers: tuple[int, int] | None,
    revision: str,
    progress: Progress,
    weights: bool,
    head: bool | None,
    cancelled: Callable[[], bool] | None,
) -> tuple[list[str], int]:
    source = read_source(dest)
    if source is None or source["repo"] != repo:
        _metadata(repo, CONFIG, dest, revision)  # one quick request first: no network, 401 or 404 fail at once
        _fetch_metadata(repo, dest, revision)
    names = weights_needed(dest, layers, head) if weights else []
    if not weights and not (dest / INDEX).exists():
        names = [SINGLE]  # an unindexed model: the one file is needed to know its tensors
    missing = [n for n in names if not (dest / n).exists()]
    metas = {n: _metadata(repo, n, dest, revision) for n in missing}
    sizes = {n: ((dest / n).stat().st_size,) * 2 for n in names if n not in metas}
    for n, (_, meta) in metas.items():
        part = _partial(dest, n)
        sizes[n] = (part.stat().st_size if part.exists() else 0, meta.size or 0)
    progress.begin(repo, layers, sizes)
    for name, (url, meta) in metas.items():
        _fetch_weights(repo, name, dest, url, meta, progress, cancelled)
    return names, len(metas)

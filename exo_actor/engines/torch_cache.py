"""The torch engine's packed weights, cached on disk: a shard packed once loads in a fraction of the time.

Packing (decoding GGUF blocks, splitting 8-bit groups into 4-bit planes, the kernel's int4 layout) runs at
~150 M weights a second here: fine for SmolLM2 (~1 s), a minute for an 8B model. The packed tensors of a
shard are saved with `torch.save` under $EXO_ACTOR_CACHE (default $EXO_HOME/cache/torch) and loaded
memory-mapped (`torch.load(mmap=True, weights_only=True)`). The key covers the model file (path, size,
modification time), the layer range, the model's layer count (a draft model cut to K layers holds the
head after layer K, a ring's shard ending there does not), --quantize, the device, torch's version and the
source of the code that packs, so a change to any of them packs afresh. Only GGUF files are cached; a
cache that cannot be written (read-only or full disk) is one warning, and the shard runs from the packing
it just did.

Stale packings are removed whenever a shard is saved (prune): a packing of the same shard (model file name and
layer range) under another key unused for an hour (an earlier engine, torch or model file), any packing unused
for $EXO_ACTOR_CACHE_DAYS days (default 30; loading one marks it used), and leftovers of interrupted saves.

A node on the CPU packs a model file of CHILD_MIN_BYTES or more in a child process (pack_in_child) and then
maps what the child saved, so the first start holds what every later start holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_CODE = ("torch_linear.py", "torch_engine.py", "torch_cache.py")
CHILD_MIN_BYTES = 32 << 20  # model files from which a node packs in a child process (~1.5 s more, once)
SUPERSEDED_AFTER = 3600.0  # seconds unused after which another key's packing of a shard just saved goes
DEFAULT_MAX_DAYS = 30.0


def cache_dir() -> Path:
    from ..storage.registry import exo_home

    override = os.environ.get("EXO_ACTOR_CACHE")
    return Path(override).expanduser() if override else exo_home() / "cache" / "torch"


def cache_path(model_path: Path, start: int, end: int, layers: int, quantize: str | None, device: str) -> Path | None:
    """Where a shard's packed weights live (None when they are not cached: not a GGUF file)."""
    import torch

    if model_path.suffix.lower() != ".gguf" or os.environ.get("EXO_ACTOR_CACHE") == "off":
        return None
    try:
        st = model_path.stat()
    except OSError:
        return None
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CODE:
        h.update((here / name).read_bytes())
    ident = (
        f"{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{start}|{end}|{layers}|{quantize}|{device}|"
        f"{torch.__version__}"
    )
    h.update(ident.encode())
    return cache_dir() / f"{model_path.stem}-{start}-{end}-{h.hexdigest()[:16]}.pt"


def load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is repacked, never fatal
        log.warning("packed-weights cache %s is unreadable (%s): packing again", path, exc)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # its modification time is its last use (prune)
    return state


def save(path: Path | None, state: dict[str, Any]) -> None:
    if path is None:
        return
    import torch

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
        log.info("packed weights cached in %s", path)
        prune(path)
    except OSError as exc:
        log.warning("cannot cache packed weights in %s (%s): the next start packs again", path.parent, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _max_age() -> float:
    raw = os.environ.get("EXO_ACTOR_CACHE_DAYS", "")
    try:
        days = float(raw) if raw else DEFAULT_MAX_DAYS
    except ValueError:
        log.warning("EXO_ACTOR_CACHE_DAYS=%r is not a number of days: using %g", raw, DEFAULT_MAX_DAYS)
        days = DEFAULT_MAX_DAYS
    return max(days, 0.0) * 86400


def prune(saved: Path, now: float | None = None) -> list[Path]:
    """Remove the packings that `saved` makes stale, those unused for too long and interrupted saves' leftovers
    (module docstring); returns what was removed. A removed file another process has mapped stays readable
    to it until it unmaps it (POSIX unlink semantics)."""
    now = time.time() if now is None else now
    shard = saved.name.rsplit("-", 1)[0] + "-"  # {model stem}-{start}-{end}-
    max_age, removed, freed = _max_age(), [], 0
    try:
        entries = list(saved.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry == saved or not entry.name.endswith((".pt", ".tmp")):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        idle = now - st.st_mtime
        stale = idle > max_age
        stale |= entry.suffix == ".tmp" and idle > SUPERSEDED_AFTER
        same_shard = entry.name.startswith(shard) and len(entry.name) == len(saved.name)  # only the key differs
        stale |= entry.suffix == ".pt" and same_shard and idle > SUPERSEDED_AFTER
        if stale:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
                freed += st.st_size
    if removed:
        log.info("removed %d stale packed-weights file(s) from %s (%.0f MB)", len(removed), saved.parent, freed / 1e6)
    return removed


def pack_in_child(
    model_path: Path, start: int, end: int, layers: int, quantize: str | None, threads: int | None
) -> bool:
    """Pack layers [start, end) of a GGUF file, read as a model of `layers` layers, in a child process that
    saves them to this cache; False (and one log line) when it could not, and the caller packs in its own
    process.

    Packing in the serving process leaves its leftovers there: the stored and the packed copies peak
    together, and the heaps of the threads that packed keep a few MB afterwards (SmolLM2: 0-10 MiB, varying
    from run to run). A node that maps the saved file holds exactly what later starts hold.
    """
    cmd = [sys.executable, "-m", __name__, str(model_path), str(start), str(end), str(layers), quantize or ""]
    cmd.append(str(threads or 0))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        log.info("cannot start a process to pack %s (%s): packing here", model_path.name, exc)
        return False
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.info("packing %s in a child process failed (%s): packing here", model_path.name, last)
        return False
    return True


def _main(argv: list[str]) -> int:
    """The child of pack_in_child: MODEL START END LAYERS QUANTIZE THREADS."""
    from ..weights import open_model
    from . import limit_threads
    from .torch_engine import TorchShardRunner

    path, start, end, layers, quantize, threads = argv
    if int(threads):
        limit_threads(int(threads))
    files = open_model(Path(path))
    if int(layers) != files.args.num_hidden_layers:  # a draft model cut to its first layers
        files = dataclasses.replace(files, args=dataclasses.replace(files.args, num_hidden_layers=int(layers)))
    a, b, q = int(start), int(end), quantize or None
    runner = TorchShardRunner(files.args, a, b, files.shard_tensors(a, b, q))
    save(cache_path(files.path, a, b, int(layers), q, "cpu"), runner.packed_state())
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sys.exit(_main(sys.argv[1:]))

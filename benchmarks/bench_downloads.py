"""Download benchmark: exo-actor's resumable, verified download vs a plain HTTP GET and vs
huggingface_hub's own downloader, from a local stand-in for the Hub (tests/hub_server.py, in its own
process) on loopback.

    python -m benchmarks.bench_downloads [--out DIR] [--mb 256]

One weights file of MB megabytes. Each method fetches it into an empty folder, best of 3 rounds:
  plain GET        httpx streaming GET into a file: the floor (no hashing, no resume)
  huggingface_hub  hf_hub_download into a local folder (its own downloader; Xet off, as the stand-in
                   serves plain HTTP)
  exo-actor        downloads.download: Range-resumable .part file, SHA-256 checked, then renamed
  exo-actor, cut   the same with the connection cut half way (one reconnect with a Range request)
The gap between plain GET and exo-actor is the cost of the SHA-256 pass over the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.report import write_report
from exo_actor.storage.downloads import download

REPO = "bench/model"


def hub_process(folder: Path, cut_fresh: str = "") -> tuple[subprocess.Popen[str], str]:
    """The Hub stand-in in its own process (in this one it would compete for the GIL)."""
    code = "import sys; from tests.hub_server import serve_forever; serve_forever(*sys.argv[1:])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), REPO, cut_fresh], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def best_of(rounds: int, run: Callable[[Path], None], work: Path) -> float:
    best = float("inf")
    for i in range(rounds):
        dest = work / f"d{i}"
        t = time.perf_counter()
        run(dest)
        best = min(best, time.perf_counter() - t)
        shutil.rmtree(dest, ignore_errors=True)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exo-bench-dl-"))
    repo = work / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
    with (repo / "model.safetensors").open("wb") as f:
        f.write(os.urandom(args.mb << 20))
    server, url = hub_process(repo)
    cut_server, cut_url = hub_process(repo, cut_fresh="model.safetensors")
    os.environ.update(HF_ENDPOINT=url, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    file_url = f"{url}/{REPO}/resolve/main/model.safetensors"

    def plain(dest: Path) -> None:
        dest.mkdir()
        with httpx.stream("GET", file_url) as r, (dest / "model.safetensors").open("wb") as f:
            for chunk in r.iter_bytes():
                f.write(chunk)

    def hf(dest: Path) -> None:
        from huggingface_hub import hf_hub_download

        hf_hub_download(REPO, "model.safetensors", local_dir=dest, endpoint=url)

    def exo(dest: Path) -> None:
        download(REPO, dest)

    def exo_cut(dest: Path) -> None:
        os.environ["HF_ENDPOINT"] = cut_url
        try:
            download(REPO, dest)
        finally:
            os.environ["HF_ENDPOINT"] = url

    try:
        rows = []
        for name, run in (
            ("plain GET", plain),
            ("huggingface_hub", hf),
            ("exo-actor", exo),
            ("exo-actor, cut", exo_cut),
        ):
            seconds = best_of(args.rounds, run, work)
            rows.append({"method": name, "seconds": seconds, "mb_per_s": args.mb * 1.048576 / seconds})
            print(rows[-1], flush=True)
    finally:
        for proc in (server, cut_server):
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    floor = rows[0]["mb_per_s"]
    lines = [
        f"| method ({args.mb} MiB file, loopback) | MB/s | vs plain GET |",
        "|---|---|---|",
        *[f"| {r['method']} | {r['mb_per_s']:.0f} | {r['mb_per_s'] / floor:.2f}x |" for r in rows],
    ]
    write_report(args.out, "downloads", {"rows": rows}, lines)


if __name__ == "__main__":
    main()

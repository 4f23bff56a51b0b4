"""Downloads from a local stand-in for the Hugging Face Hub (tests/hub_server.py; no internet here):
shard-aware file selection, resume, integrity, clear errors, and a downloaded model that generates."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from exo_actor.engines import get_engine
from exo_actor.runtime.generation import LocalPipeline, generate
from exo_actor.sampling import SamplingParams
from exo_actor.storage.downloads import DownloadError, download, files_for_layers
from exo_actor.weights import open_model
from tests.conftest import TINY_REPO_FILES as FILES
from tests.hub_server import Hub


def _weights(hub: Hub) -> list[str]:
    return [f for f in hub.requested("GET") if f.endswith(".safetensors")]


def test_file_selection_follows_the_layers():
    wm = {f"model.layers.{i}.mlp.up_proj.weight": f"f{i // 2}" for i in range(8)}
    wm |= {"model.embed_tokens.weight": "f0", "model.norm.weight": "f3", "lm_head.weight": "f3"}
    assert files_for_layers(wm, 8, 0, 2) == ["f0"]
    assert files_for_layers(wm, 8, 2, 6) == ["f1", "f2"]
    assert files_for_layers(wm, 8, 6, 8) == ["f3"]
    tied = {k: v for k, v in wm.items() if k != "lm_head.weight"}
    assert files_for_layers(tied, 8, 6, 8) == ["f0", "f3"]  # a tied head is the embedding
    with pytest.raises(DownloadError, match="outside"):
        files_for_layers(wm, 8, 6, 9)


def test_a_shard_downloads_only_its_files(hub, tmp_path):
    download("org/tiny", tmp_path / "mid", layers=(1, 3))
    assert _weights(hub) == FILES[1:3]
    assert "config.json" in hub.requested("GET") and "tokenizer.json" in hub.requested("GET")
    hub.log.clear()
    download("org/tiny", tmp_path / "last", layers=(3, 4))
    assert _weights(hub) == FILES[3:]


def test_the_downloaded_model_generates_like_the_original(hub, tmp_path):
    dest = download("org/tiny", tmp_path / "all")
    assert _weights(hub) == FILES
    outs = []
    for folder in (dest, hub.repos["org/tiny"]):
        files = open_model(folder)
        pipe = LocalPipeline([get_engine("numpy").load_shard(files, 0, 4)])
        outs.append(
            [
                t
                for d in generate(pipe, files.tokenizer, [5, 6, 7], SamplingParams(max_tokens=8), 64)
                for t in d.token_ids
            ]
        )
    assert outs[0] == outs[1] and len(outs[0]) == 8


def test_a_dropped_connection_resumes_from_what_arrived(hub, tmp_path):
    hub.cut_once.add(FILES[0])
    dest = download("org/tiny", tmp_path / "cut", layers=(0, 1))
    ranges = [r for m, p, r in hub.log if m == "GET" and p.endswith(FILES[0])]
    assert ranges[0] is None and ranges[1] and int(ranges[1].split("=")[1].split("-")[0]) > 0, ranges
    assert (dest / FILES[0]).read_bytes() == (hub.repos["org/tiny"] / FILES[0]).read_bytes()


def test_a_killed_download_resumes_in_the_next_run(hub, tmp_path):
    """`exo-actor download` is interrupted (Ctrl-C) half way through a weights file: no file has the
    final name yet, and the next run asks the Hub only for the missing bytes (a Range request)."""
    hub.stall_once.add(FILES[0])
    dest = tmp_path / "resume"
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1"}
    cmd = [sys.executable, "-m", "exo_actor.cli", "download", "org/tiny", "--layers", "0-0", "--dir", str(dest)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert hub.stalled.wait(60), "the download never reached the weights file"
    part = dest / ".exo-partial" / f"{FILES[0]}.part"
    deadline = time.monotonic() + 60  # until the client has written some of what it received
    while not (part.exists() and part.stat().st_size > 0):
        assert time.monotonic() < deadline and proc.poll() is None, "no partial download was written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not (dest / FILES[0]).exists()
    hub.log.clear()
    download("org/tiny", dest, layers=(0, 1))
    ranges = [r for m, p, r in hub.log if m == "GET" and p.endswith(FILES[0])]
    assert ranges and ranges[0] and int(ranges[0].split("=")[1].split("-")[0]) > 0, ranges
    assert (dest / FILES[0]).read_bytes() == (hub.repos["org/tiny"] / FILES[0]).read_bytes()


def test_a_corrupted_file_is_detected_and_removed(hub, tmp_path):
    hub.corrupt.add(FILES[0])
    with pytest.raises(DownloadError, match="corrupt"):
        download("org/tiny", tmp_path / "bad", layers=(0, 1))
    assert not (tmp_path / "bad" / FILES[0]).exists()


def test_gated_repo_says_to_set_hf_token(hub, tmp_path, monkeypatch):
    with pytest.raises(DownloadError, match="HF_TOKEN.*accepted the model's license"):
        download("org/gated", tmp_path / "g")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    download("org/gated", tmp_path / "g", layers=(0, 1))


def test_missing_repo_and_no_network(hub, tmp_path, monkeypatch):
    with pytest.raises(DownloadError, match="org/nope was not found"):
        download("org/nope", tmp_path / "n")
    closed = "http://127.0.0.1:9"  # nothing listens on the discard port
    monkeypatch.setenv("HF_ENDPOINT", closed)
    with pytest.raises(DownloadError, match="no network"):
        download("org/tiny", tmp_path / "off")


def test_cli_download_with_layers(hub, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": os.environ["HF_ENDPOINT"], "HF_HUB_DISABLE_XET": "1"}
    cmd = [
        sys.executable,
        "-m",
        "exo_actor.cli",
        "download",
        "org/tiny",
        "--layers",
        "2-3",
        "--dir",
        str(tmp_path / "c"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "c")
    assert _weights(hub) == FILES[2:]
    bad = subprocess.run([*cmd[:5], "--layers", "3-1"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("exo-actor: error: --layers 3-1")
    assert np.all([line.startswith("exo-actor: error") for line in bad.stderr.strip().splitlines()])


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "exo_actor.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=180)


def test_run_downloads_a_missing_model_then_needs_no_network(hub, tmp_path):
    """`exo-actor run ORG/NAME` fetches the model into $EXO_HOME with a progress bar, answers like the
    original folder, and the next run works with HF_HUB_OFFLINE=1 without asking the Hub anything."""
    home = {"EXO_HOME": str(tmp_path / "home")}
    prompt = ("--prompt", "hello there", "--raw", "--max-tokens", "8")
    original = _cli("run", str(hub.repos["org/tiny"]), *prompt, env=home)
    assert original.returncode == 0, original.stderr
    first = _cli("run", "org/tiny", *prompt, env=home)
    assert first.returncode == 0, first.stderr
    assert first.stdout == original.stdout and first.stdout.strip()
    assert "downloading org/tiny" in first.stderr and "100%" in first.stderr  # the tqdm bar
    assert sorted(p.name for p in (tmp_path / "home/models/org--tiny").glob("*.safetensors")) == FILES
    hub.log.clear()
    again = _cli("run", "org/tiny", *prompt, env={**home, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr
    assert again.stdout == original.stdout and hub.log == []


def test_a_model_that_cannot_be_downloaded_is_one_clear_error(hub, tmp_path):
    home = {"EXO_HOME": str(tmp_path / "home")}
    for repo, needle in (("org/nope", "org/nope was not found"), ("org/gated", "set HF_TOKEN")):
        proc = _cli("run", repo, "--prompt", "x", env=home)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and needle in lines[0], proc.stderr
        assert lines[0].startswith("exo-actor: error: model " + repo + " is not available locally")
    proc = _cli("run", "org/tiny", "--prompt", "x", env={**home, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "HF_HUB_OFFLINE is set" in proc.stderr, proc.stderr


@pytest.mark.ring
def test_a_ring_downloads_each_shard_s_own_files_and_shows_progress(hub, tmp_path):
    """Two `exo-actor start --model org/tiny` nodes, each with its own $EXO_HOME (two devices): each
    fetches config, tokenizer and index, plans the ring, then only the weights files of its layers;
    /v1/cluster shows both nodes' download progress while it runs; the ring then answers like the
    original folder run in one process."""
    import threading

    import httpx

    from tests.api.servers import free_port, loopback_ring

    hub.rate = 100_000  # ~2 s per weights file: time to watch the progress
    api = [free_port(), free_port()]
    seen: list[dict] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(httpx.get(f"http://127.0.0.1:{api[0]}/v1/cluster", timeout=2).json())
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    homes = [{"EXO_HOME": str(tmp_path / f"home{i}")} for i in range(2)]
    body = {"model": "org/tiny", "prompt": "hello there", "max_tokens": 8, "temperature": 0}
    files, pipe = _load_original(hub)
    ids = files.tokenizer.encode("hello there")
    expected = "".join(d.text for d in generate(pipe, files.tokenizer, ids, SamplingParams(max_tokens=8), 64))
    try:
        with loopback_ring(
            tmp_path, ["4", "4"], ready_timeout=120, extra=("--model", "org/tiny"), per_node_env=homes, api_ports=api
        ) as r:
            stop.set()
            info = httpx.get(r["urls"][0] + "/v1/cluster").json()
            resp = httpx.post(r["urls"][0] + "/v1/completions", json=body, timeout=60)
    finally:
        stop.set()
    assert [(p["node"], p["start"], p["end"]) for p in info["plan"]] == [("node0", 0, 2), ("node1", 2, 4)]
    for i, mine in enumerate((FILES[:2], FILES[2:])):
        folder = tmp_path / f"home{i}" / "models" / "org--tiny"
        assert sorted(p.name for p in folder.glob("*.safetensors")) == mine
    assert set(_weights(hub)) == set(FILES)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == expected
    own = [d for s in seen for d in s.get("downloads", []) if d["node"] == "node0"]
    peer = [d for s in seen for d in s.get("downloads", []) if d["node"] == "node1"]
    assert any(d["state"] == "downloading" and 0 < d["done_bytes"] < d["total_bytes"] for d in own), own[-3:]
    assert any(d["state"] == "downloading" and 0 < d["done_bytes"] < d["total_bytes"] for d in peer), peer[-3:]
    final = [d for d in info["downloads"] if d["node"] == "node0"]
    assert final and final[0]["state"] == "done" and final[0]["done_bytes"] == final[0]["total_bytes"] > 0
    assert sorted(f["name"] for f in final[0]["files"]) == FILES[:2]


def _load_original(hub: Hub):  # type: ignore[no-untyped-def]
    files = open_model(hub.repos["org/tiny"])
    return files, LocalPipeline([get_engine("numpy").load_shard(files, 0, 4)])


def test_a_full_disk_leaves_no_corrupt_file_and_resumes_once_there_is_room(hub, tmp_path):
    """The model folder on a 400 KB tmpfs (a private mount namespace): the download stops with the
    disk-full message, every file with a final name is exact (the cut one stays a .part), and once
    the disk is bigger the same command finishes from where it stopped."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("an environment limit: a small tmpfs needs root and mount namespaces (unshare --mount)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = """
set -u
mount -t tmpfs -o size=400k tmpfs "$MNT" || exit 99
check() { for f in "$MNT"/m/*.safetensors; do [ -e "$f" ] || continue
  cmp -s "$f" "$REPO/$(basename "$f")" && echo "exact $(basename "$f")" || echo "CORRUPT $(basename "$f")"; done; }
"$PY" -m exo_actor.cli download org/tiny --dir "$MNT/m" >/dev/null 2>"$MNT/err1"; echo "rc1=$?"
tail -n 1 "$MNT/err1"; check; ls "$MNT/m/.exo-partial"
mount -o remount,size=4m "$MNT"
"$PY" -m exo_actor.cli download org/tiny --dir "$MNT/m" >/dev/null 2>&1; echo "rc2=$?"; check
"""
    env = {**os.environ, "MNT": str(mnt), "REPO": str(hub.repos["org/tiny"]), "PY": sys.executable}
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    if proc.returncode == 99:
        pytest.skip(f"an environment limit: cannot mount a tmpfs here ({proc.stderr.strip()})")
    out = proc.stdout.splitlines()
    first, second = (
        out[: out.index("rc2=0")] if "rc2=0" in out else out,
        out[out.index("rc2=0") + 1 :] if "rc2=0" in out else [],
    )
    assert "rc1=1" in first, proc.stdout + proc.stderr
    error = first[first.index("rc1=1") + 1]
    assert error.startswith("exo-actor: error:") and "disk is full" in error and "run the same command again" in error
    assert not any(line.startswith("CORRUPT") for line in out), out
    assert any(line.endswith(".safetensors.part") for line in first), first  # the cut file, kept to resume
    assert sorted(line.split()[1] for line in second if line.startswith("exact")) == FILES, proc.stdout

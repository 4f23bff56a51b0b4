"""A local stand-in for the Hugging Face Hub: the `resolve` endpoints huggingface_hub downloads from.

Serves the files of model folders on disk under /{repo}/resolve/{revision}/{filename} (HEAD and GET,
with Range requests for resuming), with the headers huggingface_hub reads: X-Repo-Commit, ETag, and
for weights files the LFS X-Linked-Etag (SHA-256) / X-Linked-Size, and X-Error-Code on errors. It
logs every request, and can cut a file's first transfer short, serve a corrupted body, or demand a
token, to exercise resume, integrity checks and authorization, or serve weights slowly (progress).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Hub:
    repos: dict[str, Path] = field(default_factory=dict)  # repo id -> folder
    gated: set[str] = field(default_factory=set)  # repos that need a token
    token: str = "hf_test_token"
    cut_once: set[str] = field(default_factory=set)  # files whose first GET stops half way
    cut_fresh: set[str] = field(default_factory=set)  # files whose every GET without a Range stops half way
    corrupt: set[str] = field(default_factory=set)  # files served with a flipped byte
    stall_once: set[str] = field(default_factory=set)  # files whose first GET sends half, then hangs
    stalled: threading.Event = field(default_factory=threading.Event)  # set once a stalled GET hangs
    rate: int | None = None  # bytes per second for weights files (None: as fast as possible)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requested(self, method: str = "GET") -> list[str]:
        return [p.rsplit("/", 1)[-1] for m, p, _ in self.log if m == method]


_SHAS: dict[tuple[Path, int, int], str] = {}


def _sha256(path: Path, data: bytes) -> str:
    """The file's SHA-256, computed once per version of the file (as the Hub stores it)."""
    st = path.stat()
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _SHAS:
        _SHAS[key] = hashlib.sha256(data).hexdigest()
    return _SHAS[key]


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _error(self, code: int, error_code: str, message: str) -> None:
            body = message.encode()
            self.send_response(code)
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self) -> None:
            with hub.lock:
                hub.log.append((self.command, self.path, self.headers.get("Range")))
            parts = self.path.split("?")[0].strip("/").split("/")
            if "resolve" not in parts:
                return self._error(404, "EntryNotFound", "not found")
            i = parts.index("resolve")
            repo, filename = "/".join(parts[:i]), "/".join(parts[i + 2 :])
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound", f"Repository {repo} not found")
            if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, "GatedRepo", f"Access to {repo} is restricted")
            path = hub.repos[repo] / filename
            if not path.is_file():
                return self._error(404, "EntryNotFound", f"{filename} does not exist")
            data = path.read_bytes()
            sha = _sha256(path, data)
            if filename in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0] or 0)
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            if filename.endswith(".safetensors"):
                self.send_header("ETag", f'"{sha}"')
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
            else:
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if filename in hub.stall_once:
                hub.stall_once.discard(filename)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                hub.stalled.set()
                threading.Event().wait(30)  # the client is killed meanwhile
                return
            if filename in hub.cut_once or (filename in hub.cut_fresh and not start):
                hub.cut_once.discard(filename)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if hub.rate and filename.endswith(".safetensors"):
                step = max(1, hub.rate // 20)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    self.wfile.flush()
                    time.sleep(0.05)
                return
            self.wfile.write(body)

        do_GET = do_HEAD = _serve

    return Handler


def start_hub(hub: Hub) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def serve_forever(folder: str, repo: str, cut_fresh: str = "") -> None:
    """Serve one repo in this process until killed, printing the URL first (for a benchmark that
    keeps the server out of its own process)."""
    hub = Hub(repos={repo: Path(folder)}, cut_fresh={cut_fresh} if cut_fresh else set())
    server, url = start_hub(hub)
    print(url, flush=True)
    threading.Event().wait()

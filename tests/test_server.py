"""`exo-actor start` and `exo-actor status` as real processes: shutdown, busy port, status output.
The tests marked `ring` start a node process that loads a model and serves; the others see the CLI
refuse before anything starts."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest

from exo_actor.weights import open_model
from tests.api.servers import process_server
from tests.cli.helpers import assert_one_line_error, cli
from tests.tiny import TinySpec, write_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("srv") / "tiny.gguf"
    write_gguf(path, TinySpec())
    return path


@pytest.mark.ring
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(tiny, sig):
    with process_server("--model", str(tiny)) as srv:
        srv.process.send_signal(sig)
        out, _ = srv.process.communicate(timeout=20)
        assert srv.process.returncode == 0, out
        assert "Traceback" not in out


@pytest.mark.ring
def test_status_table_and_json(tiny):
    with process_server("--model", str(tiny)) as srv:
        table = cli("status", "--api", srv.url)
        assert table.returncode == 0, table.stderr
        assert "state ready" in table.stdout and "numpy" in table.stdout and "0-3" in table.stdout
        assert "WEIGHTS" in table.stdout and " MiB" in table.stdout
        info = json.loads(cli("status", "--api", srv.url, "--json").stdout)
        assert info["plan"][0]["start"] == 0 and info["plan"][0]["end"] == 4
        node = info["nodes"][0]
        assert node["weights_bytes"] == open_model(tiny).shard_bytes(0, 4, "numpy")  # float32: 4 bytes a value


def test_status_of_nothing_is_one_line(tiny):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_one_line_error(cli("status", "--api", f"http://127.0.0.1:{port}", "--timeout", "2"), "cannot reach")


def test_busy_port_is_one_line(tiny):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "exo_actor.cli",
                "start",
                "--model",
                str(tiny),
                "--api-host",
                "127.0.0.1",
                "--api-port",
                str(port),
                "--discovery",
                "manual",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert_one_line_error(proc, "cannot listen", str(port))


@pytest.mark.ring
def test_api_key_protects_status(tiny):
    with process_server("--model", str(tiny), "--api-key", "k1") as srv:
        assert_one_line_error(cli("status", "--api", srv.url), "401", "--api-key")
        assert cli("status", "--api", srv.url, "--api-key", "k1").returncode == 0


def test_unknown_model_fails_fast():
    assert_one_line_error(
        cli("start", "--model", "gpt-17", "--api-port", "0", "--discovery", "manual"), "unknown model"
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("peers = [", "not valid TOML"),
        ("peers = 5", "must contain peers"),
        ('peers = ["nohost"]', "not HOST:PORT"),
        ('peers = ["h:99999"]', "not HOST:PORT"),
    ],
)
def test_bad_peers_files(tmp_path, tiny, content, needle):
    path = tmp_path / "peers.toml"
    if content is not None:
        path.write_text(content)
    proc = cli("start", "--model", str(tiny), "--api-port", "0", "--peers", str(path))
    assert_one_line_error(proc, needle)


def test_discovery_flags():
    """A bad --discovery or --memory is one line (--discovery manual without --peers is no error: a node on its
    own, as process_server starts the nodes above)."""
    assert_one_line_error(cli("start", "--discovery", "mdns", "--api-port", "0"), "--discovery", "invalid choice")
    assert_one_line_error(cli("start", "--memory", "-2", "--discovery", "manual"), "memory")

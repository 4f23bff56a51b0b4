"""`exo-actor start`: its flags become the configs `serve()` gets (in process, `serve` replaced), and its
errors are one line (the real CLI, as a subprocess)."""

from __future__ import annotations

import ast
import logging
import socket
from pathlib import Path

import pytest

import exo_actor
from exo_actor.cli import main
from exo_actor.config import ClusterConfig, NodeConfig, RayConfig
from tests.cli.helpers import assert_one_line_error, cli, python


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """What `start` hands to serve() (which is not run): node, gateway, cluster, ray."""
    got: dict[str, object] = {}

    def serve(node, gateway, host, port, cluster=None, node_id=None, ray_config=None):  # type: ignore[no-untyped-def]
        got.update(node=node, gateway=gateway, api=(host, port), cluster=cluster, node_id=node_id, ray=ray_config)

    monkeypatch.setattr("exo_actor.server.serve", serve)
    return got


@pytest.fixture()
def peers_file(tmp_path: Path) -> str:
    path = tmp_path / "peers.toml"
    path.write_text('peers = ["127.0.0.1:6001", "10.0.0.2:6002"]\n')
    return str(path)


def start(*flags: str) -> int:
    return main(["start", "--no-api", "--host", "127.0.0.1", *flags])


def test_lan_flags_become_the_node_and_cluster_configs(served, peers_file):
    code = start(
        *("--peers", peers_file, "--port", "6000", "--advertise", "node1:7000", "--memory", "2", "--rings", "2"),
        *("--wait-for-peers", "1", "--heartbeat", "0.2", "--peer-timeout", "1", "--step-timeout", "30"),
        *("--max-concurrent", "3", "--prefix-cache-mb", "0", "--engine", "numpy", "--node-id", "n1"),
    )
    assert code == 0
    assert served["gateway"] is None and served["ray"] is None and served["node_id"] == "n1"
    assert served["node"] == NodeConfig(engine="numpy", max_concurrent=3, prefix_cache_mb=0)
    assert served["cluster"] == ClusterConfig(
        host="127.0.0.1",
        port=6000,
        advertise="node1",
        advertise_port=7000,
        peers=["127.0.0.1:6001", "10.0.0.2:6002"],
        memory=2 * 2**30,
        wait_for_peers=1,
        rings=2,
        heartbeat=0.2,
        timeout=1.0,
        step_timeout=30.0,
    )


def test_the_test_run_keeps_nodes_off_the_network(served):
    """tests/conftest.py sets EXO_ACTOR_DISCOVERY=manual: a node started without flags is alone, no beacons."""
    assert start() == 0
    assert served["cluster"] is None and served["ray"] is None


@pytest.mark.parametrize(
    ("flags", "env", "discovery", "chosen_by"),
    [
        ((), None, "udp", "the default"),
        (("--peers", "PEERS"), None, "manual", "--peers without --discovery"),
        (("--peers", "PEERS", "--discovery", "udp"), None, "udp", "--discovery udp"),
        (("--discovery", "manual"), None, None, "--discovery manual, no --peers"),
        (("--discovery", "manual", "--peers", "PEERS"), "udp", "manual", "--discovery manual"),
        ((), "manual", None, "EXO_ACTOR_DISCOVERY=manual, no --peers"),
        (("--peers", "PEERS"), "manual", "manual", "EXO_ACTOR_DISCOVERY=manual"),
        (("--peers", "PEERS"), "udp", "udp", "EXO_ACTOR_DISCOVERY=udp"),
        (("--discovery", "udp"), "manual", "udp", "--discovery udp"),
    ],
)
def test_how_the_node_finds_peers_and_the_log_says_so(
    served, peers_file, monkeypatch, caplog, flags, env, discovery, chosen_by
):
    """UDP beacons by default; --peers alone means manual; --discovery beats $EXO_ACTOR_DISCOVERY, which
    beats the default; manual discovery without --peers is a node on its own (no cluster, no beacons)."""
    if env is None:
        monkeypatch.delenv("EXO_ACTOR_DISCOVERY", raising=False)
    else:
        monkeypatch.setenv("EXO_ACTOR_DISCOVERY", env)
    caplog.set_level(logging.INFO, logger="exo_actor.cli.start")
    assert start(*(peers_file if f == "PEERS" else f for f in flags)) == 0
    cluster = served["cluster"]
    assert (cluster.discovery if cluster else None) == discovery
    if "--peers" in flags:
        assert cluster is not None and cluster.peers == ["127.0.0.1:6001", "10.0.0.2:6002"]
    started = [r.getMessage() for r in caplog.records if r.name == "exo_actor.cli.start"]
    assert len(started) == 1 and f"({chosen_by}" in started[0], started
    if discovery == "udp":
        assert "UDP beacons on port 52417" in started[0] and "--discovery manual keeps" in started[0]
    elif discovery == "manual":
        assert f"only from the 2 peer(s) in {peers_file}, sending no beacons" in started[0]
    else:
        assert started[0].startswith("serving alone: no actor socket, no beacons")


def test_a_bad_exo_actor_discovery_is_one_line(served, monkeypatch, capsys):
    monkeypatch.setenv("EXO_ACTOR_DISCOVERY", "mdns")
    assert start() == 1
    err = "exo-actor: error: EXO_ACTOR_DISCOVERY='mdns' is not a discovery mode "
    err += "(choose manual, udp, tailscale, or udp,tailscale)\n"
    assert capsys.readouterr().err == err
    assert not served


def test_help_names_the_discovery_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["start", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "udp (the default, or $EXO_ACTOR_DISCOVERY): UDP beacons on the LAN" in text
    assert "--peers without --discovery means manual" in text


def test_ray_flags_become_the_ray_config(served):
    assert start("--backend", "ray", "--ray-shards", "2", "--ray-placement", "PACK", "--ray-address", "auto") == 0
    assert served["cluster"] is None
    assert served["ray"] == RayConfig(address="auto", shards=2, placement="PACK", host="127.0.0.1")


@pytest.mark.parametrize("backend", [(), ("--backend", "ray")])
def test_a_peer_timeout_within_two_heartbeats_names_the_flag(served, peers_file, capsys, backend):
    peers = () if backend else ("--peers", peers_file)
    assert start(*peers, *backend, "--heartbeat", "1", "--peer-timeout", "2") == 1
    assert capsys.readouterr().err == "exo-actor: error: --peer-timeout (2 s) must exceed twice heartbeat (1 s)\n"
    assert not served


def test_negative_wait_for_peers_is_refused(served, capsys):
    with pytest.raises(SystemExit) as exit_:
        start("--wait-for-peers", "-1")
    assert exit_.value.code == 2
    assert "--wait-for-peers: must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--ray-shards", "3"], "the --ray-* options need --backend ray"),
        (["--ray-address", "auto"], "need --backend ray"),
        (["--backend", "ray", "--ray-address", "nowhere"], "expected auto, HOST:PORT or ray://HOST:PORT"),
        (["--backend", "ray", "--ray-address", "ray://h:99999"], "--ray-address ray://h:99999"),
        (["--backend", "ray", "--rings", "2"], "--rings is for LAN clusters"),
        (["--backend", "ray", "--discovery", "udp"], "--discovery is for LAN clusters"),
        (["--backend", "ray", "--advertise", "h:1234", "--port", "5000"], "takes a HOST only"),
        (["--backend", "ray", "--ray-cpus-per-shard", "0"], "must be a positive number"),
        (["--backend", "ray", "--ray-placement", "RANDOM"], "invalid choice"),
        (["--backend", "mesh"], "invalid choice"),
    ],
)
def test_bad_ray_backend_flags(flags, needle):
    assert_one_line_error(cli("start", "--no-api", *flags), needle)


# runs the CLI with `ray` unimportable (as on a machine without the extra)
_WITHOUT_RAY = """
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == 'ray' else real(name, *a)
sys.modules['ray'] = None
from exo_actor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ray_backend_without_ray_names_the_extra():
    """A machine without the `ray` package: one line naming `exo-actor[ray]`."""
    proc = python(_WITHOUT_RAY, "start", "--no-api", "--backend", "ray")
    assert_one_line_error(proc, "pip install 'exo-actor[ray]'")


def test_only_the_ray_backend_imports_ray():
    root = Path(exo_actor.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"ray_backend/host.py", "ray_backend/driver.py"}


@pytest.mark.parametrize("backend", [(), ("--backend", "ray")])
def test_a_busy_actor_port_is_one_line(tmp_path, backend):
    (tmp_path / "peers.toml").write_text('peers = ["127.0.0.1:1"]\n')
    peers = () if backend else ("--peers", str(tmp_path / "peers.toml"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        proc = cli(
            *("start", "--no-api", "--host", "127.0.0.1", "--port", port, *peers, *backend),
            *("--cluster-key", "a-cluster-secret-for-tests"),
        )
    assert_one_line_error(proc, f"cannot listen on tcp://127.0.0.1:{port}: Address already in use", "--port")

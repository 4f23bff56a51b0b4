"""The command line of Tailscale discovery: --discovery combinations, the --tailscale-* flags becoming the
cluster config, one-line refusals (no cluster key, bad combinations), and `exo-actor peers --discovery
tailscale` listing the stand-in tailnet with the reason each skipped device was skipped."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import pytest

from exo_actor.cli import main
from exo_actor.cli.tailscale_flags import parse_discovery
from exo_actor.cluster.wide_area import WideAreaConfig
from exo_actor.config import ClusterConfig
from exo_actor.transport.security import new_key
from exo_actor.transport.tailscale_sources import TailscaleConfig
from tests.cli.helpers import assert_one_line_error, cli
from tests.cli.test_start import served  # noqa: F401 - the fixture
from tests.tailscale_standin import ApiState, StandInDevice, Tailnet, api_server

STANDIN = Path(__file__).parents[1] / "tailscale_standin.py"


def standin(tmp_path: Path, net: Tailnet, me: str = "desktop") -> str:
    net.save(tmp_path / "tailnet.json")
    return f"{sys.executable} {STANDIN} {tmp_path / 'tailnet.json'} {me}"


def start(*flags: str) -> int:
    return main(["start", "--no-api", "--host", "127.0.0.1", *flags])


@pytest.mark.parametrize(
    ("text", "mode"),
    [("udp", "udp"), ("tailscale,udp", "udp,tailscale"), (" udp , tailscale ", "udp,tailscale"), ("manual", "manual")],
)
def test_discovery_modes_are_written_one_way(text, mode):
    assert parse_discovery(text) == mode


@pytest.mark.parametrize(("text", "needle"), [("mdns", "invalid choice: 'mdns'"), ("manual,udp", "does not combine")])
def test_bad_discovery_modes(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_discovery(text)


@pytest.mark.parametrize(
    ("flags", "env", "beacons"),
    [
        (("--discovery", "tailscale"), None, "manual"),
        (("--discovery", "udp,tailscale"), None, "udp"),
        (("--discovery", "udp", "--discovery", "tailscale"), None, "udp"),
        ((), "tailscale,udp", "udp"),
    ],
)
def test_tailscale_flags_become_the_cluster_config(served, monkeypatch, caplog, flags, env, beacons):  # noqa: F811
    monkeypatch.setenv("EXO_ACTOR_CLUSTER_KEY", key := new_key())
    if env:
        monkeypatch.setenv("EXO_ACTOR_DISCOVERY", env)
    caplog.set_level(logging.INFO, logger="exo_actor.cli.start")
    extra = ("--tailscale-tag", "tag:gpu", "--tailscale-port", "6000", "--tailscale-interval", "2")
    assert start(*flags, *extra, "--auto-speculation-ms", "25") == 0
    cluster = served["cluster"]
    assert cluster == WideAreaConfig(
        host="127.0.0.1",
        advertise="127.0.0.1",
        discovery=beacons,
        cluster_key=key,
        tailscale=TailscaleConfig(tag="tag:gpu", port=6000, interval=2.0),
        auto_speculation_ms=25.0,
    )
    said = [r.getMessage() for r in caplog.records if r.name == "exo_actor.cli.start"]
    assert said[0].startswith("finding peers on the tailnet (online devices tagged tag:gpu, listed by `tailscale")
    assert ("UDP beacons" in said[0]) is (beacons == "udp")


def test_without_tailscale_the_config_is_the_lan_one(served, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EXO_ACTOR_DISCOVERY", "udp")
    assert start() == 0
    assert type(served["cluster"]) is ClusterConfig
    assert start("--auto-speculation-ms", "0") == 0
    assert isinstance(served["cluster"], WideAreaConfig) and served["cluster"].auto_speculation_ms == 0


def test_the_api_flags_and_the_tailnet_address_from_the_daemon(served, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("EXO_ACTOR_CLUSTER_KEY", new_key())
    api = ("--tailscale-api-key", "tskey-api-x", "--tailnet", "example.com", "--tailscale-api-url", "http://h:1")
    assert start("--discovery", "tailscale", *api) == 0
    assert served["cluster"].tailscale.api_key == "tskey-api-x" and served["cluster"].tailscale.tailnet == "example.com"
    net = Tailnet([StandInDevice("desktop", "100.64.0.7", ["tag:exo-actor"])])
    assert main(["start", "--no-api", "--discovery", "tailscale", "--tailscale-cli", standin(tmp_path, net)]) == 0
    assert served["cluster"].host == "0.0.0.0" and served["cluster"].advertise == "100.64.0.7"  # peers reach it there


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (("--discovery", "tailscale"), ("--discovery tailscale needs a cluster key", "`exo-actor keygen`")),
        (("--discovery", "udp,tailscale"), ("needs a cluster key", "EXO_ACTOR_CLUSTER_KEY")),
        (("--discovery", "manual,tailscale"), ("--discovery", "manual means no discovery")),
        (("--discovery", "mdns"), ("--discovery", "invalid choice: 'mdns'")),
        (("--discovery", "tailscale", "--tailscale-api-key", "k"), ("--tailscale-api-key needs --tailnet",)),
        (("--auto-speculation-ms", "-1"), ("--auto-speculation-ms", "must be a number >= 0")),
    ],
)
def test_refusals_are_one_line(flags, needles):
    env = {k: v for k, v in os.environ.items() if k != "EXO_ACTOR_CLUSTER_KEY"}
    assert_one_line_error(cli("start", "--no-api", "--model", "nope", *flags, env=env), *needles)


def test_peers_lists_the_tailnet_and_why_devices_were_skipped(tmp_path):
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    net = Tailnet(
        [
            StandInDevice("desktop", "127.0.0.9", ["tag:exo-actor"]),
            StandInDevice("gpu-box", "127.0.0.1", ["tag:exo-actor"]),  # a node answers on its port
            StandInDevice("mac-mini", "127.0.0.2", ["tag:exo-actor"]),  # nothing listens there
            StandInDevice("old-server", "127.0.0.3", ["tag:exo-actor"], online=False),
            StandInDevice("laptop", "127.0.0.4"),
        ]
    )
    with listening:
        out = cli(
            "peers",
            "--discovery",
            "tailscale",
            "--tailscale-cli",
            standin(tmp_path, net),
            "--tailscale-port",
            str(port),
        )
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert lines["gpu-box"].split()[1:] == [f"127.0.0.1:{port}", "reachable"]
    assert lines["mac-mini"].endswith(f"unreachable: nothing answers on port {port}")
    assert lines["old-server"].endswith("skipped: offline")
    assert lines["laptop"].endswith("skipped: untagged (no tag:exo-actor)")
    assert lines["desktop"].endswith("skipped: this device")


def test_peers_with_a_refused_key_or_a_stopped_daemon_is_one_line(tmp_path):
    state = ApiState(Tailnet([StandInDevice("desktop", "100.64.0.1")]))
    with api_server(state) as url:
        refused = cli(
            "peers",
            "--discovery",
            "tailscale",
            "--tailscale-api-key",
            "bad",
            "--tailnet",
            "-",
            "--tailscale-api-url",
            url,
        )
    assert_one_line_error(refused, "refused the API key (HTTP 401: API token invalid)")
    net = Tailnet([StandInDevice("desktop", "100.64.0.1", online=False)])
    down = cli("peers", "--discovery", "tailscale", "--tailscale-cli", standin(tmp_path, net))
    assert_one_line_error(down, "failed to connect to local tailscaled")
    missing = cli("peers", "--discovery", "tailscale", "--tailscale-cli", str(tmp_path / "no-tailscale"))
    assert_one_line_error(missing, "is not installed")

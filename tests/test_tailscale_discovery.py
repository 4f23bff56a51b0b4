"""Three nodes in three network namespaces, routed to each other but not bridged (no multicast or broadcast
crosses: the mesh of tests/test_network_partition.py), find each other only through the Tailscale stand-in
(tests/tailscale_standin.py as each node's `tailscale` command) and serve a request with the single-process
text. The stand-in's tailnet also lists an offline and an untagged device, which are never dialled.

Then node2's device goes offline: its links go down (a device off the tailnet loses its tunnels) and the
stand-in says so (Online false for the others, its own daemon down). It leaves the ring: every side drops
the other past the peer timeout. It comes back (links up, the stand-in says online): it rejoins, and the
three-node ring serves the same text again.

Needs root (ip netns); CI runs as root. No traffic leaves the namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.servers import stop_processes
from tests.tailscale_standin import StandInDevice, Tailnet
from tests.test_network_partition import GET, POST, addr, in_ns, mesh, sh  # noqa: F401 - mesh: the fixture
from tests.tiny import TinySpec, write_gguf

pytestmark = pytest.mark.ring
STANDIN = Path(__file__).parent / "tailscale_standin.py"


def cluster(ns: str, i: int) -> dict:
    out = in_ns(ns, GET, f"http://{addr(i)}:52415/v1/cluster", timeout=10).stdout
    return json.loads(out) if out else {}


def wait_ring(names: list[str], nodes: list[int], timeout: float = 60) -> list[dict]:
    """Until nodes `nodes` are all ready on one plan of exactly those nodes."""
    want = {f"node{i}" for i in nodes}
    deadline, infos = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        infos = [cluster(names[i], i) for i in nodes]
        plans = [frozenset(p["node"] for p in x.get("plan", [])) for x in infos]
        if all(x.get("state") == "ready" for x in infos) and set(plans) == {frozenset(want)}:
            return infos
        time.sleep(0.5)
    raise AssertionError(f"no ring of {sorted(want)}: {[(x.get('state'), x.get('plan')) for x in infos]}")


def ask(ns: str, i: int, model: str) -> str:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
    )
    out = in_ns(ns, POST, f"http://{addr(i)}:52415/v1/chat/completions", body).stdout.split("\n", 1)
    assert out[0] == "200", out
    return str(json.loads(out[1])["choices"][0]["message"]["content"])


def test_nodes_meet_only_through_the_tailnet_and_follow_a_device_going_and_coming(mesh, tmp_path):  # noqa: F811
    from exo_actor.runtime.generation import generate
    from exo_actor.runtime.local import load_local
    from exo_actor.sampling import SamplingParams
    from exo_actor.tokenizer import chat_prompt_ids
    from exo_actor.transport.security import new_key

    names, links = mesh
    model = tmp_path / "tiny.gguf"
    write_gguf(model, TinySpec(layers=6))
    files, pipe = load_local(str(model))
    ids = chat_prompt_ids(files.tokenizer, [{"role": "user", "content": "hi"}])
    expected = "".join(d.text for d in generate(pipe, files.tokenizer, ids, SamplingParams(max_tokens=8), 8192))
    tailnet = Tailnet(
        [StandInDevice(f"host{i}", addr(i), ["tag:exo-actor"]) for i in range(3)]
        + [StandInDevice("old-server", "10.99.0.50", ["tag:exo-actor"], online=False)]
        + [StandInDevice("laptop", "10.99.0.51")]
    )
    state = tmp_path / "tailnet.json"
    tailnet.save(state)
    env = {**os.environ, "EXO_ACTOR_CLUSTER_KEY": new_key()}
    procs = []
    for i, ns in enumerate(names):
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "exo_actor.cli", "-v", "start", "--model", str(model)]
        cmd += ["--node-id", f"node{i}", "--host", addr(i), "--api-host", addr(i), "--memory", "4"]
        cmd += ["--discovery", "udp,tailscale" if i == 0 else "tailscale", "--tailscale-interval", "1"]
        cmd += ["--tailscale-cli", f"{sys.executable} {STANDIN} {state} host{i}"]
        with open(tmp_path / f"node{i}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    logs = lambda: "\n".join((tmp_path / f"node{i}.log").read_text()[-1500:] for i in range(3))  # noqa: E731
    try:
        try:
            infos = wait_ring(names, [0, 1, 2], 90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None
        rows = {d["hostname"]: (d["state"], d["why"]) for d in infos[0]["tailscale"]["devices"]}
        assert rows["host1"] == ("connected", None) and rows["host2"] == ("connected", None), rows
        assert rows["old-server"] == ("skipped", "offline") and rows["laptop"] == (
            "skipped",
            "untagged (no tag:exo-actor)",
        )
        assert "10.99.0.5" not in logs()  # the offline and untagged devices were never dialled
        assert ask(names[2], 2, str(model)) == expected

        # node2's device leaves the tailnet: its tunnels go down and the stand-in says it is offline
        tailnet.device("host2").online = False
        tailnet.save(state)
        ends = [links[(0, 2)][1], links[(1, 2)][1]]
        for end in ends:
            sh("ip", "-n", names[2], "link", "set", end, "down")
        wait_ring(names, [0, 1], 30)
        # ... and past the peer timeout every side has dropped the other (a short outage would just heal)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seen = [{n["id"] for n in cluster(names[i], i)["nodes"]} for i in (0, 1, 2)]
            if seen == [{"node0", "node1"}, {"node0", "node1"}, {"node2"}]:
                break
            time.sleep(0.5)
        assert seen == [{"node0", "node1"}, {"node0", "node1"}, {"node2"}], seen
        rows = {d["hostname"]: d["state"] for d in cluster(names[0], 0)["tailscale"]["devices"]}
        assert rows["host2"] == "skipped"
        # the device comes back: its links are up again and the stand-in says online
        for (i, j), end in zip([(0, 2), (1, 2)], ends):
            sh("ip", "-n", names[2], "link", "set", end, "up")
            sh("ip", "-n", names[2], "route", "replace", f"{addr(i)}/32", "dev", end, "src", addr(2))
            sh("ip", "-n", names[i], "route", "replace", f"{addr(2)}/32", "dev", links[(i, j)][0], "src", addr(i))
        # online again: the next listing reconnects it and the ring of three serves the same text
        tailnet.device("host2").online = True
        tailnet.save(state)
        wait_ring(names, [0, 1, 2], 60)
        for i, ns in enumerate(names):
            assert ask(ns, i, str(model)) == expected
    finally:
        stop_processes(procs)

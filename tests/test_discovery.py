"""Three nodes in three network namespaces find each other by UDP beacons alone and serve a request.

The namespaces hang off a bridge inside a fourth namespace, so no beacon ever reaches the machine's
real interfaces: these are the only tests whose nodes send beacons (tests/conftest.py sets
EXO_ACTOR_DISCOVERY=manual for every other; the nodes here get an environment without it). Needs root
(ip netns); CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.api.servers import stop_processes
from tests.tiny import TinySpec, write_gguf

pytestmark = pytest.mark.ring


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture()
def namespaces():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("this test needs root and iproute2 (ip netns); CI runs as root")
    tag = uuid.uuid4().hex[:5]
    br, names = f"exobr{tag}", [f"exo{tag}n{i}" for i in range(3)]
    sh("ip", "netns", "add", br)
    try:
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        for i, ns in enumerate(names):
            sh("ip", "netns", "add", ns)
            sh(
                "ip",
                "link",
                "add",
                f"v{tag}{i}",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                f"b{tag}{i}",
                "netns",
                br,
            )
            sh("ip", "-n", br, "link", "set", f"b{tag}{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"10.77.0.{i + 1}/24", "broadcast", "10.77.0.255", "dev", f"v{tag}{i}")
            sh("ip", "-n", ns, "link", "set", f"v{tag}{i}", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "dev", f"v{tag}{i}")
        yield names
    finally:
        for ns in [*names, br]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def in_ns(ns: str, code: str, *args: str, timeout: float = 30) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.getcwd(),
    )
    return out.stdout


def beacon_env(**extra: str) -> dict[str, str]:
    """This environment without EXO_ACTOR_DISCOVERY (a node in a test namespace may send beacons), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k != "EXO_ACTOR_DISCOVERY"}, **extra}


def test_nodes_started_with_only_a_model_form_one_ring(namespaces, tmp_path):
    """Zero configuration: three nodes, each started with nothing but --model and its namespace's addresses
    (no --discovery, --peers, --node-id or --memory; no EXO_ACTOR_DISCOVERY), find each other by the
    default UDP beacons, every gateway reports one plan of all three, and a request through any of them
    answers with the single-process text."""
    from exo_actor.runtime.generation import generate
    from exo_actor.runtime.local import load_local
    from exo_actor.sampling import SamplingParams
    from exo_actor.tokenizer import chat_prompt_ids

    model = tmp_path / "tiny.gguf"
    write_gguf(model, TinySpec(layers=6))
    question = [{"role": "user", "content": "hi"}]
    files, pipe = load_local(str(model))
    ids = chat_prompt_ids(files.tokenizer, question)
    expected = "".join(d.text for d in generate(pipe, files.tokenizer, ids, SamplingParams(max_tokens=8), 8192))
    ips = [f"10.77.0.{i + 1}" for i in range(3)]
    procs = []
    for ns, ip in zip(namespaces, ips):
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "exo_actor.cli", "start", "--model", str(model)]
        cmd += ["--host", ip, "--api-host", ip]
        with open(tmp_path / f"{ip}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=beacon_env()))
    probe = "import urllib.request,sys;print(urllib.request.urlopen(sys.argv[1],timeout=2).read().decode())"
    try:
        plans: list[list[tuple[str, int, int]]] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            outs = [in_ns(ns, probe, f"http://{ip}:52415/v1/cluster") for ns, ip in zip(namespaces, ips)]
            infos = [json.loads(out) if out else {} for out in outs]
            plans = [[(p["node"], p["start"], p["end"]) for p in i["plan"]] for i in infos if i.get("state") == "ready"]
            if len(plans) == 3 and plans.count(plans[0]) == 3 and len(plans[0]) == 3:
                break
            time.sleep(1)
        logs = "\n".join((tmp_path / f"{ip}.log").read_text()[-800:] for ip in ips)
        assert len(plans) == 3 and plans.count(plans[0]) == 3 and len(plans[0]) == 3, (plans, logs)
        assert {node for node, _, _ in plans[0]} == {n["id"] for n in infos[0]["nodes"]}  # three distinct nodes
        assert plans[0][0][1] == 0 and plans[0][-1][2] == 6
        ask = (
            "import json,sys,urllib.request;"
            "b=json.dumps({'model':sys.argv[2],'messages':[{'role':'user','content':'hi'}],'max_tokens':8,"
            "'temperature':0}).encode();"
            "r=urllib.request.urlopen(urllib.request.Request(sys.argv[1],b,"
            "{'Content-Type':'application/json'}),timeout=30);print(r.read().decode())"
        )
        answer = json.loads(in_ns(namespaces[2], ask, f"http://{ips[2]}:52415/v1/chat/completions", str(model)))
        assert answer["choices"][0]["message"]["content"] == expected
    finally:
        stop_processes(procs)


def test_beacons_alone_form_a_ring(namespaces, tmp_path):
    model = tmp_path / "tiny.gguf"
    write_gguf(model, TinySpec(layers=6))
    procs = []
    for i, ns in enumerate(namespaces):
        ip = f"10.77.0.{i + 1}"
        cmd = [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "exo_actor.cli",
            "start",
            "--model",
            str(model),
            "--discovery",
            "udp",
            "--node-id",
            f"node{i}",
            "--host",
            ip,
            "--api-host",
            ip,
            "--memory",
            "4",
        ]
        with open(tmp_path / f"node{i}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=beacon_env()))
    try:
        probe = "import json,urllib.request;print(urllib.request.urlopen('http://10.77.0.1:52415/v1/cluster',timeout=2).read().decode())"
        info = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            out = in_ns(namespaces[0], probe)
            if out:
                info = json.loads(out)
                if info.get("state") == "ready" and len(info.get("plan", [])) == 3:
                    break
            time.sleep(1)
        logs = "\n".join((tmp_path / f"node{i}.log").read_text()[-800:] for i in range(3))
        assert info.get("state") == "ready" and len(info["plan"]) == 3, logs
        assert info["plan"][-1]["end"] == 6
        ask = (
            "import json,sys,urllib.request;"
            "b=json.dumps({'model':sys.argv[1],'messages':[{'role':'user','content':'hi'}],'max_tokens':5}).encode();"
            "r=urllib.request.urlopen(urllib.request.Request('http://10.77.0.3:52415/v1/chat/completions',b,"
            "{'Content-Type':'application/json'}),timeout=30);print(r.read().decode())"
        )
        answer = json.loads(in_ns(namespaces[2], ask, str(model)))
        assert answer["usage"]["completion_tokens"] == 5
        heard = subprocess.run(
            ["ip", "netns", "exec", namespaces[1], sys.executable, "-m", "exo_actor.cli", "peers", "--timeout", "3"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert "node0" in heard and "node2" in heard
    finally:
        stop_processes(procs)


def test_with_a_cluster_key_only_key_holders_are_heard_or_joined(namespaces, tmp_path):
    """Nodes 0 and 1 share a cluster key; node 2 has another one and also dials node 0's actor port
    directly. The ring is nodes 0 and 1 only; node 2 is neither listed nor joined, hears nobody, and
    `exo-actor peers` with the key lists only the key holders."""
    from exo_actor.transport.security import new_key

    model = tmp_path / "tiny.gguf"
    write_gguf(model, TinySpec(layers=6))
    good, bad = new_key(), new_key()
    (tmp_path / "peers.toml").write_text('peers = ["10.77.0.1:52416"]\n')
    procs = []
    for i, ns in enumerate(namespaces):
        ip = f"10.77.0.{i + 1}"
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "exo_actor.cli", "start", "--model", str(model)]
        cmd += ["--discovery", "udp", "--node-id", f"node{i}", "--host", ip, "--api-host", ip, "--memory", "4"]
        if i == 2:
            cmd += ["--peers", str(tmp_path / "peers.toml")]
        env = beacon_env(EXO_ACTOR_CLUSTER_KEY=good if i < 2 else bad)
        with open(tmp_path / f"node{i}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    probe = "import urllib.request,sys;print(urllib.request.urlopen(sys.argv[1],timeout=2).read().decode())"
    try:
        info: dict = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            out = in_ns(namespaces[0], probe, "http://10.77.0.1:52415/v1/cluster")
            if out:
                info = json.loads(out)
                if info.get("state") == "ready" and len(info.get("plan", [])) == 2:
                    break
            time.sleep(1)
        time.sleep(3)  # give the intruder's beacons and dial every chance
        info = json.loads(in_ns(namespaces[0], probe, "http://10.77.0.1:52415/v1/cluster"))
        logs = "\n".join((tmp_path / f"node{i}.log").read_text()[-800:] for i in range(3))
        assert info["state"] == "ready", logs
        assert sorted(n["id"] for n in info["nodes"]) == ["node0", "node1"], logs
        assert [p["node"] for p in info["plan"]] == ["node0", "node1"]
        intruder = json.loads(in_ns(namespaces[2], probe, "http://10.77.0.3:52415/v1/cluster"))
        assert [n["id"] for n in intruder["nodes"]] == ["node2"]
        assert "not signed with this cluster's key" in (tmp_path / "node0.log").read_text()
        heard = subprocess.run(
            ["ip", "netns", "exec", namespaces[1], sys.executable, "-m", "exo_actor.cli", "peers", "--timeout", "3"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "EXO_ACTOR_CLUSTER_KEY": good},
        ).stdout
        assert "node0" in heard and "node2" not in heard, heard
    finally:
        stop_processes(procs)

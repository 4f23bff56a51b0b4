"""The Ray backend on a local Ray instance this test starts (`ray.init(num_cpus=2)`): a 3-shard ring of
Ray actors with fractional CPUs behind `exo-actor start --backend ray`, serving SmolLM2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from exo_actor.config import NodeConfig
from exo_actor.sampling import SamplingParams
from exo_actor.tokenizer import chat_prompt_ids
from tests.api.servers import free_port, stop_processes
from tests.conftest import require
from tests.test_faults import GREEDY, assert_failed_over, stream_through_fault

ray = require("ray")

from exo_actor.config import RayConfig  # noqa: E402
from exo_actor.ray_backend import NAMESPACE, RayNode  # noqa: E402 - needs ray

pytestmark = [pytest.mark.slow, pytest.mark.ray]
STORY = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
DRIVER = "raytest"
RAY_PAUSE = 2 + 15  # --peer-timeout, then Ray restarts the shard's actor (a new process loads its layers)


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def driver(ray_instance, smollm2_path, tmp_path_factory):
    """`exo-actor start --backend ray` connected to the test's Ray instance: 3 shards, 0.5 CPU each."""
    api = free_port()
    log = tmp_path_factory.mktemp("ray") / "driver.log"
    cmd = [
        sys.executable,
        "-m",
        "exo_actor.cli",
        "-v",
        "start",
        "--backend",
        "ray",
        "--ray-address",
        "auto",
        "--ray-shards",
        "3",
        "--ray-cpus-per-shard",
        "0.5",
        "--node-id",
        DRIVER,
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--api-host",
        "127.0.0.1",
        "--api-port",
        str(api),
        "--peer-timeout",
        "2",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{api}"
    try:
        wait_state(url, "ready", 240, log)
        yield url
    finally:
        stop_processes([proc], timeout=30)  # the driver shuts its actors down first


def wait_state(url: str, state: str, timeout: float, log=None) -> dict:
    deadline = time.monotonic() + timeout
    info: dict = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            info = httpx.get(f"{url}/v1/cluster", timeout=5).json()
            if info["state"] == state:
                return info
            assert info["state"] != "failed", info["error"]
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log is not None else ""
    raise TimeoutError(f"{url} not {state} in {timeout} s: {json.dumps(info)[:800]}\n{tail}")


def chat(url: str, n: int) -> str:
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "smollm2-135m", "messages": STORY, "max_tokens": n, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == n
    return r.json()["choices"][0]["message"]["content"]


@pytest.mark.ring
def test_three_ray_shards_give_single_process_greedy_tokens(driver, smollm2_greedy):
    info = httpx.get(f"{driver}/v1/cluster").json()
    assert info["backend"] == "ray" and info["ray"]["shards"] == 3
    assert [(p["start"], p["end"]) for p in info["plan"]] == [(0, 10), (10, 20), (20, 30)]
    assert all(n["alive"] and n["loaded_plan"] == info["plan_version"] for n in info["nodes"])
    assert len({n["pid"] for n in info["nodes"]}) == 3  # three Ray worker processes
    # every shard is a Ray actor in the driver's placement group, with half a CPU
    pg = ray.util.placement_group_table()[info["ray"]["placement_group"]]
    assert pg["state"] == "CREATED" and pg["strategy"] == "SPREAD"
    assert [b["CPU"] for b in pg["bundles"].values()] == [0.5, 0.5, 0.5]
    assert chat(driver, 24) == smollm2_greedy(STORY[0]["content"], 24)  # chat() checks all 24 came


@pytest.mark.ring
def test_a_killed_shard_actor_is_restarted_and_the_stream_continues(driver, smollm2_reference, smollm2_greedy):
    """Ray kills the middle shard's process mid-stream and restarts it; the driver rejoins the restarted
    host and the stream continues on the ring (its tokens replayed there), ending with the single-process
    text."""
    before = httpx.get(f"{driver}/v1/cluster").json()
    victim = before["nodes"][1]
    actor = ray.get_actor(victim["id"], namespace=NAMESPACE)
    streamed = stream_through_fault(driver, STORY, GREEDY, lambda: ray.kill(actor, no_restart=False), after=3)
    assert_failed_over(streamed, smollm2_reference(STORY, **GREEDY), f"Ray actor {victim['id']} killed", RAY_PAUSE)
    after = wait_state(driver, "ready", 120)
    assert after["ray"]["restarts"] >= 1 and after["plan_version"] != before["plan_version"]
    restarted = next(n for n in after["nodes"] if n["id"] == victim["id"])
    assert restarted["pid"] != victim["pid"] and restarted["alive"]
    assert chat(driver, 24) == smollm2_greedy(STORY[0]["content"], 24)


def run_driver(config: RayConfig, check=None, engine: str = "numpy") -> RayNode:  # type: ignore[no-untyped-def]
    """A RayNode in this process until it is ready or failed; then `await check(node)` if given
    (which needs it ready), then stopped."""
    node = RayNode(NodeConfig(model="smollm2-135m", engine=engine), config)

    async def run() -> None:
        await node.start_async()
        try:
            deadline = time.monotonic() + 180
            while node.state not in ("ready", "failed") and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            if check is not None:
                assert node.state == "ready", (node.state, node.error)
                await check(node)
        finally:
            await node.stop_async()

    asyncio.run(run())
    return node


async def generated(node: RayNode, question: str, n: int) -> str:
    files, router = node.ready_router()
    ids = chat_prompt_ids(files.tokenizer, [{"role": "user", "content": question}])
    return "".join([d.text async for d in router.submit(ids, SamplingParams(max_tokens=n))])


def test_a_cluster_key_secures_the_ray_ring(ray_instance, smollm2_greedy):
    """With a cluster key every host speaks CURVE to the driver and to each other (the ring only
    becomes ready if they all agree on it), and the ring still answers exactly."""
    expected = smollm2_greedy("What is the capital of France?", 8)

    async def check(node: RayNode) -> None:
        assert node.net.key is not None
        assert await generated(node, "What is the capital of France?", 8) == expected

    run_driver(RayConfig(shards=2, cpus_per_shard=0.25, port=0, cluster_key="a-cluster-secret-for-tests"), check)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (RayConfig(shards=2, cpus_per_shard=4, port=0), "a shard needs 4 CPU"),
        (RayConfig(shards=3, placement="STRICT_SPREAD", cpus_per_shard=0.1, port=0), "3 shards on its own machine"),
        (RayConfig(shards=2, placement="STRICT_PACK", cpus_per_shard=1.5, port=0), "STRICT_PACK needs one machine"),
    ],
)
def test_shards_ray_can_never_place_fail_at_once_with_the_reason(ray_instance, smollm2_path, config, expected):
    node = run_driver(config)
    assert node.state == "failed"
    assert expected in node.error and "--ray-shards" in node.error


def test_a_shard_that_cannot_load_fails_the_driver_once_instead_of_restarting_forever(ray_instance, smollm2_path):
    node = run_driver(RayConfig(shards=1, cpus_per_shard=0.25, port=0), engine="no-such-engine")
    assert node.state == "failed"
    assert "no-such-engine" in node.error and "s00" in node.error

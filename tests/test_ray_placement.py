"""The Ray backend on a Ray cluster of several machines (ray.cluster_utils: one raylet per simulated
machine, each with its own CPUs and memory): the placement group spreads the shards, and each shard's
layers follow the memory of the machine its bundle landed on."""

from __future__ import annotations

import pytest

from tests.conftest import require

ray = require("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from exo_actor.config import RayConfig  # noqa: E402
from exo_actor.ray_backend import RayNode  # noqa: E402
from tests.test_ray_backend import generated, run_driver  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]
GB = 2**30
QUESTION = "What is the capital of France?"
MACHINES = {"big": 4 * GB, "small-a": 2 * GB, "small-b": 2 * GB}


@pytest.fixture(scope="module")
def machines():
    """A head without CPUs (so no shard lands there) and three machines of 4, 2 and 2 GiB."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for name, memory in MACHINES.items():
        cluster.add_node(num_cpus=1, memory=memory, resources={name: 1})
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield {
            n["NodeID"]: next(k for k in MACHINES if k in n["Resources"])
            for n in ray.nodes()
            if n["Alive"] and any(k in n["Resources"] for k in MACHINES)
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_shards_spread_over_machines_with_layers_by_their_memory(machines, smollm2_greedy):
    async def check(node: RayNode) -> None:
        layers = {}
        for a in node.assignments:
            machine = machines[node.host_info[a.node_id]["ray_node"]]
            layers[machine] = a.end - a.start
        assert layers == {"big": 15, "small-a": 8, "small-b": 7} or layers == {"big": 15, "small-a": 7, "small-b": 8}
        assert await generated(node, QUESTION, 8) == expected  # and it answers what a single process does

    expected = smollm2_greedy(QUESTION, 8)
    node = run_driver(RayConfig(shards=3, cpus_per_shard=1, port=0), check)
    assert len({i["ray_node"] for i in node.host_info.values()}) == 3

"""The actor layer in one process: ClusterNodes on a tiny model, real ZeroMQ on loopback, the engine injected.

What a ring must do beyond the happy path: refuse a pass of another plan, free every request's caches,
ignore a Truncate overtaken by a newer pass, report a shard's failure to the request's client, and survive
a node that stops answering (a short heartbeat makes that quick)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from exo_actor.actors.ring import RingError
from exo_actor.runtime.generation import generate
from exo_actor.runtime.local import load_local
from exo_actor.sampling import SamplingParams
from exo_actor.transport.messages import Failure, Forward, Free, Truncate
from tests.cluster.harness import CuttableNetwork, InProcessCluster, cut_link, in_process_cluster
from tests.tiny import TinySpec, write_gguf

PROMPT = [5, 17, 42, 8, 99, 3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "tiny.gguf"
    write_gguf(path, TinySpec(layers=6, context=96))
    return path


@pytest.fixture(scope="module")
def expected(tiny) -> list[int]:
    files, pipeline = load_local(str(tiny))
    deltas = generate(
        pipeline, files.tokenizer, PROMPT, SamplingParams(max_tokens=12), files.args.max_position_embeddings
    )
    return [t for d in deltas for t in d.token_ids]


@pytest.fixture(scope="module")
def ring(tiny):
    with in_process_cluster(tiny, 3, memories_gib=[2, 1, 1]) as cluster:
        yield cluster


def caches(cluster: InProcessCluster) -> list[int]:
    """Requests with a KV cache on each node (read on the event loop: pass to cluster.call/wait)."""
    return [len(n.shard.role.runner.caches) for n in cluster.nodes if n.shard.role]


def test_every_node_plans_the_same_ring_and_generates_the_single_process_tokens(ring, expected):
    plans = {n.current for n in ring.nodes}
    assert len(plans) == 1
    (plan,) = plans
    assert [(a.node_id, a.end - a.start) for a in plan.rings[0]] == [("node0", 3), ("node1", 2), ("node2", 1)]
    assert all(n.loaded == plan.version for n in ring.nodes)
    for node in ring.nodes:  # each node's own router drives the same ring
        assert ring.generate(node, PROMPT, 12) == expected
    ring.wait(lambda: caches(ring) == [0, 0, 0], "every shard to free the requests' caches")


def test_a_pass_of_another_plan_is_refused_with_plan_changed(ring):
    node0 = ring.nodes[0]
    got: list[Failure] = []

    def send() -> None:
        node0.net.on(Failure, got.append)
        data = np.asarray([[1, 2]], dtype=np.int64)
        node0.net.send("node1", Forward("stale", "node0", "node0", node0.version ^ 1, 0, 1, data))

    try:
        ring.call(send)
        ring.wait(lambda: bool(got), "the Failure")
    finally:
        ring.call(lambda: node0.net.on(Failure, node0.rings.on_failure))
    assert got[0].code == "plan_changed" and got[0].src == "node1" and got[0].rid == "stale"
    assert "plan changed" in got[0].message
    assert ring.call(lambda: caches(ring)) == [0, 0, 0]  # nothing was computed for it


def test_a_stopping_node_refuses_passes_as_a_ring_change(tiny):
    """A pass that reaches a node whose compute thread is shutting down is answered peer_down (the router
    replays it on the next ring), not shard_error (which would end the request)."""
    with in_process_cluster(tiny, 2) as c:
        node0, node1 = c.nodes
        got: list[Failure] = []

        def send() -> None:
            node0.net.on(Failure, got.append)
            node1.shard.close()
            data = np.asarray([[1, 2]], dtype=np.int64)
            node0.net.send("node1", Forward("late", "node0", "node0", node1.version, 0, 1, data))

        c.call(send)
        c.wait(lambda: bool(got), "the Failure")
        assert got[0].code == "peer_down" and "shutting down" in got[0].message
        assert RingError("x", got[0].code).replayable


def test_a_malformed_message_is_dropped_and_counted(ring):
    import zmq

    node1 = ring.nodes[1]
    before = node1.messages_dropped
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(node1.endpoint)
    try:
        dealer.send_multipart([b"\x81\xa1v\x01", b"junk"])
        ring.wait(lambda: node1.messages_dropped == before + 1, "the malformed message to be counted")
    finally:
        dealer.close()
        ctx.term()
    assert node1.state == "ready"


def test_a_truncate_overtaken_by_a_newer_pass_is_ignored(ring):
    node0, node1 = ring.nodes[0], ring.nodes[1]
    version = node0.version
    hidden = node1.files.args.hidden_size
    x = np.random.default_rng(0).standard_normal((6, hidden)).astype(np.float32)

    def cache_len() -> int:
        cache = node1.shard.role.runner.caches.get("t")
        return cache.length if cache is not None else -1

    # a 6-position pass straight to node1 (as if node0 had forwarded it), then Truncates
    ring.call(lambda: node0.net.send("node1", Forward("t", "node0", "node0", version, 0, 1, x)))
    ring.wait(lambda: cache_len() == 6, "node1 to cache the pass")
    ring.call(lambda: node0.net.send("node1", Truncate("t", "node0", 2, after=3)))  # not its newest pass: ignored
    ring.call(lambda: node0.net.send("node1", Truncate("t", "node0", 4, after=0)))  # its newest pass: applied
    ring.wait(lambda: cache_len() == 4, "the Truncate of the newest pass")
    for node in ring.nodes:
        ring.call(lambda node=node: node0.net.send(node.node_id, Free("t", "node0")))
    ring.wait(lambda: cache_len() == -1, "the Free")


def test_a_shard_that_fails_ends_the_request_with_its_error_and_the_ring_serves_on(ring, expected):
    node2 = ring.nodes[2]
    runner = node2.shard.role.runner
    real = runner.forward_batch

    def broken(passes):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk on fire")

    runner.forward_batch = broken
    try:
        with pytest.raises(RingError, match="node node2: RuntimeError: disk on fire"):
            ring.generate(ring.nodes[0], PROMPT, 4)
    finally:
        runner.forward_batch = real
    assert ring.generate(ring.nodes[0], PROMPT, 12) == expected
    ring.wait(lambda: caches(ring) == [0, 0, 0], "the failed request's caches to be freed")


def single_process(tiny, max_tokens: int, **params) -> list[int]:
    files, pipeline = load_local(str(tiny))
    context = files.args.max_position_embeddings
    deltas = generate(pipeline, files.tokenizer, PROMPT, SamplingParams(max_tokens=max_tokens, **params), context)
    return [t for d in deltas for t in d.token_ids]


def slowed(node, seconds: float) -> None:
    """Make a node's shard take `seconds` per pass (so a request is still running when a node goes). A node
    may still be (re)loading its layers just after the cluster first answered: wait until it holds them."""
    deadline = time.monotonic() + 30
    while (node.shard is None or node.shard.role is None) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.shard is not None and node.shard.role is not None, f"{node.node_id} holds no layers: {node.error}"
    runner = node.shard.role.runner
    batch, single = runner.forward_batch, runner.forward

    def slow_batch(passes):  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        return batch(passes)

    def slow_single(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        return single(*args, **kwargs)

    runner.forward_batch, runner.forward = slow_batch, slow_single


@pytest.mark.parametrize("params", [{}, {"temperature": 0.9, "seed": 7}], ids=["greedy", "seeded"])
def test_a_node_lost_mid_request_is_failed_over_and_the_text_is_unchanged(tiny, params):
    """--wait-for-peers 2 held the first plan until all three met; it does not hold the survivors' plan.
    The request in flight when node2 goes silent waits for the survivors' ring, replays its tokens there,
    and ends with exactly the single-process tokens."""
    expected = single_process(tiny, 60, **params)
    with in_process_cluster(tiny, 3, heartbeat=0.2, timeout=3.0, wait_for_peers=2) as c:
        node0, node1, node2 = c.nodes
        first = node0.version
        slowed(node2, 0.03)
        running = c.start(node0, PROMPT, 60, **params)
        c.wait(lambda: node0.router.tokens_generated >= 10, "the request to be under way")
        c.run(node2.stop_async())  # its sockets close: silent from now on
        assert running.result(60) == expected
        assert node0.version != first and [a.node_id for a in node0.current.assignments] == ["node0", "node1"]
        assert node0.rings.replays() >= 1
        assert c.generate(node1, PROMPT, 60, **params) == expected


@pytest.mark.parametrize("draft", ["ngram", "self"])
def test_failover_with_speculative_decoding_gives_the_same_tokens(tiny, draft):
    """Speculation on (prompt lookup, or the model's own first 2 layers as a draft on each node): the
    request in flight when node2 goes silent ends with the single-process greedy tokens."""
    from exo_actor.config import NodeConfig

    spec = "ngram" if draft == "ngram" else f"{tiny}:layers=2"
    expected = single_process(tiny, 60)

    def config(i: int) -> NodeConfig:
        return NodeConfig(
            model=str(tiny), engine="numpy", prefix_cache_mb=0, draft_model=spec, draft_tokens=4, adaptive_draft=False
        )

    with in_process_cluster(tiny, 3, heartbeat=0.2, timeout=1.5, node_config=config) as c:
        node0, node1, node2 = c.nodes
        slowed(node2, 0.1)  # (verification passes too: a self-draft is accepted whole, so passes are few)
        running = c.start(node0, PROMPT, 60)
        c.wait(lambda: node0.router.tokens_generated >= 10, "the request to be under way")
        c.run(node2.stop_async())
        assert running.result(60) == expected
        assert node0.router.speculation is not None and node0.rings.replays() >= 1
        info = node0.router.speculation_info()
        assert info is not None and info["drafted_tokens"] > 0, info


def test_requests_fail_when_no_ring_can_hold_the_model(tiny):
    """The survivor alone cannot hold the model (its memory is too small): the waiting request ends with a
    clear error instead of waiting forever."""
    with in_process_cluster(tiny, 2, memories_gib=[0.0005, 1], heartbeat=0.2, timeout=1.5) as c:
        node0, node1 = c.nodes
        slowed(node1, 0.03)
        running = c.start(node0, PROMPT, 60)
        c.wait(lambda: node0.router.tokens_generated >= 5, "the request to be under way")
        c.run(node1.stop_async())
        with pytest.raises(RingError, match="no ring can hold the model"):
            running.result(30)
        assert node0.state == "no plan"


def test_wait_for_peers_holds_the_first_plan(tiny):
    with in_process_cluster(tiny, 2, wait_for_peers=2, wait=False) as c:
        c.wait(lambda: all(len(n.net.peers) == 2 for n in c.nodes), "the two nodes to meet")
        for node in c.nodes:
            assert c.call(lambda node=node: (node.state, node.detail, node.version)) == (
                "waiting for peers",
                "1/2 peers",
                0,
            )
            with pytest.raises(Exception, match=r"not ready \(waiting for peers \(1/2 peers\)\)"):
                node.ready_router()


def test_a_cut_link_between_two_nodes_re_plans_around_it_and_heals(tiny):
    """node1 and node2 stop hearing each other while both still hear node0 (an asymmetric partition).
    Every node agrees to leave node2 out (it comes later in ring order), within the peer timeout + 2 s;
    the request in flight continues on the new ring with the single-process tokens; healed, the ring of
    three is back."""
    expected = single_process(tiny, 60)
    with in_process_cluster(tiny, 3, heartbeat=0.2, timeout=1.5, network=CuttableNetwork) as c:
        node0, node1, node2 = c.nodes
        whole = node0.version
        slowed(node1, 0.03)
        running = c.start(node0, PROMPT, 60)
        c.wait(lambda: node0.router.tokens_generated >= 10, "the request to be under way")
        cut_link(c, 1, 2)
        cut = time.monotonic()
        c.wait(
            lambda: len({n.version for n in c.nodes}) == 1 and node0.version != whole and node0.state == "ready",
            "every node to agree on a plan without the cut link",
            timeout=1.5 + 2,
        )
        agreed = time.monotonic() - cut
        assert [a.node_id for a in node0.current.assignments] == ["node0", "node1"], agreed
        assert "cut link" in node0.current.idle["node2"]
        c.wait(lambda: node2.state == "no plan", "node2 to say it is cut off")
        with pytest.raises(Exception, match="cut link"):
            node2.ready_router()
        assert running.result(60) == expected
        assert c.generate(node0, PROMPT, 60) == expected
        cut_link(c, 1, 2, cut=False)
        c.wait(lambda: all(len(n.current.assignments) == 3 for n in c.nodes), "the healed ring", 20)
        c.wait_ready()
        assert c.generate(node2, PROMPT, 60) == expected


def test_kept_prefixes_are_forgotten_when_the_ring_changes(tiny):
    """With the prefix cache on: a finished turn's caches are kept for the next turn; a re-plan drops every
    shard's caches, so the router forgets those entries (nothing left behind on any node) and the next turn
    still gives the single-process tokens."""
    from exo_actor.config import NodeConfig

    turn1 = single_process(tiny, 12)
    with in_process_cluster(
        tiny, 3, heartbeat=0.2, timeout=1.5, node_config=lambda i: NodeConfig(model=str(tiny), engine="numpy")
    ) as c:
        node0, node1, node2 = c.nodes
        assert c.generate(node0, PROMPT, 12) == turn1
        assert node0.router.prefix is not None and node0.router.prefix.info()["entries"] == 1
        first = node0.version
        c.run(node2.stop_async())
        c.wait(lambda: node0.version != first and node0.state == "ready", "the survivors' ring", 20)
        c.wait(lambda: node0.router.prefix.info()["entries"] == 0, "the stale prefix entry to be forgotten")
        c.wait(lambda: caches(c)[:2] == [0, 0], "no caches left on the survivors")
        prompt2 = PROMPT + turn1 + [7, 9]
        files, pipeline = load_local(str(tiny))
        context = files.args.max_position_embeddings
        deltas = generate(pipeline, files.tokenizer, prompt2, SamplingParams(max_tokens=12), context)
        assert c.generate(node0, prompt2, 12) == [t for d in deltas for t in d.token_ids]
        failover = node0.rings.failover(0)
        assert failover is not None and len(failover._requests) <= 1  # only the kept second turn


def test_a_shard_reloaded_under_the_same_plan_gets_the_positions_replayed(tiny):
    """node1 loses every request's KV cache while keeping the plan (as when it re-planned away and back):
    the next pass of the request in flight finds its positions gone ('cache_lost'), the router replays them
    on the same ring, and the request ends with the single-process tokens."""
    from exo_actor.actors.shard import ShardRole

    expected = single_process(tiny, 60)
    with in_process_cluster(tiny, 3) as c:
        node0, node1, _ = c.nodes
        slowed(node1, 0.03)
        running = c.start(node0, PROMPT, 60)
        c.wait(lambda: node0.router.tokens_generated >= 10, "the request to be under way")

        def reload() -> None:
            role = node1.shard.role
            runner = node1.engine.load_shard(node1.files, role.runner.start, role.runner.end)
            node1.shard.role = ShardRole(role.plan, runner, role.next_node)

        c.call(reload)
        assert running.result(60) == expected
        assert node0.rings.replays() >= 1 and node0.version == c.nodes[2].version
        # the replay ran under a new wire id and the old one was freed everywhere: nothing left behind
        c.wait(lambda: caches(c) == [0, 0, 0], "every shard to hold no cache")
        assert any(rid.endswith(".r1") for rid in node1.shard.freed) or node1.shard.freed

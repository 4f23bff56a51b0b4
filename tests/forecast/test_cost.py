"""The cost model (forecast/cost.py): hand-checked figures, the partitioner it shares with the cluster, and
properties that any sane model keeps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_actor.forecast import Calibration, Device, ForecastError, Link, Workload, forecast, place, workload

CAL = Calibration(bandwidth_efficiency=0.5, flops_efficiency=0.5, layer_ms=0.1, hop_ms=1.0, token_ms=0.5, pass_ms=2.0)
WORK = Workload(
    "m",
    layers=10,
    layer_bytes=10**8,
    layer_flops=2 * 10**8,
    head_bytes=5 * 10**7,
    head_flops=10**8,
    activation_bytes=4096,
)


def test_one_device_is_its_streaming_arithmetic_and_fixed_costs():
    dev = Device("a", 16, 100, 10)
    f = forecast(WORK, [dev], Link(5, 1), CAL, streams=1)
    read = (10 * 10**8 + 5 * 10**7) / (100e9 * 0.5)
    compute = (10 * 2 * 10**8 + 10**8) / (10e12 * 0.5)
    fixed = 10 * 0.1e-3 + 2e-3 + 0.5e-3  # layers, the router's pass and token; no hop in one process
    assert f.single_tps == pytest.approx(1 / (read + compute + fixed))
    assert [(d.start, d.end) for d in f.devices] == [(0, 10)]
    assert f.devices[0].weights_gb == pytest.approx(1.05)


def test_a_ring_adds_a_hop_per_device_and_the_link():
    one = forecast(WORK, [Device("a", 16, 100)], Link(0, 1), CAL)
    two = forecast(WORK, [Device("a", 8, 100), Device("b", 8, 100)], Link(5, 1), CAL)
    hop = 5e-3 + 1e-3 + 4096 * 8 / 1e9
    split_layers = 0  # the same layers, split: streaming and fixed costs are unchanged
    assert 1 / two.single_tps - 1 / one.single_tps == pytest.approx(2 * hop + split_layers)


def test_micro_batches_are_the_shares_the_router_makes():
    devs = [Device(n, 8, 100) for n in "abc"]
    assert forecast(WORK, devs, Link(), CAL, streams=4).micro_batches == 2  # 2 + 2, as runtime/batching does
    assert forecast(WORK, devs, Link(), CAL, streams=12).micro_batches == 3
    assert forecast(WORK, devs, Link(), CAL, streams=12, micro_batches=1).micro_batches == 1
    assert forecast(WORK, devs, Link(), CAL, streams=1).micro_batches == 1


def test_micro_batches_overlap_the_devices_work_not_the_links_latency():
    # rows cost arithmetic (a CPU): one batch of 12 keeps one device busy at a time, three keep all three
    slow = [Device(n, 8, 10, 0.01) for n in "abc"]
    one = forecast(WORK, slow, Link(0, 10), CAL, streams=12, micro_batches=1)
    three = forecast(WORK, slow, Link(0, 10), CAL, streams=12)
    assert three.aggregate_tps > 2 * one.aggregate_tps and one.bound == "the ring's round trip"
    # with latency alone, 3 batches of 4 advance once per round trip as 1 batch of 12 does
    fast = [Device(n, 8, 10_000) for n in "abc"]
    one = forecast(WORK, fast, Link(50, 10), CAL, streams=12, micro_batches=1)
    three = forecast(WORK, fast, Link(50, 10), CAL, streams=12)
    assert three.aggregate_tps == pytest.approx(one.aggregate_tps, rel=0.05)


def test_speculation_at_acceptance_zero_drafts_nothing_and_at_one_drafts_the_most():
    devs = [Device("a", 16, 100, 10)]
    none = forecast(WORK, devs, Link(), CAL, acceptance=0.0)
    assert none.draft_tokens == 0 and none.speculative_tps == pytest.approx(none.single_tps)
    sure = forecast(WORK, devs, Link(), CAL, acceptance=1.0, max_draft=8)
    assert sure.draft_tokens == 8 and sure.speculative_tps > 5 * sure.single_tps


def test_devices_and_settings_that_cannot_be_used_are_one_clear_error():
    for text in ("a", "a:1", "a:x:5", "a:1:-5", ":1:2", "a:1:2:3:4", "a:nan:2"):
        with pytest.raises(ForecastError, match="device|number|positive"):
            Device.parse(text)
    assert Device.parse("mini:64:273:17@desk") == Device("mini", 64, 273, 17, "desk")
    with pytest.raises(ForecastError, match="unique"):
        place([Device("a", 1, 1), Device("a", 1, 1)], WORK)
    with pytest.raises(ForecastError, match="does not fit"):
        place([Device("a", 0.5, 1)], WORK)
    with pytest.raises(ForecastError, match="streams"):
        forecast(WORK, [Device("a", 16, 1)], Link(), CAL, streams=0)
    with pytest.raises(ForecastError, match="acceptance"):
        forecast(WORK, [Device("a", 16, 1)], Link(), CAL, acceptance=1.5)
    with pytest.raises(ForecastError, match="latency"):
        Link(-1, 1)


def test_a_registry_model_not_here_is_priced_from_its_recorded_shape():
    w = workload("llama-3.1-70b", "q4")
    total = w.layers * w.layer_bytes + w.head_bytes
    assert w.layers == 80 and 38e9 < total < 46e9  # ~70.6 B parameters at ~4.5-5 bits
    assert workload("llama-3.1-70b", "q8").layer_bytes == pytest.approx(2 * w.layer_bytes, rel=0.01)
    with pytest.raises(ForecastError, match="quant"):
        workload("llama-3.1-70b", "q3")
    with pytest.raises(ForecastError, match="no such file"):
        workload("./nowhere/model.gguf")


def test_a_local_model_is_priced_from_its_files(tmp_path):
    from tests.tiny import TinySpec, write_gguf

    path = tmp_path / "tiny.gguf"
    write_gguf(path, TinySpec(layers=3))
    w = workload(str(path))
    assert w.layers == 3 and w.layer_bytes > 0 and w.activation_bytes == 4 * 64


devices = st.lists(
    st.builds(
        Device,
        st.uuids().map(str),
        st.floats(0.5, 128),
        st.floats(1, 1000),
        st.one_of(st.none(), st.floats(0.1, 100)),
    ),
    min_size=1,
    max_size=6,
)
GIB_WORK = Workload("w", 32, 5 * 10**8, 10**9, 4 * 10**8, 10**9, 16384)


@settings(max_examples=200, deadline=None)
@given(devices, st.floats(1.01, 8), st.integers(1, 16))
def test_more_bandwidth_never_predicts_slower(devs, factor, streams):
    try:
        before = forecast(GIB_WORK, devs, Link(1, 10), CAL, streams)
    except ForecastError:
        return  # does not fit: nothing to compare
    faster = [Device(d.name, d.memory_gb, d.bandwidth_gbps * factor, d.tflops) for d in devs]
    after = forecast(GIB_WORK, faster, Link(1, 10), CAL, streams)
    assert after.single_tps >= before.single_tps and after.aggregate_tps >= before.aggregate_tps * (1 - 1e-9)


@settings(max_examples=200, deadline=None)
@given(devices, st.floats(0.5, 128), st.floats(1, 1000))
def test_adding_a_device_never_loses_layers_and_memory_always_holds_the_shard(devs, memory, bandwidth):
    try:
        before = forecast(GIB_WORK, devs, Link(), CAL)
    except ForecastError:
        return
    after = forecast(GIB_WORK, [*devs, Device("extra", memory, bandwidth)], Link(), CAL)
    for f in (before, after):
        assert sum(d.end - d.start for d in f.devices) == GIB_WORK.layers
        assert [d.start for d in f.devices][0] == 0 and f.devices[-1].end == GIB_WORK.layers
        for d in f.devices:
            assert d.weights_gb <= d.device.memory_gb + 1e-9
        assert all(math.isfinite(x) and x > 0 for x in (f.single_tps, f.aggregate_tps))

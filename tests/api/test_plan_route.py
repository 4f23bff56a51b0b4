"""/v1/plan on a real uvicorn server: this cluster as editable devices (GET), a forecast (POST), and one
OpenAI-shaped 400 for every kind of bad input."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_errors import assert_error


def test_get_offers_this_node_as_a_device(tiny_server):
    body = httpx.get(tiny_server.url + "/v1/plan", timeout=30).json()
    assert len(body["devices"]) == 1 and body["devices"][0].count(":") == 2
    assert isinstance(body["calibrated"], bool)


def test_post_forecasts_a_registry_model_over_the_given_devices(tiny_server):
    req = {
        "model": "llama-3.1-70b",
        "devices": ["mini1:64:273:17", {"name": "mini2", "memory_gb": 64, "bandwidth_gbps": 273, "tflops": 17}],
        "link_ms": 0.3,
        "link_gbps": 10,
        "streams": 4,
        "acceptance": 0.7,
    }
    r = httpx.post(tiny_server.url + "/v1/plan", json=req, timeout=30)
    assert r.status_code == 200, r.text
    f = r.json()
    assert [d["name"] for d in f["devices"]] == ["mini1", "mini2"]
    assert f["devices"][0]["layers"] == [0, 40] and f["devices"][1]["layers"] == [40, 80]
    assert 0 < f["single_tps"] < f["aggregate_tps"] and f["speculative_tps"] > f["single_tps"]
    assert f["streams"] == 4 and f["micro_batches"] == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "devices must be a list"),
        ({"devices": []}, "devices must be a list"),
        ({"devices": ["nope"]}, "NAME:MEMORY_GB:BANDWIDTH_GBps"),
        ({"devices": [5]}, "a device is"),
        ({"devices": ["a:1:1"], "streams": 0}, "streams"),
        ({"devices": ["a:1:1"], "streams": True}, "streams"),
        ({"devices": ["a:1:1"], "link_ms": -1}, "link_ms"),
        ({"devices": ["a:1:1"], "acceptance": 2}, "acceptance"),
        ({"devices": ["a:1:1"], "quant": "q3"}, "quant"),
        ({"devices": ["a:1:1"], "model": "no-such-model"}, "no-such-model"),
        ({"devices": ["a:0.001:1"], "model": "llama-3.1-70b"}, "does not fit"),
        ({"devices": ["a:1:1"], "colour": "red"}, "unknown field"),
    ],
)
def test_bad_plans_are_one_clear_400(tiny_server, body, needle):
    r = httpx.post(tiny_server.url + "/v1/plan", json=body, timeout=30)
    err = assert_error(r, 400)
    assert needle in err["message"], err

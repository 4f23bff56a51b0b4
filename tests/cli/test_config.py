"""NodeConfig / ClusterConfig / RayConfig refuse impossible settings when made, with one ConfigError naming
the setting, whoever builds them (the CLI, serve()'s callers, tests)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from exo_actor.config import RAY_PLACEMENTS, ClusterConfig, NodeConfig, RayConfig
from exo_actor.errors import ConfigError, ExoError


def test_the_defaults_are_valid():
    NodeConfig()
    ClusterConfig()
    RayConfig()


@pytest.mark.parametrize(
    ("settings", "setting", "problem"),
    [
        ({"model": ""}, "model", "must name a model"),
        ({"max_concurrent": 0}, "max_concurrent", "must be >= 1, got 0"),
        ({"max_concurrent": 2.5}, "max_concurrent", "must be an integer, got 2.5"),
        ({"draft_tokens": 0}, "draft_tokens", "must be >= 1, got 0"),
        ({"draft_tokens": 17}, "draft_tokens", "must be <= 16, got 17"),
        ({"prefix_cache_mb": -1}, "prefix_cache_mb", "must be >= 0, got -1"),
    ],
)
def test_node_config(settings: dict[str, Any], setting: str, problem: str):
    assert_refused(NodeConfig, settings, setting, problem)


@pytest.mark.parametrize(
    ("settings", "setting", "problem"),
    [
        ({"port": 65536}, "port", "must be a port (0-65535), got 65536"),
        ({"port": -1}, "port", "must be a port (0-65535), got -1"),
        ({"advertise": ""}, "advertise", "must be the host peers reach this node at"),
        ({"advertise_port": 0}, "advertise_port", "must be a port (1-65535), got 0"),
        ({"memory": 0}, "memory", "must be >= 1, got 0"),
        ({"wait_for_peers": -1}, "wait_for_peers", "must be >= 0, got -1"),
        ({"rings": 0}, "rings", "must be >= 1, got 0"),
        ({"rings": True}, "rings", "must be an integer, got True"),
        ({"discovery": "mdns"}, "discovery", "must be one of manual, udp, got 'mdns'"),
        ({"discovery_port": 0}, "discovery_port", "must be a port (1-65535), got 0"),
        ({"heartbeat": 0}, "heartbeat", "must be a positive number, got 0"),
        ({"heartbeat": float("nan")}, "heartbeat", "must be a positive number, got nan"),
        ({"timeout": -3.0}, "timeout", "must be a positive number, got -3.0"),
        ({"step_timeout": float("inf")}, "step_timeout", "must be a positive number, got inf"),
        ({"heartbeat": 1.0, "timeout": 2.0}, "timeout", "(2 s) must exceed twice heartbeat (1 s)"),
    ],
)
def test_cluster_config(settings: dict[str, Any], setting: str, problem: str):
    assert_refused(ClusterConfig, settings, setting, problem)


@pytest.mark.parametrize(
    ("settings", "setting", "problem"),
    [
        ({"address": "nowhere"}, "address", "nowhere: expected auto, HOST:PORT or ray://HOST:PORT"),
        ({"address": "ray://h:99999"}, "address", "ray://h:99999: expected auto"),
        ({"shards": 0}, "shards", "must be >= 1, got 0"),
        ({"placement": "RANDOM"}, "placement", "must be one of SPREAD, PACK, STRICT_SPREAD, STRICT_PACK"),
        ({"cpus_per_shard": 0}, "cpus_per_shard", "must be a positive number, got 0"),
        ({"port": 70000}, "port", "must be a port (0-65535), got 70000"),
        ({"heartbeat": 2.0}, "timeout", "(3 s) must exceed twice heartbeat (2 s)"),
        ({"step_timeout": 0}, "step_timeout", "must be a positive number, got 0"),
        ({"placement_timeout": -1}, "placement_timeout", "must be a positive number, got -1"),
    ],
)
def test_ray_config(settings: dict[str, Any], setting: str, problem: str):
    assert_refused(RayConfig, settings, setting, problem)


def test_valid_edges_are_accepted():
    ClusterConfig(port=0, advertise_port=65535, wait_for_peers=0, heartbeat=1.0, timeout=2.01, memory=1)
    NodeConfig(draft_tokens=16, prefix_cache_mb=0, max_concurrent=1)
    for placement in RAY_PLACEMENTS:
        RayConfig(placement=placement, cpus_per_shard=0.25, shards=1)
    for address in (None, "", "auto", "head:6379", "ray://head:10001"):
        RayConfig(address=address)


def test_a_config_error_is_an_exo_error_that_survives_pickling():
    with pytest.raises(ExoError) as exc:
        ClusterConfig(rings=0)
    again = pickle.loads(pickle.dumps(exc.value))
    assert isinstance(again, ConfigError) and str(again) == str(exc.value) and again.setting == "rings"


def assert_refused(config: type, settings: dict[str, Any], setting: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config(**settings)
    assert (exc.value.config, exc.value.setting) == (config.__name__, setting)
    assert str(exc.value).startswith(f"{config.__name__}.{setting} {problem}"), str(exc.value)
    assert "\n" not in str(exc.value)

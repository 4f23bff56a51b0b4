"""torch_cache.pack_in_child: a child process packs a shard into the cache, and the engine maps what it saved."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from exo_actor.engines import get_engine
from exo_actor.weights import open_model
from tests.tiny import TinySpec, write_gguf

torch = pytest.importorskip("torch")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("EXO_ACTOR_CACHE", str(tmp_path / "cache"))
    write_gguf(tmp_path / "m.gguf", TinySpec(context=64, tied=True, intermediate=96), qtype=Q.Q4_1)
    return open_model(tmp_path / "m.gguf")


def test_a_shard_packed_in_a_child_runs_like_one_packed_here(tiny, tmp_path, monkeypatch):
    from exo_actor.engines import torch_cache, torch_linear

    prompt = np.arange(3, 12)
    here = get_engine("torch").load_shard(tiny, 0, 4).forward("r", prompt, 0, len(prompt))
    for old in (tmp_path / "cache").glob("*.pt"):
        old.unlink()
    assert torch_cache.pack_in_child(tiny.path, 0, 4, tiny.args.num_hidden_layers, None, 1)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    monkeypatch.setattr(torch_cache, "CHILD_MIN_BYTES", 0)  # the engine's own path, for a tiny file
    (saved,) = (tmp_path / "cache").glob("*.pt")
    saved.unlink()

    def no_packing(*args, **kwargs):
        raise AssertionError("packed in the serving process")

    monkeypatch.setattr(torch_linear.QLinear, "__init__", no_packing)  # the child process is not affected
    runner = get_engine("torch").load_shard(tiny, 0, 4)
    assert saved.exists()
    np.testing.assert_array_equal(runner.forward("r", prompt, 0, len(prompt)), here)


def test_a_child_that_fails_is_one_log_line_and_the_engine_packs_itself(tiny, tmp_path, monkeypatch, caplog):
    from exo_actor.engines import torch_cache

    caplog.set_level(logging.INFO, logger="exo_actor.engines.torch_cache")
    assert not torch_cache.pack_in_child(tmp_path / "missing.gguf", 0, 4, 4, None, 1)
    assert "failed" in caplog.text and "missing.gguf" in caplog.text

    monkeypatch.setattr(torch_cache, "CHILD_MIN_BYTES", 0)
    monkeypatch.setattr(torch_cache, "pack_in_child", lambda *args: False)
    runner = get_engine("torch").load_shard(tiny, 0, 4)
    assert runner.forward("r", np.arange(3, 6), 0).shape == (1, tiny.args.vocab_size)


@pytest.mark.parametrize("child", [False, True])
def test_a_draft_cut_to_k_layers_and_a_shard_ending_at_k_are_cached_apart(tiny, monkeypatch, child):
    """The draft holds the head after layer 2, the ring's shard [0, 2) does not: one cache entry each."""
    import dataclasses

    from exo_actor.engines import torch_cache

    if child:
        monkeypatch.setattr(torch_cache, "CHILD_MIN_BYTES", 0)
    draft = dataclasses.replace(tiny, args=dataclasses.replace(tiny.args, num_hidden_layers=2))
    shard = get_engine("torch").load_shard(tiny, 0, 2)
    cut = get_engine("torch").load_shard(draft, 0, 2)
    assert shard.head is None and cut.head is not None
    assert get_engine("torch").load_shard(draft, 0, 2).forward("r", np.arange(3, 6), 0).shape == (
        1,
        tiny.args.vocab_size,
    )
    assert get_engine("torch").load_shard(tiny, 0, 2).head is None


def test_saving_a_packing_removes_the_stale_ones_and_keeps_the_rest(tmp_path, monkeypatch, caplog):
    """Removed: the same shard under another key unused for over an hour, any packing unused for longer than
    EXO_ACTOR_CACHE_DAYS, an interrupted save's leftover. Kept: the same shard's other key used a minute ago
    (another node on this machine with another --quantize), other shards and models used recently, files that
    are not packings."""
    import os
    import time

    from exo_actor.engines import torch_cache

    monkeypatch.setenv("EXO_ACTOR_CACHE_DAYS", "7")
    cache, now = tmp_path / "cache", time.time()
    cache.mkdir()
    ages = {
        "m.Q4_1-0-10-aaaaaaaaaaaaaaaa.pt": 2 * 3600,  # same shard, older key: removed
        "m.Q4_1-0-10-bbbbbbbbbbbbbbbb.pt": 60,  # same shard, used a minute ago: kept
        "m.Q4_1-10-30-cccccccccccccccc.pt": 2 * 86400,  # another shard of the model: kept
        "other-0-30-dddddddddddddddd.pt": 8 * 86400,  # unused for 8 days: removed
        "m.Q4_1-0-10-eeeeeeeeeeeeeeee.123.tmp": 2 * 3600,  # an interrupted save: removed
        "notes.txt": 90 * 86400,  # not ours: kept
        "m.Q4_1-0-10-other-0-30-1111111111111111.pt": 2 * 3600,  # another model whose name starts alike: kept
    }
    for name, age in ages.items():
        (cache / name).write_bytes(b"x" * 10)
        os.utime(cache / name, (now - age, now - age))
    caplog.set_level(logging.INFO, logger="exo_actor.engines.torch_cache")
    saved = cache / "m.Q4_1-0-10-ffffffffffffffff.pt"
    torch_cache.save(saved, {"w": torch.zeros(2)})
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [
            "m.Q4_1-0-10-bbbbbbbbbbbbbbbb.pt",
            "m.Q4_1-10-30-cccccccccccccccc.pt",
            "m.Q4_1-0-10-other-0-30-1111111111111111.pt",
            "notes.txt",
            saved.name,
        ]
    )
    assert "removed 3 stale packed-weights file(s)" in caplog.text


def test_loading_a_packing_marks_it_used_and_a_bad_age_setting_is_one_warning(tmp_path, monkeypatch, caplog):
    import os
    import time

    from exo_actor.engines import torch_cache

    path = tmp_path / "m-0-4-0123456789abcdef.pt"
    torch.save({"w": torch.ones(3)}, path)
    week_ago = time.time() - 7 * 86400
    os.utime(path, (week_ago, week_ago))
    assert torch_cache.load(path) is not None
    assert time.time() - path.stat().st_mtime < 60

    monkeypatch.setenv("EXO_ACTOR_CACHE_DAYS", "soon")
    caplog.set_level(logging.WARNING, logger="exo_actor.engines.torch_cache")
    assert torch_cache._max_age() == torch_cache.DEFAULT_MAX_DAYS * 86400
    assert "EXO_ACTOR_CACHE_DAYS='soon' is not a number of days" in caplog.text

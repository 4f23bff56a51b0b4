"""OLMo 2, Mistral, Gemma 2, Gemma 3 and Phi-3 against transformers, from Hugging Face folders and from GGUF files
written as llama.cpp's converter writes them (Gemma's norms stored with the 1 of (1 + w) added, q/k rows not
permuted for the NeoX-RoPE families, Mistral as a permuted `llama`).

What each tiny model exercises: OLMo 2 its post-norms and the RMSNorms of the whole q and k projections;
Mistral a sliding window of 8 keys in every layer; Gemma 2 sandwich norms, GeGLU, scaled embeddings, a
window in every other layer, attention and final logit soft-capping; Gemma 3 q/k head norms, five sliding
layers per full one (the real default pattern, six layers) and a separate RoPE base for the sliding ones;
Phi-3 its fused qkv / gate_up tensors (GGUF attn_qkv, a 2F-row ffn_up), a window in every layer, and LongRoPE.
Prompts are longer than the window. Tolerance: numpy logits within ATOL (2e-4) of transformers' float32
eager attention; greedy tokens identical.

A Mistral GGUF has no window: llama.cpp's converter writes Mistral as `llama` and llama.cpp attends over
the whole context, so the GGUF is checked against a window-less reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from exo_actor.engines import get_engine
from exo_actor.engines.base import Pass
from exo_actor.errors import UnsupportedModelError
from exo_actor.models.config import FULL, SLIDING, ModelArgs
from exo_actor.runtime.generation import generate
from exo_actor.runtime.prefix_cache import PrefixCache
from exo_actor.sampling import SamplingParams
from exo_actor.speculative import Speculation
from exo_actor.speculative.drafts import NgramDrafter
from exo_actor.weights import open_model
from exo_actor.weights.sizes import shard_bytes
from tests.conftest import require
from tests.models.helpers import ATOL, all_logits, check_torch_engine, greedy, hf_greedy, pipeline, write_quantized
from tests.tiny import TinySpec, write_gguf, write_hf_folder

FAMILIES = {
    "olmo2": TinySpec(architecture="olmo2"),
    "mistral": TinySpec(architecture="mistral", sliding_window=8),
    "gemma2": TinySpec(
        architecture="gemma2", explicit_head_dim=16, sliding_window=8, attn_softcap=5.0, final_softcap=3.0
    ),
    "gemma3": TinySpec(architecture="gemma3", layers=6, explicit_head_dim=16, sliding_window=8, rope_theta=1e6),
    "phi3": TinySpec(architecture="phi3", kv_heads=4, sliding_window=8),
}
# Phi-3 with LongRoPE from an original context of 32 to 128: the long factors apply (llama.cpp's rule, and
# transformers' for a sequence longer than 32, which the comparisons use)
LONGROPE = TinySpec(architecture="phi3", kv_heads=4, tied=False, original_context=32, context=128)
IDS = [int(i) for i in np.random.default_rng(1).integers(3, 300, size=40)]
WINDOWED = ["mistral", "gemma2", "gemma3", "phi3"]


def _write(tmp_path, spec: TinySpec, source: str):
    """(the model's path for `source`, the Hugging Face folder of its reference)."""
    ref = tmp_path / "hf"
    if source == "hf":
        write_hf_folder(ref, spec)
        return ref, ref
    write_gguf(tmp_path / "m.gguf", spec)
    if spec.architecture == "mistral":  # the converter drops Mistral's window (see the module's note)
        spec = dataclasses.replace(spec, sliding_window=None)
    write_hf_folder(ref, spec)
    return tmp_path / "m.gguf", ref


@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(tmp_path, family, source):
    require("transformers")
    from tests.reference import hf_logits

    path, ref = _write(tmp_path, FAMILIES[family], source)
    files, pipe = pipeline(path)
    assert files.args.architecture == ("llama" if (family, source) == ("mistral", "gguf") else family)
    got = all_logits(pipe, IDS, prefill=25)  # a prompt of 25 > the window, then decode steps
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, hf_logits(ref, IDS), atol=ATOL, rtol=1e-3)


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_phi3_longrope_matches_transformers_beyond_the_original_context(tmp_path, source):
    """LongRoPE's long factors and its cos / sin factor sqrt(1 + ln 4 / ln 32), from config.json and from the
    converter's rope_factors_long / _short tensors and attn_factor; logits over 40 positions and greedy
    tokens after a 34-token prompt (transformers picks the factors by sequence length: beyond 32, long)."""
    require("transformers")
    from tests.reference import hf_logits

    path, ref = _write(tmp_path, LONGROPE, source)
    files, pipe = pipeline(path)
    assert files.args.rope_attention_factor == pytest.approx((1 + np.log(4) / np.log(32)) ** 0.5, rel=1e-6)
    assert "longrope" in files.args.features
    np.testing.assert_allclose(all_logits(pipe, IDS, prefill=34), hf_logits(ref, IDS), atol=ATOL, rtol=1e-3)
    assert greedy(pipe, IDS[:34], 16) == hf_greedy(ref, IDS[:34], 16)


def test_gemma2_query_scale_other_than_the_head_dim(tmp_path):
    """query_pre_attn_scalar (Gemma 2 27B scales by hidden / heads) from config.json."""
    require("transformers")
    from tests.reference import hf_logits

    spec = dataclasses.replace(FAMILIES["gemma2"], query_pre_attn_scalar=40)
    path, ref = _write(tmp_path, spec, "hf")
    files, pipe = pipeline(path)
    assert files.args.attn_scale == pytest.approx(40**-0.5) and "query_scale" in files.args.features
    np.testing.assert_allclose(all_logits(pipe, IDS, prefill=25), hf_logits(ref, IDS), atol=ATOL, rtol=1e-3)


@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_tokens_match_transformers(tmp_path, family, source):
    require("transformers")
    # untied: the tiny tied models soon repeat one token, which could not tell implementations apart
    path, ref = _write(tmp_path, dataclasses.replace(FAMILIES[family], tied=False), source)
    prompt = IDS[:12]
    want = hf_greedy(ref, prompt, 40)
    assert len(set(want)) > 3  # a sequence that can tell implementations apart
    assert greedy(pipeline(path)[1], prompt, 40) == want


@pytest.mark.parametrize("family", WINDOWED + ["olmo2"])
def test_the_family_switches_matter(tmp_path, family):
    """The same weights without the family's window (or, for OLMo 2, with unit q/k norms) give other logits:
    the comparisons above can fail."""
    path, _ = _write(tmp_path, FAMILIES[family], "hf")
    files, pipe = pipeline(path)
    want = pipe.forward("a", np.array(IDS), 0)
    shard = pipe.shards[0].shard
    if family == "olmo2":
        for layer in shard.w.layers:
            layer.q_norm, layer.k_norm = np.ones_like(layer.q_norm), np.ones_like(layer.k_norm)
    else:
        shard.windows = [None] * len(shard.windows)
    assert np.abs(pipe.forward("b", np.array(IDS), 0) - want).max() > 100 * ATOL


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_shards_give_identical_tokens_and_logits(tmp_path, family, shards):
    path, _ = _write(tmp_path, FAMILIES[family], "gguf")
    _, one = pipeline(path, 1)
    _, many = pipeline(path, shards)
    np.testing.assert_array_equal(all_logits(many, IDS, 20), all_logits(one, IDS, 20))
    assert greedy(many, IDS[:12], 32) == greedy(one, IDS[:12], 32)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_decode_rows_equal_lone_rows(tmp_path, family):
    """Continuous batching on numpy: each request's row is bitwise what it gets alone, windows included
    (the requests sit at positions on both sides of the window's length)."""
    path, _ = _write(tmp_path, FAMILIES[family], "gguf")
    files = open_model(path)
    n = files.args.num_hidden_layers
    batched, lone = (get_engine("numpy").load_shard(files, 0, n) for _ in range(2))
    prompts = {"a": IDS[:3], "b": IDS[:12], "c": IDS[5:25]}
    for rid, p in prompts.items():
        batched.forward(rid, np.array(p), 0), lone.forward(rid, np.array(p), 0)
    passes = [Pass(rid, np.array([11 + i]), len(p)) for i, (rid, p) in enumerate(prompts.items())]
    for p, got in zip(passes, batched.forward_batch(passes)):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, lone.forward(p.request_id, p.tokens, p.start_pos))


def _tokens(pipe, files, ids, prefix=None, spec=None, n=16):
    params = SamplingParams(max_tokens=n, ignore_eos=True)
    return [t for d in generate(pipe, files.tokenizer, ids, params, 128, None, spec, prefix) for t in d.token_ids]


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_sliding_window_with_the_prefix_cache_and_speculation(tmp_path, family):
    """A prompt longer than the window gives transformers' tokens; so does the next turn continued from the
    prefix cache (its cached keys span several windows), with and without speculative decoding (whose
    rejected drafts roll the cache back)."""
    require("transformers")
    path, ref = _write(tmp_path, dataclasses.replace(FAMILIES[family], tied=False), "hf")
    files, pipe = pipeline(path, 2)
    turn1 = IDS[:20]
    assert _tokens(pipe, files, turn1) == (reply := hf_greedy(ref, turn1, 16))
    turn2 = turn1 + reply[:-1] + [50, 51, 52]
    want = hf_greedy(ref, turn2, 16)
    for spec in (None, Speculation(NgramDrafter(), 4, adaptive=False)):
        cache = PrefixCache(budget_tokens=10_000)
        assert _tokens(pipe, files, turn1, cache, spec) == reply
        assert _tokens(pipe, files, turn2, cache, spec) == want
        assert cache.info()["reused_tokens"] >= len(turn1) + len(reply) - 2
        for rid in cache.clear():
            pipe.free(rid)


@pytest.mark.parametrize("family", WINDOWED)
def test_truncation_then_other_tokens_equals_a_fresh_request(tmp_path, family):
    """KV truncation (speculative rollback, prefix adoption) under a window: positions written after a cut
    see the keys a fresh request would (keys of the cut-off positions would move the logits by far more)."""
    path, _ = _write(tmp_path, FAMILIES[family], "gguf")
    files, pipe = pipeline(path)
    pipe.forward("r", np.array(IDS[:30]), 0)
    pipe.truncate("r", 17)
    other = [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    got = pipe.forward("r", np.array(other), 17, num_logits=10)
    want = pipe.forward("fresh", np.array(IDS[:17] + other), 0, num_logits=10)
    np.testing.assert_allclose(got, want, atol=1e-4)  # products over 10 rows vs 27 round differently


@pytest.mark.parametrize("family", [*FAMILIES, "phi3-longrope"])
def test_mlx_matches_numpy(tmp_path, family):
    """MLX (float32, the Metal path on Apple Silicon; its CPU build here) runs every dense family within
    1e-4 of numpy (tests/engines/test_engines.py's tolerance): a prompt and cached decode steps over two shards."""
    require("mlx.core")
    spec = LONGROPE if family == "phi3-longrope" else FAMILIES[family]
    files = open_model(_write(tmp_path, spec, "gguf")[0])
    n = files.args.num_hidden_layers
    ref = get_engine("numpy").load_shard(files, 0, n)
    first, last = get_engine("mlx").load_shard(files, 0, 2), get_engine("mlx").load_shard(files, 2, n)
    P = 34 if family == "phi3-longrope" else 20
    got = last.forward("r", first.forward("r", np.array(IDS[:P]), 0), 0, P)
    np.testing.assert_allclose(got, ref.forward("r", np.array(IDS[:P]), 0, P), atol=1e-4)
    for pos, tok in enumerate(IDS[P : P + 4], start=P):  # decode steps beyond the window
        got = last.forward("r", first.forward("r", np.array([tok]), pos), pos)
        np.testing.assert_allclose(got, ref.forward("r", np.array([tok]), pos), atol=1e-4)


@pytest.mark.parametrize("family", ["gemma3", "qwen3moe"])
def test_tinygrad_refuses_what_it_lacks_in_one_line(tmp_path, family):
    require("tinygrad")
    path = tmp_path / "m.gguf"
    write_gguf(path, FAMILIES.get(family) or TinySpec(architecture=family))
    with pytest.raises(UnsupportedModelError) as info:
        get_engine("tinygrad").load_shard(open_model(path), 0, 2)
    message = str(info.value)
    assert "\n" not in message and f"the tinygrad engine does not run {family} models" in message
    lacks = "mixture-of-experts layers" if family == "qwen3moe" else "sliding-window attention"
    assert lacks in message and "--engine numpy" in message


@pytest.mark.parametrize("source", ["hf-bf16", "gguf-q8"])
@pytest.mark.parametrize("family", [*FAMILIES, "phi3-longrope"])
def test_torch_engine_within_its_tolerance_of_numpy(tmp_path, family, source):
    """The fast engine runs every dense family within its stated tolerance of numpy: a prompt beyond its
    row-attention limit (the causal attention call, windowed or soft-capped), decode steps, and batched decode
    rows (one inside the window, one beyond it)."""
    require("torch")
    spec = LONGROPE if family == "phi3-longrope" else dataclasses.replace(FAMILIES[family], tied=False)
    files = open_model(write_quantized(tmp_path, spec, source))
    P = 34 if family == "phi3-longrope" else 20
    check_torch_engine(files, IDS[:P], IDS[P : P + 5], {"a": IDS[:3], "b": IDS[:12]})


@pytest.mark.parametrize("family", ["olmo2", "gemma3"])
def test_memory_accounting_counts_every_norm(tmp_path, family):
    path, _ = _write(tmp_path, FAMILIES[family], "gguf")
    files = open_model(path)
    runner = get_engine("numpy").load_shard(files, 1, 3)
    assert shard_bytes(files.args, files.kinds, 1, 3, "numpy") == runner.weight_bytes
    assert files.args.shard_bytes(1, 3) == runner.weight_bytes


_GEMMA3 = {
    "model_type": "gemma3_text",
    "hidden_size": 64,
    "num_hidden_layers": 12,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "vocab_size": 10,
    "sliding_window": 512,
    "hidden_activation": "gelu_pytorch_tanh",
    "query_pre_attn_scalar": 16,
}


def test_config_json_of_each_family():
    args = ModelArgs.from_hf_dict({**_GEMMA3, "rope_theta": 1e6, "rope_scaling": {"rope_type": "linear", "factor": 8}})
    assert args.layer_types == tuple(FULL if i in (5, 11) else SLIDING for i in range(12))  # the default pattern
    assert args.layer_window(0) == 512 and args.layer_window(5) is None
    assert args.layer_rope(0) == (10000.0, None) and args.layer_rope(5) == (1e6, {"rope_type": "linear", "factor": 8})
    assert (args.norm_layout, args.norm_plus_one, args.hidden_act, args.qk_norm_sizes) == (
        "sandwich",
        True,
        "gelu_tanh",
        (16, 16),
    )
    # transformers >= 5 writes both RoPE bases nested by layer type
    nested = {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 5e4},
    }
    args = ModelArgs.from_hf_dict({**_GEMMA3, "rope_parameters": nested, "sliding_window_pattern": 3})
    assert args.layer_rope(0) == (5e4, None) and args.layer_rope(2)[0] == 1e6 and args.layer_window(2) is None
    olmo = ModelArgs.from_hf_dict({**_GEMMA3, "model_type": "olmo2", "hidden_act": "silu", "hidden_activation": None})
    assert (olmo.norm_layout, olmo.qk_norm_sizes, olmo.sliding_window) == ("post", (64, 16), None)
    # Qwen's sliding_window is ignored unless use_sliding_window; Mistral's slides in every layer
    qwen = ModelArgs.from_hf_dict({**_GEMMA3, "model_type": "qwen2", "hidden_activation": "silu"})
    assert qwen.sliding_window is None and qwen.layer_window(0) is None
    mistral = ModelArgs.from_hf_dict({**_GEMMA3, "model_type": "mistral", "hidden_activation": "silu"})
    assert all(mistral.layer_window(i) == 512 for i in range(12)) and not mistral.features - {"sliding_window"}
    phi3 = {**_GEMMA3, "model_type": "phi3", "hidden_activation": "silu", "max_position_embeddings": 4096}
    assert ModelArgs.from_hf_dict(phi3).rope_attention_factor is None
    with pytest.raises(UnsupportedModelError, match="partial_rotary_factor 0.75 is not supported"):
        ModelArgs.from_hf_dict({**phi3, "partial_rotary_factor": 0.75})
    with pytest.raises(UnsupportedModelError, match="longrope scaling is incomplete"):
        ModelArgs.from_hf_dict({**phi3, "rope_scaling": {"type": "longrope", "long_factor": [1.0] * 8}})
    with pytest.raises(UnsupportedModelError, match=r"model_type 'falcon' is not supported \(supported: .*gemma3_text"):
        ModelArgs.from_hf_dict({**_GEMMA3, "model_type": "falcon"})
    for bad, match in (
        ({"hidden_activation": "relu2"}, "activation 'relu2' is not supported"),
        ({"layer_types": ["full_attention"]}, "layer_types must list"),
        ({"use_bidirectional_attention": True}, "bidirectional attention"),
        ({"sliding_window_pattern": 0}, "sliding_window_pattern must be a positive integer"),
        ({"sliding_window": -1}, "sliding_window must be a positive integer"),
        ({"final_logit_softcapping": "30"}, "final_logit_softcapping must be a positive number"),
    ):
        with pytest.raises(UnsupportedModelError, match=match):
            ModelArgs.from_hf_dict({**_GEMMA3, **bad})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exo_actor_models_lists_each_family_with_its_engines(tmp_path, family, capsys):
    """The families table's features are what a model of the family needs (the tiny model's ModelArgs), and
    `exo-actor models` prints the family with the engines that run it."""
    from exo_actor.cli import main
    from exo_actor.models.families import FAMILIES as TABLE

    row = next(f for f in TABLE if f.name == family)
    args = open_model(_write(tmp_path, FAMILIES[family], "hf")[0]).args
    assert row.features <= args.features <= row.features | row.optional
    assert main(["models"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(family + " "))
    engines = line.split("  ")[-1].strip()
    assert engines.startswith("numpy, torch, mlx") and ("tinygrad" in engines) == (family in ("mistral", "phi3"))


def test_engine_auto_runs_a_family_the_fast_engine_lacks_on_numpy(tmp_path, caplog, monkeypatch):
    """`--engine auto` picks the torch engine where torch is installed (MLX on Apple Silicon); for a family the
    engine it picked does not run it loads numpy instead and says so in one log line; an engine the user names
    keeps refusing. (Torch runs every family today: the test takes mixtures of experts from its table.)"""
    require("torch")
    from exo_actor.engines import base, engine_for_model, resolve_engine
    from exo_actor.runtime.local import load_local

    monkeypatch.setitem(base.ENGINE_FEATURES, "torch", base.ENGINE_FEATURES["torch"] - {"moe"})
    gemma3 = open_model(_write(tmp_path, FAMILIES["gemma3"], "gguf")[0]).args
    assert engine_for_model("tinygrad", gemma3, True) == "numpy" and engine_for_model("mlx", gemma3, True) == "mlx"

    path = tmp_path / "moe.gguf"
    write_gguf(path, TinySpec(architecture="qwen3moe"))
    args = open_model(path).args
    assert resolve_engine("auto") == "torch"
    assert engine_for_model("torch", args, chosen_by_auto=False) == "torch"
    with caplog.at_level("WARNING", logger="exo_actor.engines"):
        assert engine_for_model("torch", args, chosen_by_auto=True) == "numpy"
    assert "the torch engine does not run qwen3moe models yet" in caplog.text
    files, pipe = load_local(str(path), engine="auto", shards=2)
    assert [type(s).__name__ for s in pipe.shards] == ["NumpyShardRunner"] * 2
    (tmp_path / "llama").mkdir()
    llama = open_model(_write(tmp_path / "llama", TinySpec(), "gguf")[0]).args
    assert engine_for_model("torch", llama, chosen_by_auto=True) == "torch"


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])
def test_a_multimodal_gemma3_checkpoint_runs_its_text_model(tmp_path, prefix):
    """Gemma 3 4B+ checkpoints are Gemma3ForConditionalGeneration: config.json nests the text model's config
    in text_config (leaving Gemma3TextConfig's defaults out) and the weights carry a prefix (the Hub's files,
    or transformers 5's). The loader reads the text model only: the same logits as the text-only folder."""
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    text = tmp_path / "text"
    write_hf_folder(text, FAMILIES["gemma3"])
    mm = tmp_path / "mm"
    mm.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(text / name, mm / name)
    cfg = json.loads((text / "config.json").read_text())
    for default in ("rope_local_base_freq", "rms_norm_eps", "hidden_activation", "hidden_act"):
        cfg.pop(default, None)  # left to Gemma3TextConfig's defaults, as the Hub's 4B/12B/27B configs do
    outer = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": cfg}
    (mm / "config.json").write_text(json.dumps({**outer, "vision_config": {"model_type": "siglip_vision_model"}}))
    weights = {prefix + k[len("model.") :]: v for k, v in load_file(str(text / "model.safetensors")).items()}
    weights["vision_tower.vision_model.post_layernorm.weight"] = np.ones(8, dtype=np.float32)  # never read
    save_file(weights, str(mm / "model.safetensors"))
    files, pipe = pipeline(mm)
    assert files.args.architecture == "gemma3" and files.args.rope_local_theta == 10000.0
    from exo_actor.storage.downloads import files_for_layers  # a shard downloads its layers' files

    where = {name: f"part-{i % 3}" for i, name in enumerate(sorted(weights))}
    want = {where[n] for n in where if n.startswith(prefix + "layers.1.") or n.startswith(prefix + "embed")}
    assert set(files_for_layers(where, 6, 0, 2)) >= want and where["vision_tower.vision_model.post_layernorm.weight"]
    np.testing.assert_array_equal(all_logits(pipe, IDS, 25), all_logits(pipeline(text)[1], IDS, 25))


def test_an_unsupported_gguf_architecture_is_one_line(tmp_path, capsys):
    """A GGUF of a family exo-actor does not run: one line naming the supported ones, from the loader and from
    `exo-actor run` (non-zero exit, no traceback)."""
    import gguf

    from exo_actor.cli import main
    from exo_actor.weights.gguf_source import open_reader

    path = tmp_path / "falcon.gguf"
    w = gguf.GGUFWriter(str(path), "falcon")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match=r"GGUF architecture 'falcon' is not supported \(.*phi3"):
        open_model(path)
    assert open_reader(path).fields["general.architecture"] == "falcon"
    assert main(["run", str(path), "--prompt", "hi", "--engine", "numpy"]) != 0
    err = capsys.readouterr().err
    assert "falcon" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

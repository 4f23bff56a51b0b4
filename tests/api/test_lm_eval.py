"""lm-evaluation-harness runs a multiple-choice (loglikelihood) task through /v1/completions.

Its `local-completions` model scores each choice with `echo` + `logprobs` and counts tokens with the
server's own tokenizer (the /tokenize and /tokenizer_info endpoints); the task's data is written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import require

QUIZ = [
    ("What is the capital of France?", ["Paris", "Banana", "Seven"], 0),
    ("What color is the sky on a clear day?", ["Green", "Blue", "Loud"], 1),
    ("How many legs does a dog have?", ["Four", "Ten", "Purple"], 0),
    ("What do bees make?", ["Steel", "Honey", "Glass"], 1),
    ("What is frozen water called?", ["Sand", "Smoke", "Ice"], 2),
    ("Which animal says meow?", ["Cat", "Cow", "Fish"], 0),
]


def _task(folder: Path) -> Path:
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUIZ]
    (folder / "quiz.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "quiz.yaml").write_text(
        "task: exo_quiz\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'quiz.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


def _evaluate(url: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict:  # type: ignore[type-arg]
    require("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the data is local; nothing may reach the Hub
    import lm_eval
    from lm_eval.tasks import TaskManager

    name = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
    return lm_eval.simple_evaluate(  # type: ignore[no-any-return]
        model="local-completions",
        model_args={"base_url": url + "/v1/completions", "model": name, "num_concurrent": 1, "max_retries": 1},
        tasks=["exo_quiz"],
        task_manager=TaskManager(include_path=str(_task(folder))),
        log_samples=True,
    )


def test_the_harness_scores_choices_with_the_models_own_loglikelihoods(tiny_server, tiny_gguf, tmp_path, monkeypatch):
    from exo_actor.engines.numpy_engine import NumpyEngine
    from exo_actor.runtime.generation import LocalPipeline
    from exo_actor.weights import open_model

    out = _evaluate(tiny_server.url, tmp_path, monkeypatch)
    acc = out["results"]["exo_quiz"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    files = open_model(tiny_gguf)
    pipe = LocalPipeline([NumpyEngine().load_shard(files, 0, files.args.num_hidden_layers)])
    tok = files.tokenizer
    samples = out["samples"]["exo_quiz"]
    assert len(samples) == len(QUIZ)
    for sample in samples:
        for (context, continuation), ((got, _),) in zip(sample["arguments"], sample["resps"]):
            # the harness's split: encode the whole text, the context's tokens first (trailing spaces move on)
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = tok.encode(context + continuation, add_bos=False)
            n_ctx = len(tok.encode(context, add_bos=False))
            rows = pipe.forward("ref", np.array(whole), 0, len(whole)).astype(np.float64)
            pipe.free("ref")
            logp = rows - rows.max(axis=1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
            want = sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole)))
            assert got == pytest.approx(want, abs=1e-3)


@pytest.mark.slow
@pytest.mark.ring  # `exo-actor start` serves it
def test_smollm2_answers_an_easy_quiz(smollm2_server, tmp_path, monkeypatch):
    out = _evaluate(smollm2_server.url, tmp_path, monkeypatch)
    assert out["results"]["exo_quiz"]["acc,none"] >= 4 / 6  # 5/6 measured (a random model: 1/3 expected)


def test_tokenizer_endpoints(tiny_server):
    from tests.api.test_errors import assert_error

    url = tiny_server.url
    ids = httpx.post(url + "/tokenize", json={"prompt": "hello world"}, timeout=30).json()
    assert ids["count"] == len(ids["tokens"]) > 0 and ids["max_model_len"] == 256
    back = httpx.post(url + "/detokenize", json={"tokens": ids["tokens"]}, timeout=30).json()
    assert back["prompt"] == "hello world"
    info = httpx.get(url + "/tokenizer_info", timeout=30).json()
    assert "eos_token" in info and info["model_max_length"] == 256
    chat = httpx.post(url + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert chat.status_code in (200, 400)  # the tiny model may have no chat template: then one clear 400
    if chat.status_code == 400:
        assert_error(chat, 400, param="messages")
    assert_error(httpx.post(url + "/tokenize", json={"prompt": 5}, timeout=30), 400, param="prompt")
    assert_error(httpx.post(url + "/detokenize", json={"tokens": [-1]}, timeout=30), 400, param="tokens")
    assert_error(httpx.post(url + "/detokenize", json={"tokens": "x"}, timeout=30), 400, param="tokens")
    assert_error(httpx.post(url + "/tokenize", json={"prompt": "x", "model": "nope"}, timeout=30), 404, param="model")

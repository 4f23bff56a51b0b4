"""Tool calling's cost: decode tok/s on SmolLM2 without tools (before and after this feature's request
path) and with tools offered (tool_choice auto), in one run.

    python -m benchmarks.bench_tools [--out DIR] [--tokens 128] [--repeats 5] [--engine torch]

One process (the engine's LocalPipeline, no HTTP), greedy, the same question. Three requests, interleaved:
- baseline: the chat path as it was before tools (chat_prompt_ids, generate, join the text);
- no tools: the chat path now (parse_chat, ToolUse, prompt_ids, generate, parse): must cost nothing;
- baseline, the tools' prompt: the old path on the prompt ids the tools case renders (as plain messages);
- tools, auto: the new path with a `get_weather` tool offered (its system block lengthens the prompt), the
  output parsed for calls, and streamed through a ToolCallStreamer as the gateway does.
tok/s is the generation's own decode rate (first token to last), best of --repeats. Also: the request
path's own time (prompt and parse, without generation) for each, and the streamer's time per token.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for this run.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.report import write_report  # noqa: E402
from exo_actor.api.requests import parse_chat  # noqa: E402
from exo_actor.runtime.generation import Delta, generate  # noqa: E402
from exo_actor.runtime.local import load_local  # noqa: E402
from exo_actor.tokenizer import chat_prompt_ids  # noqa: E402
from exo_actor.tools import ToolUse, parse_openai_tools  # noqa: E402
from exo_actor.tools.render import tools_system_text  # noqa: E402

CASES = ("baseline", "no tools", "baseline, the tools' prompt", "tools, auto")
ASK = [{"role": "user", "content": "Tell me a long story about the weather in Paris, day by day."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, kind, default in (("out", Path, "bench-out"), ("tokens", int, 128), ("repeats", int, 5)):
        ap.add_argument(f"--{flag}", type=kind, default=kind(default))
    ap.add_argument("--engine", default="torch")
    args = ap.parse_args()
    files, pipe = load_local("smollm2-135m", engine=args.engine)
    tok, ctx = files.tokenizer, files.args.max_position_embeddings
    body: dict[str, Any] = {"model": "smollm2-135m", "messages": ASK, "temperature": 0, "max_tokens": args.tokens}
    overhead: dict[str, list[float]] = {k: [] for k in CASES}
    stream_seconds, stream_tokens = [0.0], [0]

    completion: dict[str, int] = {}

    def decode(label: str, ids: list[int], req: Any) -> tuple[list[Delta], float]:
        deltas = list(generate(pipe, tok, ids, req.params, ctx))
        stats = deltas[-1].stats
        assert stats is not None
        completion[label] = stats.completion_tokens
        return deltas, stats.decode_tokens_per_second

    def baseline(label: str, messages: list[dict[str, Any]]) -> tuple[float, int]:
        t = time.perf_counter()
        req = parse_chat(body | {"messages": messages}, ctx)
        ids = chat_prompt_ids(tok, req.messages)
        spent = time.perf_counter() - t
        deltas, tps = decode(label, ids, req)
        t = time.perf_counter()
        "".join(d.text for d in deltas)
        overhead[label].append(spent + time.perf_counter() - t)
        return tps, len(ids)

    def with_path(label: str, extra: dict[str, Any]) -> tuple[float, int]:
        t = time.perf_counter()
        req = parse_chat(body | extra, ctx)
        use = ToolUse.for_model(tok, req.tools, req.tool_choice, req.parallel_tool_calls) if req.tools else ToolUse()
        ids = use.prompt_ids(tok, req.messages)
        assert use.grammar() is None
        spent = time.perf_counter() - t
        deltas, tps = decode(label, ids, req)
        t = time.perf_counter()
        use.parse("".join(d.text for d in deltas))
        overhead[label].append(spent + time.perf_counter() - t)
        streamer = use.streamer()
        if streamer is not None:  # the streamed response's extra work: every delta through the streamer
            t = time.perf_counter()
            for d in deltas:
                streamer.feed(d.text)
            streamer.finish()
            stream_seconds[0] += time.perf_counter() - t
            stream_tokens[0] += len(deltas)
        return tps, len(ids)

    runs: dict[str, list[float]] = {k: [] for k in CASES}
    prompts: dict[str, int] = {}
    # the tools' prompt as plain messages: the same prompt ids, so the same decode, without the tool path
    same_prompt = [{"role": "system", "content": tools_system_text(parse_openai_tools(TOOLS))}, *ASK]
    cases = {
        CASES[0]: lambda: baseline(CASES[0], ASK),
        CASES[1]: lambda: with_path(CASES[1], {}),
        CASES[2]: lambda: baseline(CASES[2], same_prompt),
        CASES[3]: lambda: with_path(CASES[3], {"tools": TOOLS, "tool_choice": "auto"}),
    }
    for f in cases.values():  # warm up
        f()
    for v in overhead.values():
        v.clear()
    stream_seconds[0], stream_tokens[0] = 0.0, 0
    for _ in range(args.repeats):
        for name, f in cases.items():
            tps, n = f()
            runs[name].append(tps)
            prompts[name] = n
    best = {k: max(v) for k, v in runs.items()}
    us = {k: min(v) * 1e6 for k, v in overhead.items()}
    stream_us = stream_seconds[0] / max(stream_tokens[0], 1) * 1e6
    result = {
        "engine": args.engine,
        "tokens": args.tokens,
        "best_tps": best,
        "ratio_vs_baseline": {k: v / best["baseline"] for k, v in best.items()},
        "prompt_tokens": prompts,
        "completion_tokens": completion,
        "request_path_us": us,
        "streamer_us_per_token": stream_us,
        "runs": runs,
    }
    lines = [
        f"SmolLM2-135M-Instruct, {args.engine} engine, greedy, up to {args.tokens} tokens, "
        f"best of {args.repeats} (interleaved):",
        "",
        "| request | prompt tokens | completion tokens | decode tok/s | vs baseline | request path (no generation) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {k} | {prompts[k]} | {completion[k]} | {best[k]:.1f} | {best[k] / best['baseline']:.2f}x "
            f"| {us[k]:.0f} us |"
            for k in runs
        ),
        "",
        f"Streaming with tools offered: the ToolCallStreamer costs {stream_us:.1f} us per token.",
    ]
    write_report(args.out, "tools", result, lines)


if __name__ == "__main__":
    main()

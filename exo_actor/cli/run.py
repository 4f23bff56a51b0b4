"""`exo-actor run`: one prompt's completion, generated in this process."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .flags import engine_flags, node_config, speculation_flags
from .progress import progress_bar
from .types import positive_int

if TYPE_CHECKING:
    from .flags import Subparsers


def add_parser(sub: Subparsers) -> None:
    """Register `run` and its flags."""
    run = sub.add_parser(
        "run", help="generate a completion locally", description="Generate a completion for one prompt."
    )
    run.add_argument(
        "model",
        help="registry name (see `exo-actor models`), a .gguf file, a Hugging Face folder, or a Hub repo id "
        "ORG/NAME (downloaded into $EXO_HOME when missing)",
    )
    run.add_argument("--prompt", required=True, help="the user message (or raw text with --raw)")
    run.add_argument("--system", help="a system message")
    run.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    run.add_argument("--max-tokens", type=positive_int, default=256, help="tokens to generate at most (256)")
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    run.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    run.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability")
    run.add_argument("--seed", type=int, help="random seed: the same seed gives the same output")
    run.add_argument("--stop", action="append", help="stop when this text appears (repeatable)")
    engine_flags(run)
    run.add_argument("--shards", type=positive_int, default=1, help="split the model into K chained shards")
    speculation_flags(run)
    run.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Stream the completion to stdout, then one stats line to stderr."""
    from ..runtime.generation import generate
    from ..runtime.local import load_local
    from ..sampling import SamplingParams
    from ..tokenizer import chat_prompt_ids

    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop or ()),
    )
    node = node_config(args)  # contradicting speculation flags fail before the model loads
    with progress_bar() as progress:
        files, pipeline = load_local(
            args.model,
            engine=args.engine,
            shards=args.shards,
            progress=progress,
            quantize=args.quantize,
            device=args.device,
        )
    spec = node.speculation(files)
    tok = files.tokenizer
    if args.raw:
        ids = tok.encode(args.prompt)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        ids = chat_prompt_ids(tok, messages)
    out = sys.stdout
    for delta in generate(pipeline, tok, ids, params, files.args.max_position_embeddings, speculation=spec):
        if delta.text:
            out.write(delta.text)
            out.flush()
        if delta.stats is not None:
            s = delta.stats
            out.write("\n")
            out.flush()
            print(
                f"prompt tokens: {s.prompt_tokens}, completion tokens: {s.completion_tokens}, "
                f"time to first token: {s.time_to_first_token:.3f} s, "
                f"decode: {s.decode_tokens_per_second:.1f} tok/s, finish: {delta.finish_reason}"
                + (
                    f", draft {spec.drafter.name}: acceptance {s.acceptance_rate:.2f}, "
                    f"{s.tokens_per_pass:.2f} tokens/pass"
                    if spec is not None
                    else ""
                ),
                file=sys.stderr,
            )
    return 0

"""What several commands share: the parser class, the engine and speculation flag groups, and the settings
read from them (a NodeConfig, the cluster key)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ExoError
from .types import draft_tokens

if TYPE_CHECKING:
    from ..config import NodeConfig

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at --help instead of dumping the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"exo-actor: error: {message} (see `{self.prog} --help`)\n")


def engine_flags(p: argparse.ArgumentParser) -> None:
    """--engine, --quantize, --device (`run` and `start`)."""
    from ..engines import DEVICES, ENGINES
    from ..weights.base import QUANTIZE_CHOICES

    p.add_argument(
        "--engine",
        choices=[*ENGINES, "auto"],
        default=os.environ.get("EXO_ACTOR_ENGINE", "auto"),
        help="auto (default, or $EXO_ACTOR_ENGINE): MLX on Apple Silicon, else torch when installed, else numpy",
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        help="q4 / q8: quantize float weights at load (4-bit affine / 8-bit groups of 32); none: all float; "
        "default: as stored (GGUF blocks stay quantized)",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="the torch engine's device: auto (default: CUDA or MPS when torch sees one, else cpu), cpu, cuda, mps",
    )


def check_engine_env(args: argparse.Namespace) -> None:
    """$EXO_ACTOR_ENGINE is the --engine default: a bad value is named as the variable, not as a flag."""
    from ..engines import ENGINES

    env = os.environ.get("EXO_ACTOR_ENGINE")
    if env and getattr(args, "engine", None) == env and env not in (*ENGINES, "auto"):
        raise ExoError(f"EXO_ACTOR_ENGINE={env!r} is not an engine (choose {', '.join(ENGINES)} or auto)")


def speculation_flags(p: argparse.ArgumentParser) -> None:
    """--enable-speculative, --draft-model, --draft-tokens, --fixed-draft (`run` and `start`)."""
    g = p.add_argument_group("speculative decoding")
    g.add_argument("--enable-speculative", action="store_true", help="draft tokens and verify them in one pass")
    g.add_argument(
        "--draft-model",
        help="ngram (prompt lookup), a model with the target's tokenizer, or MODEL:layers=K "
        "(the target's first K layers); default: the registry's draft for the model",
    )
    g.add_argument("--draft-tokens", type=draft_tokens, help="longest draft per pass (8)")
    g.add_argument(
        "--fixed-draft", action="store_true", help="always draft --draft-tokens (default: adapt to acceptance)"
    )


def node_config(args: argparse.Namespace, **settings: Any) -> NodeConfig:
    """The NodeConfig that the engine and speculation flags set (plus `settings`, e.g. max_concurrent)."""
    from ..config import NodeConfig
    from ..engines import resolve_engine
    from ..storage.registry import load_registry

    draft = args.draft_model
    if args.enable_speculative and not draft:
        entry = load_registry().get(args.model)
        draft = entry.draft if entry else None
        if not draft:
            raise ExoError(
                f"{args.model} has no default draft model in the registry: pass --draft-model "
                "(ngram, a model with the same tokenizer, or MODEL:layers=K)"
            )
    elif draft and not args.enable_speculative:
        raise ExoError("--draft-model needs --enable-speculative")
    elif not args.enable_speculative and (args.draft_tokens is not None or args.fixed_draft):
        raise ExoError("--draft-tokens and --fixed-draft need --enable-speculative")
    if args.draft_tokens is not None:  # else NodeConfig's default
        settings["draft_tokens"] = args.draft_tokens
    return NodeConfig(
        model=args.model,
        engine=resolve_engine(args.engine),
        engine_by_auto=args.engine == "auto",
        quantize=args.quantize,
        device=args.device,
        draft_model=draft,
        adaptive_draft=not args.fixed_draft,
        **settings,
    )


def cluster_key(args: argparse.Namespace) -> str | None:
    """--cluster-key, else EXO_ACTOR_CLUSTER_KEY; checked now (too short: a one-line error)."""
    from ..transport.security import ClusterKey

    secret: str | None = args.cluster_key or os.environ.get("EXO_ACTOR_CLUSTER_KEY") or None
    if secret:
        ClusterKey.from_secret(secret)
    return secret

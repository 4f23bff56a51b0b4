"""The `exo-actor` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .errors import ExoError

if TYPE_CHECKING:
    from .storage.downloads import Progress

log = logging.getLogger("exo_actor")


def _cmd_run(args: argparse.Namespace) -> int:
    from .runtime.generation import generate
    from .runtime.local import load_local
    from .sampling import SamplingParams
    from .tokenizer import chat_prompt_ids

    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop or ()),
    )
    with progress_bar() as progress:
        files, pipeline = load_local(
            args.model,
            engine=args.engine,
            shards=args.shards,
            progress=progress,
            quantize=args.quantize,
            device=args.device,
        )
    spec = _speculation_config(args).speculation(files)
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


def _speculation_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The NodeConfig part that --enable-speculative / --draft-model / --draft-tokens set."""
    from .config import NodeConfig
    from .engines import resolve_engine
    from .storage.registry import load_registry

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
    return NodeConfig(
        model=args.model,
        engine=resolve_engine(args.engine),
        quantize=args.quantize,
        device=args.device,
        draft_model=draft,
        draft_tokens=args.draft_tokens or 8,
        adaptive_draft=not args.fixed_draft,
    )


def _cmd_download(args: argparse.Namespace) -> int:
    from .storage.downloads import download
    from .storage.model_store import is_repo_id
    from .storage.registry import exo_home, load_registry

    entry = load_registry().get(args.model)
    repo = entry.hf_repo if entry else args.model
    if entry is None and not is_repo_id(repo):
        raise ExoError(f"{args.model!r} is neither a registry name nor a Hugging Face repo id (ORG/NAME)")
    dest = Path(args.dir) if args.dir else exo_home() / "models" / (entry.name if entry else repo.replace("/", "--"))
    layers = None
    if args.layers:
        first, sep, last = args.layers.partition("-")
        if not (sep and first.isdigit() and last.isdigit() and int(first) <= int(last)):
            raise ExoError(f"--layers {args.layers}: expected A-B with A <= B (e.g. 0-15)")
        layers = (int(first), int(last) + 1)
    with progress_bar() as progress:
        path = download(repo, dest, layers, revision=args.revision, progress=progress)
    print(path)
    return 0


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress]:
    """A download Progress drawn as a tqdm bar on stderr (bytes, speed, time left)."""
    from tqdm import tqdm

    from .storage.downloads import Progress

    bar: list[tqdm] = []

    def draw(p: Progress) -> None:
        if p.state != "downloading" or not p.total_bytes:
            return
        if not bar:
            bar.append(
                tqdm(
                    total=p.total_bytes,
                    initial=p.done_bytes,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"downloading {p.repo}",
                    file=sys.stderr,
                    mininterval=0.5,
                )
            )
        b = bar[0]
        if b.total != p.total_bytes:
            b.total = p.total_bytes
        b.update(p.done_bytes - b.n)

    progress = Progress(draw)
    try:
        yield progress
    finally:
        if bar:
            bar[0].close()


def _cmd_models(args: argparse.Namespace) -> int:
    from .storage.registry import load_registry, local_path

    rows = [("NAME", "ARCH", "LAYERS", "HUGGING FACE REPO", "LOCAL")]
    for e in load_registry().values():
        path = local_path(e)
        rows.append((e.name, e.architecture, str(e.layers), e.hf_repo, str(path) if path else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    import os

    from .api import GatewayConfig
    from .config import ClusterConfig
    from .server import serve
    from .transport.peers_file import read_peers

    key = args.api_key or os.environ.get("EXO_ACTOR_API_KEY") or None
    gateway = None
    if not args.no_api:
        gateway = GatewayConfig(
            api_key=key,
            max_body_bytes=args.max_body_bytes,
            request_timeout=args.request_timeout,
            max_tokens=args.max_tokens,
            max_context=args.max_context,
        )
    node = _speculation_config(args)
    node.max_concurrent = args.max_concurrent
    node.prefix_cache_mb = args.prefix_cache_mb
    if args.peer_timeout <= 2 * args.heartbeat:
        raise ExoError(f"--peer-timeout ({args.peer_timeout:g} s) must exceed twice --heartbeat ({args.heartbeat:g} s)")
    ray_flags = [f for f in ("ray_address", "ray_shards") if getattr(args, f) is not None]
    if args.backend == "ray":
        ray_config = _ray_config(args)
        serve(node, gateway, args.api_host, args.api_port, None, args.node_id, ray_config)
        return 0
    if ray_flags or args.ray_placement != "SPREAD" or args.ray_cpus_per_shard != 1.0:
        raise ExoError("the --ray-* options need --backend ray")
    cluster = None
    if args.discovery or args.peers:
        if args.discovery == "manual" and not args.peers:
            raise ExoError('--discovery manual needs --peers FILE (TOML: peers = ["HOST:PORT", ...])')
        advertise, advertise_port = _advertise(args)
        cluster = ClusterConfig(
            host=args.host,
            port=args.port,
            advertise=advertise,
            advertise_port=advertise_port,
            peers=read_peers(args.peers) if args.peers else [],
            discovery=args.discovery or "manual",
            discovery_port=args.discovery_port,
            memory=int(args.memory * 2**30) if args.memory else None,
            wait_for_peers=args.wait_for_peers,
            rings=args.rings,
            cluster_key=_cluster_key(args),
            step_timeout=args.step_timeout,
            heartbeat=args.heartbeat,
            timeout=args.peer_timeout,
        )
    serve(node, gateway, args.api_host, args.api_port, cluster, args.node_id)
    return 0


def _advertise(args: argparse.Namespace) -> tuple[str, int | None]:
    """The host and port peers use to reach this node's actor socket (--advertise, else --host)."""
    import socket

    if not args.advertise:
        host = args.host if args.host not in ("0.0.0.0", "::") else socket.gethostbyname(socket.gethostname())
        return host, None
    host, _, port_text = args.advertise.rpartition(":") if ":" in args.advertise else (args.advertise, "", "")
    try:
        port = _port(port_text) if port_text else None
    except argparse.ArgumentTypeError as exc:
        raise ExoError(f"--advertise {args.advertise}: {exc}") from None
    if not host:
        raise ExoError(f"--advertise {args.advertise}: expected HOST or HOST:PORT")
    return host, port


def _ray_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The Ray backend's settings from `start`'s flags; one clear error if ray is missing or a flag
    makes no sense with it."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ExoError("--backend ray needs the `ray` package: pip install 'exo-actor[ray]'")
    for flag, given in (
        ("--peers", args.peers),
        ("--discovery", args.discovery),
        ("--rings", args.rings != 1),
        ("--wait-for-peers", args.wait_for_peers),
        ("--memory", args.memory),
    ):
        if given:
            raise ExoError(f"{flag} is for LAN clusters: with --backend ray, Ray places the shards (see --ray-shards)")
    address = args.ray_address
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ExoError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    from .config import RayConfig

    advertise, advertise_port = _advertise(args) if args.advertise else (None, None)
    if advertise_port is not None and advertise_port != args.port:
        raise ExoError("--advertise with --backend ray takes a HOST only (the driver listens on --port)")
    return RayConfig(
        address=address,
        shards=args.ray_shards,
        placement=args.ray_placement,
        cpus_per_shard=args.ray_cpus_per_shard,
        host=args.host,
        port=args.port,
        advertise=advertise,
        heartbeat=args.heartbeat,
        timeout=args.peer_timeout,
        step_timeout=args.step_timeout,
        cluster_key=_cluster_key(args),
    )


def _cmd_status(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    url = args.api.rstrip("/") + "/v1/cluster"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            info = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise ExoError(f"{url} answered HTTP {exc.code}{' (pass --api-key)' if exc.code == 401 else ''}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ExoError(f"cannot reach {url}: {getattr(exc, 'reason', exc)} (is `exo-actor start` running?)") from None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    ring = info["ring"]
    print(
        f"model {info['model']}  state {info['state']}  layers {info['layers']}  "
        f"in flight {ring['in_flight']}/{ring['max_concurrent']}  {ring['tokens_per_second']} tok/s"
    )
    spec = info.get("speculative")
    if spec:
        print(
            f"speculative: draft {spec['draft']}, up to {spec['max_draft_tokens']} tokens, acceptance "
            f"{spec['acceptance_rate']:.2f}, {spec['tokens_per_pass']:.2f} tokens per ring pass"
        )
    rows = [("NODE", "ADDRESS", "ENGINE", "MEMORY", "WEIGHTS", "LAYERS")]
    for n in info["nodes"]:
        ranges = ", ".join(f"{p['start']}-{p['end'] - 1}" for p in info["plan"] if p["node"] == n["id"]) or "-"
        held = n.get("weights_bytes")
        weights = f"{held / 2**20:.0f} MiB" if held else "-"
        rows.append((n["id"], n["address"], n["engine"], f"{n['memory_bytes'] / 2**30:.1f} GiB", weights, ranges))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _cmd_peers(args: argparse.Namespace) -> int:
    import asyncio

    from .transport.discovery import Discovery
    from .transport.security import ClusterKey

    secret = _cluster_key(args)
    key = ClusterKey.from_secret(secret) if secret else None

    async def listen() -> list:
        d = Discovery(None, lambda b: None, args.discovery_port, key=key)
        d.start()
        await asyncio.sleep(args.timeout)
        d.stop()
        return d.peers()

    try:
        heard = asyncio.run(listen())
    except OSError as exc:
        raise ExoError(f"cannot listen for beacons on UDP port {args.discovery_port}: {exc.strerror}") from None
    if not heard:
        print(f"no nodes heard in {args.timeout:g} s on UDP port {args.discovery_port}", file=sys.stderr)
        return 1
    for b in sorted(heard, key=lambda b: b.src):
        print(f"{b.src}  {b.endpoint}  {b.engine}  {b.memory / 2**30:.1f} GiB  {b.model}")
    return 0


def _cluster_key(args: argparse.Namespace) -> str | None:
    """--cluster-key, else EXO_ACTOR_CLUSTER_KEY; checked now (too short: a one-line error)."""
    import os

    from .transport.security import ClusterKey

    secret = args.cluster_key or os.environ.get("EXO_ACTOR_CLUSTER_KEY") or None
    if secret:
        ClusterKey.from_secret(secret)
    return secret


def _cmd_bench(args: argparse.Namespace) -> int:
    """The benchmark suite lives in the source checkout (benchmarks/, beside the package): run it in
    its own process, without the OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE overrides (they must be gone
    before numpy loads, and this process has loaded it)."""
    import os
    import subprocess

    roots = [Path(__file__).resolve().parents[1], Path.cwd()]
    root = next((r for r in roots if (r / "benchmarks" / "suite.py").is_file()), None)
    if root is None:
        raise ExoError(
            "`exo-actor bench` runs the benchmark suite of a source checkout (benchmarks/suite.py was not found "
            "beside the package or in the current directory): clone the repository, "
            "`pip install -e '.[bench,test,reference]'`, and run it there"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    cmd = [sys.executable, "-m", "benchmarks.suite", "--profile", args.profile, "--out", str(args.out.resolve())]
    if args.only:
        cmd += ["--only", args.only]
    return subprocess.run(cmd, cwd=root, env=env).returncode


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .transport.security import new_key

    print(new_key())
    return 0


def _port(text: str) -> int:
    v = _positive_int(text) if text != "0" else 0
    if v > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _int_at_least(text: str, minimum: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
    return v


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _draft_tokens(text: str) -> int:
    from .sampling.params import MAX_DRAFT_TOKENS

    v = _positive_int(text)
    if v > MAX_DRAFT_TOKENS:
        raise argparse.ArgumentTypeError(f"at most {MAX_DRAFT_TOKENS}, got {v}")
    return v


def _speculation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculative decoding")
    g.add_argument("--enable-speculative", action="store_true", help="draft tokens and verify them in one pass")
    g.add_argument(
        "--draft-model",
        help="ngram (prompt lookup), a model with the target's tokenizer, or MODEL:layers=K "
        "(the target's first K layers); default: the registry's draft for the model",
    )
    g.add_argument("--draft-tokens", type=_draft_tokens, help="longest draft per pass (8)")
    g.add_argument(
        "--fixed-draft", action="store_true", help="always draft --draft-tokens (default: adapt to acceptance)"
    )


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at --help instead of dumping the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"exo-actor: error: {message} (see `{self.prog} --help`)\n")


def _engine_flags(p: argparse.ArgumentParser) -> None:
    from .engines import DEVICES, ENGINES
    from .weights.base import QUANTIZE_CHOICES

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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="exo-actor", description="Run one LLM across the devices you own.")
    p.add_argument("--version", action="version", version=f"exo-actor {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (and tracebacks on errors)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

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
    run.add_argument("--max-tokens", type=_positive_int, default=256, help="tokens to generate at most (256)")
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    run.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    run.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability")
    run.add_argument("--seed", type=int, help="random seed: the same seed gives the same output")
    run.add_argument("--stop", action="append", help="stop when this text appears (repeatable)")
    _engine_flags(run)
    run.add_argument("--shards", type=_positive_int, default=1, help="split the model into K chained shards")
    _speculation_flags(run)
    run.set_defaults(func=_cmd_run)

    start = sub.add_parser("start", help="start this device's node and the OpenAI-compatible gateway")
    start.add_argument(
        "--model",
        default="smollm2-135m",
        help="model to serve: a registry name, path or Hub repo id, downloaded when missing (default smollm2-135m)",
    )
    _engine_flags(start)
    start.add_argument("--api-host", default="0.0.0.0", help="address the gateway listens on (0.0.0.0)")
    start.add_argument("--api-port", type=_port, default=52415, help="gateway port (52415; 0 picks a free one)")
    start.add_argument("--no-api", action="store_true", help="run the node without the HTTP gateway")
    start.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set EXO_ACTOR_API_KEY)")
    start.add_argument("--max-concurrent", type=_positive_int, default=8, help="requests in flight (8); more get 429")
    start.add_argument("--max-body-bytes", type=_positive_int, default=4 << 20, help="largest request body (4 MiB)")
    start.add_argument(
        "--prefix-cache-mb",
        type=_non_negative_int,
        default=512,
        help="memory for KV caches kept for the next chat turn, which then prefills only its new tokens (512; 0: off)",
    )
    start.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=600.0,
        help="seconds a request may take, streamed or not, before it ends with a timeout error (600)",
    )
    start.add_argument(
        "--max-tokens", type=_positive_int, help="most completion tokens a request may ask for (default: the context)"
    )
    start.add_argument(
        "--max-context",
        type=_positive_int,
        help="most tokens (prompt + completion) a request may use (default: the model's context length)",
    )
    start.add_argument("--node-id", help="this node's id (default: random)")
    start.add_argument("--host", default="0.0.0.0", help="address of the actor (ROUTER) socket (0.0.0.0)")
    start.add_argument("--port", type=_port, default=52416, help="actor (ROUTER) port (52416)")
    start.add_argument(
        "--advertise", help="HOST[:PORT] other nodes use to reach the actor port (default: --host, --port)"
    )
    start.add_argument(
        "--discovery", choices=["manual", "udp"], help="find peers by UDP beacons, or from --peers FILE (manual)"
    )
    start.add_argument("--rings", type=_positive_int, default=1, help="whole copies of the model (1: one ring)")
    start.add_argument("--discovery-port", type=_port, default=52417, help="UDP beacon port (52417)")
    start.add_argument(
        "--cluster-key",
        help="the cluster secret (or EXO_ACTOR_CLUSTER_KEY; prefer the variable: flags show in ps): "
        "CURVE-encrypted, authenticated actor sockets and signed beacons; every node needs the same one",
    )
    start.add_argument(
        "--heartbeat", type=_positive_float, default=0.5, help="seconds between pings to each peer (0.5)"
    )
    start.add_argument(
        "--peer-timeout",
        type=_positive_float,
        default=3.0,
        help="a peer silent this long is down: its requests end with an error and the ring re-plans (3)",
    )
    start.add_argument(
        "--step-timeout",
        type=_positive_float,
        default=300.0,
        help="longest one ring pass may take (a long prefill on a slow device) before the request fails (300)",
    )
    start.add_argument("--peers", help='TOML file: peers = ["HOST:PORT", ...] (other nodes\' actor ports)')
    start.add_argument("--memory", type=_positive_float, help="memory to advertise, in GiB (default: all of it)")
    start.add_argument(
        "--wait-for-peers", type=int, default=0, help="plan and load layers only once N other nodes are known"
    )
    _speculation_flags(start)
    ray = start.add_argument_group("Ray backend (pip install 'exo-actor[ray]')")
    ray.add_argument(
        "--backend",
        choices=["lan", "ray"],
        default="lan",
        help="lan: this device is one node of the ring (default); ray: the shards run as Ray actors, "
        "the router and gateway here",
    )
    ray.add_argument(
        "--ray-address",
        help="the Ray cluster: auto (the one on this machine), HOST:PORT or ray://HOST:PORT "
        "(default: start a local Ray instance)",
    )
    ray.add_argument("--ray-shards", type=_positive_int, help="shards of the ring (default: one per Ray node)")
    ray.add_argument(
        "--ray-placement",
        choices=["SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"],
        default="SPREAD",
        help="placement group strategy for the shards' bundles (SPREAD)",
    )
    ray.add_argument(
        "--ray-cpus-per-shard",
        type=_positive_float,
        default=1.0,
        help="CPUs each shard reserves; may be a fraction (1)",
    )
    start.set_defaults(func=_cmd_start)

    status = sub.add_parser("status", help="show a running cluster's nodes, layer plan and model")
    status.add_argument("--api", default="http://127.0.0.1:52415", help="gateway URL (http://127.0.0.1:52415)")
    status.add_argument("--api-key", help="API key, if the gateway needs one")
    status.add_argument("--json", action="store_true", help="print /v1/cluster as JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the gateway")
    status.set_defaults(func=_cmd_status)

    peers = sub.add_parser("peers", help="list the nodes whose UDP beacons this machine hears")
    peers.add_argument("--timeout", type=_positive_float, default=3.0, help="seconds to listen (3)")
    peers.add_argument("--discovery-port", type=_port, default=52417, help="UDP beacon port (52417)")
    peers.add_argument(
        "--cluster-key", help="list only nodes signing beacons with this secret (or EXO_ACTOR_CLUSTER_KEY)"
    )
    peers.set_defaults(func=_cmd_peers)

    dl = sub.add_parser(
        "download",
        help="download a model from the Hugging Face Hub (only the files some layers need, with --layers)",
    )
    dl.add_argument("model", help="registry name or Hugging Face repo id (ORG/NAME)")
    dl.add_argument(
        "--layers", help="A-B: only the weights files holding layers A..B (plus embedding/head at the ends)"
    )
    dl.add_argument("--dir", help="where to put it (default: $EXO_HOME/models/NAME)")
    dl.add_argument("--revision", default="main", help="branch, tag or commit (main)")
    dl.set_defaults(func=_cmd_download)

    bench = sub.add_parser(
        "bench",
        help="run the benchmark suite (transport, engine, pipeline, speculative, batching, prefix, gateway, memory)",
    )
    bench.add_argument(
        "--profile", choices=("quick", "full"), default="quick", help="quick: a smoke run (~2 min); full: ~10 min"
    )
    bench.add_argument("--out", type=Path, default=Path("bench-out"), help="where the JSON, markdown and PNGs go")
    bench.add_argument("--only", help="comma-separated sections to run (default: all)")
    bench.set_defaults(func=_cmd_bench)

    keygen = sub.add_parser("keygen", help="print a new random cluster key (for EXO_ACTOR_CLUSTER_KEY)")
    keygen.set_defaults(func=_cmd_keygen)

    models = sub.add_parser("models", help="list the registry and what is available locally")
    models.set_defaults(func=_cmd_models)
    return p


def _check_engine_env(args: argparse.Namespace) -> None:
    """$EXO_ACTOR_ENGINE is the --engine default: a bad value is named as the variable, not as a flag."""
    from .engines import ENGINES

    env = os.environ.get("EXO_ACTOR_ENGINE")
    if env and getattr(args, "engine", None) == env and env not in (*ENGINES, "auto"):
        raise ExoError(f"EXO_ACTOR_ENGINE={env!r} is not an engine (choose {', '.join(ENGINES)} or auto)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # its retry warnings would bury the one-line error a failed download ends with
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        _check_engine_env(args)
        return args.func(args)
    except ExoError as exc:
        if args.verbose:
            log.exception("failed")
        print(f"exo-actor: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("exo-actor: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("exo-actor: error: out of memory (try a smaller model or more shards across devices)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

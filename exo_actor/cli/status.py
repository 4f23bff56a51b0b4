"""`exo-actor status`: a running cluster's model, nodes and layer plan, from its gateway's /v1/cluster."""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from ..errors import ExoError
from .types import positive_float

if TYPE_CHECKING:
    from .flags import Subparsers

_RUNNING = "is `exo-actor start` running?"


def add_parser(sub: Subparsers) -> None:
    """Register `status` and its flags."""
    status = sub.add_parser("status", help="show a running cluster's nodes, layer plan and model")
    status.add_argument("--api", default="http://127.0.0.1:52415", help="gateway URL (http://127.0.0.1:52415)")
    status.add_argument("--api-key", help="API key, if the gateway needs one")
    status.add_argument(
        "--ca-cert",
        metavar="FILE",
        help="https:// gateway: trust this PEM certificate (its self-signed --tls-cert, or the CA that signed it)",
    )
    status.add_argument("--json", action="store_true", help="print /v1/cluster as JSON")
    status.add_argument("--timeout", type=positive_float, default=5.0, help="seconds to wait for the gateway (5)")
    status.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Print the cluster as a summary line and a table of nodes (or as JSON)."""
    info = _fetch(args.api.rstrip("/") + "/v1/cluster", args.api_key, args.timeout, _tls_context(args))
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


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """With --ca-cert, a context that trusts only that certificate (as curl --cacert); else the system's CAs."""
    if not args.ca_cert:
        return None
    if not args.api.startswith("https://"):
        raise ExoError(f"--ca-cert is for an https:// gateway, not {args.api}")
    try:
        return ssl.create_default_context(cafile=args.ca_cert)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise ExoError(f"--ca-cert {args.ca_cert}: not a PEM certificate ({exc.reason or exc})") from None
    except OSError as exc:
        raise ExoError(f"--ca-cert {args.ca_cert}: {exc.strerror or exc}") from None


def _fetch(url: str, api_key: str | None, timeout: float, context: ssl.SSLContext | None = None) -> Any:
    """GET a JSON document; an unreachable, refusing or untrusted gateway is one ExoError."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise ExoError(f"{url} answered HTTP {exc.code}{' (pass --api-key)' if exc.code == 401 else ''}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise ExoError(
                f"{url}: the gateway's certificate is not trusted ({exc.reason.verify_message}): "
                "pass --ca-cert FILE (the certificate given to `start --tls-cert`, if self-signed)"
            ) from None
        hint = "a plain-HTTP gateway? use http://" if isinstance(exc.reason, ssl.SSLError) else _RUNNING
        raise ExoError(f"cannot reach {url}: {exc.reason} ({hint})") from None
    except (OSError, ValueError) as exc:
        # a TLS port answers a plain-HTTP request by closing the connection
        tls = isinstance(exc, http.client.RemoteDisconnected) and url.startswith("http://")
        hint = "an HTTPS gateway (start --tls-cert)? use https://" if tls else _RUNNING
        raise ExoError(f"cannot reach {url}: {getattr(exc, 'reason', exc)} ({hint})") from None

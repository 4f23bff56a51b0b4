"""The manual peers file: TOML with `peers = ["HOST:PORT", ...]` (other nodes' actor endpoints)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..errors import ExoError


class PeersFileError(ExoError):
    """A configuration file that cannot be used; the message says what to fix."""


def read_peers(path: str | Path) -> list[str]:
    """The endpoints listed in a peers file, validated (listing this node itself is harmless)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeersFileError(f"peers file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PeersFileError(f"cannot read peers file {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PeersFileError(f"peers file {p} is not valid TOML: {exc}") from None
    peers = data.get("peers")
    if not isinstance(peers, list) or not all(isinstance(x, str) for x in peers):
        raise PeersFileError(f'peers file {p} must contain peers = ["HOST:PORT", ...]')
    out = []
    for entry in peers:
        host, sep, port = entry.removeprefix("tcp://").rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise PeersFileError(f"peers file {p}: {entry!r} is not HOST:PORT")
        out.append(f"{host}:{int(port)}")
    return out

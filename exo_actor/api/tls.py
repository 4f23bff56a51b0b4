"""The gateway's TLS files, checked before serving: each way they can be wrong is one sentence naming the file."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NoReturn

from ..errors import ConfigError

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"  # the end of BEGIN PRIVATE, RSA PRIVATE, EC PRIVATE or ENCRYPTED PRIVATE KEY


def check_tls_files(cert: str, key: str) -> None:
    """Load the pair as uvicorn will; a missing, unreadable, non-PEM, encrypted or mismatched file is a
    ConfigError of GatewayConfig.tls_cert / tls_key (uvicorn would print a traceback, or prompt on the
    terminal for an encrypted key's passphrase)."""
    _read_pem(cert, "tls_cert", _CERT_MARK, "a PEM certificate", "-----BEGIN CERTIFICATE-----")
    _read_pem(key, "tls_key", _KEY_MARK, "a PEM private key", "-----BEGIN ... PRIVATE KEY-----")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_verify_locations(cafile=cert)  # parses the file's certificates, so a bad one is named as such
    except ssl.SSLError as exc:
        _fail("tls_cert", f"{cert}: not a valid PEM certificate ({exc.reason or exc})")
    asked = False

    def no_passphrase() -> bytes:
        nonlocal asked
        asked = True
        return b""

    try:
        ctx.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if asked:
            plain = str(Path(key).with_suffix("")) + "-plain.pem"
            _fail("tls_key", f"{key} is encrypted (has a passphrase): decrypt it, openssl pkey -in {key} -out {plain}")
        if exc.reason == "KEY_VALUES_MISMATCH":
            _fail("tls_key", f"{key} is not the private key of the certificate {cert}")
        _fail("tls_key", f"{key}: not a valid PEM private key ({exc.reason or exc})")


def _read_pem(path: str, setting: str, mark: bytes, what: str, header: str) -> None:
    if not path:
        _fail(setting, f"must name {what} file, got {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        _fail(setting, f"{path}: {exc.strerror or exc}")
    if mark not in data:
        _fail(setting, f"{path} is not {what} (it has no {header} line; see docs/api.md#tls)")


def _fail(setting: str, problem: str) -> NoReturn:
    raise ConfigError("GatewayConfig", setting, problem)

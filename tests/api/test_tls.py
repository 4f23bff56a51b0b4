"""The gateway over HTTPS (`start --tls-cert FILE --tls-key FILE`): the openai client trusting the test's
self-signed certificate, clients that do not trust it or speak plain HTTP, `status --ca-cert`, and the
one-line errors for TLS files that cannot work. The gateway runs in a thread with serve()'s uvicorn
settings; the test marked `ring` runs the real `exo-actor start` process."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from exo_actor.api import GatewayConfig, create_app
from exo_actor.config import NodeConfig
from exo_actor.errors import ConfigError
from exo_actor.node import Node
from exo_actor.server import bind_socket, uvicorn_config
from tests.api.servers import free_port, stop_processes
from tests.cli.helpers import assert_one_line_error, cli
from tests.conftest import require

CHAT = [{"role": "user", "content": "Hello"}]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def self_signed(folder: Path, name: str) -> Pair:
    """A self-signed EC P-256 certificate for localhost and 127.0.0.1, valid for a day: with the
    `cryptography` package when installed, else the openssl command (as docs/api.md shows)."""
    pair = Pair(folder / f"{name}-cert.pem", folder / f"{name}-key.pem")
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
                *("-nodes", "-days", "1", "-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                *("-keyout", str(pair.key), "-out", str(pair.cert)),
            ],
            check=True,
            capture_output=True,
        )
        return pair
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """`server`: the gateway's pair; `other`: an unrelated one (a key that does not match, a CA that is not it)."""
    folder = tmp_path_factory.mktemp("tls")
    return {"server": self_signed(folder, "server"), "other": self_signed(folder, "other")}


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts only `cert` (httpx's verify=; a path there is deprecated)."""
    return ssl.create_default_context(cafile=str(cert))


def wait_ready_tls(url: str, cert: Path, timeout: float = 120.0) -> None:
    """servers.wait_ready for an https:// gateway: /healthz, trusting `cert`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", verify=trusting(cert), timeout=2).json()["state"] == "ready":
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready in {timeout} s")


@contextlib.contextmanager
def tls_thread_server(model: Path, gateway: GatewayConfig) -> Iterator[str]:
    """servers.thread_server over HTTPS: uvicorn with serve()'s settings (uvicorn_config) in a thread."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    node = Node(NodeConfig(model=str(model), max_concurrent=2, address=f"127.0.0.1:{port}"))
    node.start()
    server = uvicorn.Server(uvicorn_config(create_app(node, gateway), gateway))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}"
    try:
        wait_ready_tls(url, gateway.tls_cert)  # type: ignore[arg-type]
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        node.stop()
        sock.close()


@pytest.fixture(scope="module")
def https_url(tiny_gguf: Path, pki: dict[str, Pair]) -> Iterator[str]:
    gateway = GatewayConfig(tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key))
    with tls_thread_server(tiny_gguf, gateway) as url:
        yield url


def openai_client(url: str, verify: ssl.SSLContext | bool) -> object:
    openai = require("openai")
    http = httpx.Client(verify=verify, timeout=60)
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, http_client=http)


def test_openai_client_trusting_the_certificate(https_url, pki, tiny_gguf):
    client = openai_client(https_url, trusting(pki["server"].cert))
    r = client.chat.completions.create(model=str(tiny_gguf), messages=CHAT, max_tokens=5, temperature=0)  # type: ignore[attr-defined]
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.usage.completion_tokens == 5
    stream = client.chat.completions.create(model=str(tiny_gguf), messages=CHAT, max_tokens=3, stream=True)  # type: ignore[attr-defined]
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"


def test_localhost_matches_the_certificate_too(https_url, pki):
    url = https_url.replace("127.0.0.1", "localhost")
    assert httpx.get(f"{url}/v1/models", verify=trusting(pki["server"].cert)).status_code == 200


def test_plain_http_to_the_tls_port_fails(https_url):
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(https_url.replace("https://", "http://") + "/healthz", timeout=5)


@pytest.mark.parametrize("trusted", ["system", "other"])
def test_a_client_that_does_not_trust_the_certificate_fails(https_url, pki, tiny_gguf, trusted):
    openai = require("openai")
    client = openai_client(https_url, True if trusted == "system" else trusting(pki["other"].cert))
    with pytest.raises(openai.APIConnectionError) as err:
        client.chat.completions.create(model=str(tiny_gguf), messages=CHAT, max_tokens=2)  # type: ignore[attr-defined]
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value.__cause__)


def test_status_over_https(https_url, pki):
    ok = cli("status", "--api", https_url, "--ca-cert", str(pki["server"].cert))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("model ") and "state ready" in ok.stdout
    assert_one_line_error(cli("status", "--api", https_url), "not trusted", "--ca-cert")
    assert_one_line_error(cli("status", "--api", https_url.replace("https", "http")), "https://")
    assert_one_line_error(cli("status", "--api", https_url, "--ca-cert", str(pki["server"].key)), "--ca-cert")


def test_gateway_config_names_the_missing_setting(pki):
    with pytest.raises(ConfigError, match=r"GatewayConfig\.tls_key is needed with tls_cert"):
        GatewayConfig(tls_cert=str(pki["server"].cert))
    with pytest.raises(ConfigError, match="is not the private key"):
        GatewayConfig(tls_cert=str(pki["server"].cert), tls_key=str(pki["other"].key))


def _encrypted_key(pair: Pair, folder: Path) -> Path:
    path = folder / "encrypted-key.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pair.key), "-aes256", "-passout", "pass:secret", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("cert only", ["--tls-cert needs --tls-key"]),
        ("key only", ["--tls-key needs --tls-cert"]),
        ("missing cert", ["--tls-cert", "missing.pem", "No such file"]),
        ("missing key", ["--tls-key", "missing.pem", "No such file"]),
        ("directory", ["--tls-cert", "Is a directory"]),
        ("mismatched key", ["--tls-key", "other-key.pem", "is not the private key", "server-cert.pem"]),
        ("not PEM cert", ["--tls-cert", "notes.txt", "is not a PEM certificate"]),
        ("not PEM key", ["--tls-key", "notes.txt", "is not a PEM private key"]),
        ("swapped", ["--tls-cert", "server-key.pem", "is not a PEM certificate"]),
        ("encrypted key", ["--tls-key", "is encrypted"]),
        ("no api", ["--no-api"]),
    ],
)
def test_bad_tls_flags_are_one_line(tmp_path, tiny_gguf, pki, case, needles):
    good = pki["server"]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a certificate\n")
    flags = {
        "cert only": ["--tls-cert", good.cert],
        "key only": ["--tls-key", good.key],
        "missing cert": ["--tls-cert", tmp_path / "missing.pem", "--tls-key", good.key],
        "missing key": ["--tls-cert", good.cert, "--tls-key", tmp_path / "missing.pem"],
        "directory": ["--tls-cert", tmp_path, "--tls-key", good.key],
        "mismatched key": ["--tls-cert", good.cert, "--tls-key", pki["other"].key],
        "not PEM cert": ["--tls-cert", notes, "--tls-key", good.key],
        "not PEM key": ["--tls-cert", good.cert, "--tls-key", notes],
        "swapped": ["--tls-cert", good.key, "--tls-key", good.cert],
        "encrypted key": ["--tls-cert", good.cert, "--tls-key", _encrypted_key(good, tmp_path)]
        if case == "encrypted key"
        else [],
        "no api": ["--no-api", "--tls-cert", good.cert, "--tls-key", good.key],
    }[case]
    proc = cli(
        *("start", "--model", str(tiny_gguf), "--api-host", "127.0.0.1", "--api-port", "0", "--discovery", "manual"),
        *map(str, flags),
    )
    assert_one_line_error(proc, *needles)


@pytest.mark.ring
def test_start_serves_https(tmp_path, tiny_gguf, pki):
    """The real `exo-actor start --tls-cert --tls-key`: the openai client over HTTPS; the log says https://."""
    port = free_port()
    cmd = [sys.executable, "-m", "exo_actor.cli", "-v", "start", "--model", str(tiny_gguf)]
    cmd += ["--api-host", "127.0.0.1", "--api-port", str(port), "--discovery", "manual"]
    cmd += ["--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key)]
    url = f"https://127.0.0.1:{port}"
    with open(tmp_path / "node.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready_tls(url, pki["server"].cert)
        client = openai_client(url, trusting(pki["server"].cert))
        r = client.chat.completions.create(model=str(tiny_gguf), messages=CHAT, max_tokens=4)  # type: ignore[attr-defined]
        assert r.choices[0].message.content and r.usage.completion_tokens == 4
    finally:
        stop_processes([proc])
    assert proc.returncode == 0
    out = (tmp_path / "node.log").read_text()
    assert f"exo-actor gateway on {url} " in out and "Traceback" not in out
    assert "serving alone: no actor socket, no beacons (--discovery manual, no --peers)" in out

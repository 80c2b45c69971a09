"""The OpenSearch adapter over a real TLS endpoint with HTTP basic auth.

The test node has no Security plugin (``tools/opensearch-node`` runs plain HTTP), so a real
nginx (Debian package, ``scripts/install-services``) terminates TLS and checks basic auth in
front of the session's node: a throwaway CA and a server certificate for 127.0.0.1 (made here
with ``cryptography``), an apr1 htpasswd file (``openssl passwd``), nginx in the foreground on a
free port, its config, pid, logs and temp files in the test's directory. Each test gets its own
nginx (it starts in milliseconds), so tests that break it (rotate its certificate or password)
share nothing.

- (a) the adapter with ``ca_file`` + username/password passes a smoke set through the proxy;
- (b) with verification on and a certificate it does not trust (no CA given, or another CA) the
  adapter raises ``BackendUnavailable`` whose message is ours (the log line names the
  certificate as the reason, the message does not); a CA
  file that is missing or holds no certificate is ``Misconfigured``, naming the file; a running
  app whose proxy starts presenting an untrusted certificate answers 503
  ``search_unavailable``, no stack trace;
- (c) wrong or missing credentials: ``BackendUnavailable`` after one request (a 401 is not
  retried); a running app whose credentials stop being accepted answers 503
  ``search_unavailable`` with none of the proxy's text, keeps queueing writes (202), searches
  again once they work, and applies a write queued meanwhile within seconds (this found a bug,
  since fixed in ``Indexer``: the refused batch stayed leased for the queue's 300 s lease);
- (d) ``TENANTSEARCH_OPENSEARCH_PASSWORD_FILE`` (with ``..._CA_FILE``, from the environment)
  runs the whole app through the proxy.

How to run nginx like this in front of a node by hand: docs/opensearch-node.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tenantsearch.app import create_app
from tenantsearch.errors import Misconfigured
from tenantsearch.search.opensearch_backend import OpenSearchBackend
from tenantsearch.search.port import BackendUnavailable, CollectionRef
from tenantsearch.search.query import SearchQuery, WriteOp
from tenantsearch.search.schema import parse_schema
from tenantsearch.settings import Settings, SettingsError, load_settings
from tests.support.api import ADMIN_KEY, Api
from tests.support.opensearch import drop_prefix, new_prefix
from tests.support.opensearch_node import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
]

USER = "tenantsearch"
PROBLEM_JSON = "application/problem+json"
NGINX_START_TIMEOUT_S = 10.0
WRITE_RECOVERY_S = 15.0
"""A write refused for a moment must land within this once the engine takes it again (the
indexer's backoff for retryable writes starts at 0.5 s)."""
SCHEMA = parse_schema({"title": {"type": "text", "language": "en"}, "tag": {"type": "keyword"}})
FIELDS = SCHEMA.as_dict()
PROXY_TEXT = ("nginx", "401", "Authorization Required", "<html", "Traceback", "certificate")
"""What the proxy or the TLS layer would say; none of it may reach a client."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else ""
    )
    if not found:
        pytest.fail("nginx is not installed: run scripts/install-services (as root)")
    return found


# -- a throwaway PKI ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_authority(directory: Path, common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{common_name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(key, cert, cert_path)


def issue_server_cert(ca: Authority, cert_path: Path, key_path: Path) -> bytes:
    """A server certificate for 127.0.0.1 (and localhost) signed by ``ca``; returns its PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    _write_key(key, key_path)
    return pem


def htpasswd_line(user: str, password: str) -> str:
    """``user:$apr1$...`` (nginx checks apr1 itself, whatever the libc's crypt supports)."""
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"],
        input=password.encode(),
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout.decode()
    return f"{user}:{hashed.strip()}\n"


# -- nginx -------------------------------------------------------------------------------------

NGINX_CONF = """\
# Workers run as root so they can read the htpasswd file in pytest's private (0700) temp dir;
# loopback only, for tests. (The directive is ignored with a warning when not started as root.)
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;

events {{
    worker_connections 256;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    upstream opensearch {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/server.crt;
        ssl_certificate_key {dir}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;

        auth_basic "opensearch";
        auth_basic_user_file {dir}/htpasswd;
        client_max_body_size 100m;

        location / {{
            proxy_pass http://opensearch;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The node needs no credentials; do not hand it the client's.
            proxy_set_header Authorization "";
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


class TlsProxy:
    """nginx in the foreground: TLS + basic auth on ``url``, proxying to ``upstream_port``."""

    def __init__(self, directory: Path, ca: Authority, upstream_port: int, password: str) -> None:
        self.dir = directory
        self.ca = ca
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        self.cert_pem = issue_server_cert(ca, directory / "server.crt", directory / "server.key")
        self.set_password(password)
        conf = NGINX_CONF.format(dir=directory, port=self.port, upstream_port=upstream_port)
        (directory / "nginx.conf").write_text(conf)

    def set_password(self, password: str) -> None:
        """Replace the htpasswd file; nginx reads it on every request, no reload needed."""
        tmp = self.dir / "htpasswd.new"
        tmp.write_text(htpasswd_line(USER, password))
        tmp.chmod(0o600)
        tmp.replace(self.dir / "htpasswd")

    def start(self) -> None:
        argv = [
            nginx_binary(),
            "-p",
            str(self.dir),
            "-c",
            str(self.dir / "nginx.conf"),
            "-e",
            str(self.dir / "error.log"),
            "-g",
            "daemon off;",
        ]
        with (self.dir / "nginx.out").open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: master and worker
            )
        deadline = time.monotonic() + NGINX_START_TIMEOUT_S
        while self.presented_cert() != self.cert_pem:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start:\n{self.logs()}")
            time.sleep(0.05)

    def presented_cert(self) -> bytes | None:
        """The PEM certificate the proxy presents now, or None if it does not answer."""
        try:
            pem = ssl.get_server_certificate(("127.0.0.1", self.port), timeout=2)
        except OSError:
            return None
        return pem.encode()

    def rotate_certificate(self, ca: Authority) -> None:
        """Present a new certificate signed by ``ca`` (SIGHUP: nginx re-reads its config)."""
        assert self.process is not None
        old_workers = self.workers()
        self.cert_pem = issue_server_cert(ca, self.dir / "server.crt", self.dir / "server.key")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + NGINX_START_TIMEOUT_S
        # The PEM returned by the ssl module has its own line breaks: compare the parsed DER.
        want = x509.load_pem_x509_certificate(self.cert_pem)
        while True:
            got = self.presented_cert()
            # Connections made before keep their TLS session until the old worker closes them
            # (at once when idle): wait for it to exit, so no request rides an old session.
            old_alive = any(Path(f"/proc/{pid}").exists() for pid in old_workers)
            if got is not None and x509.load_pem_x509_certificate(got) == want and not old_alive:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload:\n{self.logs()}")
            time.sleep(0.05)

    def workers(self) -> list[int]:
        """The pids of the master's children (its worker processes)."""
        assert self.process is not None
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children]

    def logs(self) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            path = self.dir / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def access_log(self, *, at_least: int = 0, timeout: float = 5.0) -> str:
        """The access log, once it has ``at_least`` lines: nginx writes a request's line after
        the response has gone out, so a client can be faster than the log."""
        path = self.dir / "access.log"
        deadline = time.monotonic() + timeout
        while True:
            text = path.read_text(errors="replace") if path.exists() else ""
            if len(text.splitlines()) >= at_least or time.monotonic() > deadline:
                return text
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (fast shutdown) to the process group this proxy started, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def urlopen(url: str, *, auth: tuple[str, str] | None, cafile: Path | None) -> tuple[int, str]:
    """One GET over TLS trusting ``cafile`` (None: the system's CAs); (status, body)."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    request = urllib.request.Request(url)  # noqa: S310 - https://127.0.0.1 built here
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Authority]:
    """The CA the proxy's certificate comes from, and another one nobody trusts."""
    directory = tmp_path_factory.mktemp("pki")
    return make_authority(directory, "tenantsearch-test-ca"), make_authority(directory, "rogue")


@pytest.fixture
def proxy(
    tmp_path: Path, pki: tuple[Authority, Authority], opensearch_url: str
) -> Iterator[TlsProxy]:
    upstream_port = int(opensearch_url.rsplit(":", 1)[1])
    server = TlsProxy(tmp_path / "nginx", pki[0], upstream_port, secrets.token_urlsafe(16))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix(opensearch_url: str) -> Iterator[str]:
    value = new_prefix()
    yield value
    drop_prefix(opensearch_url, value)


def backend_for(proxy: TlsProxy, prefix: str, **overrides: Any) -> OpenSearchBackend:
    options: dict[str, Any] = {
        "index_prefix": prefix,
        "username": USER,
        "password": proxy.password,
        "ca_file": proxy.ca.cert_path,
        "shards": 1,
        "replicas": 0,
        "timeout_seconds": 10,
        "pool_size": 4,
    }
    options.update(overrides)
    return OpenSearchBackend([proxy.url], **options)


def app_settings(tmp_path: Path, proxy: TlsProxy, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "admin_key": ADMIN_KEY,
        "log_level": "warning",
        "indexer_linger_ms": 0,
        "search_backend": "opensearch",
        "opensearch_url": proxy.url,
        "opensearch_username": USER,
        "opensearch_password": proxy.password,
        "opensearch_ca_file": proxy.ca.cert_path,
        "opensearch_index_prefix": prefix,
        "opensearch_shards": 1,
        "opensearch_replicas": 0,
        # Every search must reach the engine: no result cache, no rate limit in the way.
        "cache_backend": "none",
        "default_plan": "unlimited",
    }
    values.update(overrides)
    return load_settings(environ={}, **values)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client)


def assert_unavailable_problem(response: httpx.Response) -> None:
    """A 503 problem with our code and none of the proxy's or the TLS layer's text."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["code"] == "search_unavailable", body
    assert body["status"] == 503
    # (The request id is random hex, which may contain "401" by chance.)
    visible = str({k: v for k, v in body.items() if k != "request_id"}).lower()
    for text in PROXY_TEXT:
        assert text.lower() not in visible, (text, response.text)


def causes(exc: BaseException) -> str:
    """The text of ``exc``'s whole cause chain (to check why it failed, not what it says)."""
    out = []
    seen: BaseException | None = exc
    while seen is not None:
        out.append(repr(seen))
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(out)


# -- the proxy itself --------------------------------------------------------------------------


def test_the_proxy_demands_tls_and_credentials(proxy: TlsProxy) -> None:
    """The setup the other tests rely on: TLS only, and 401 without the right password."""
    cafile = proxy.ca.cert_path
    status, body = urlopen(proxy.url + "/", auth=(USER, proxy.password), cafile=cafile)
    assert status == 200, body
    assert '"cluster_name"' in body
    assert urlopen(proxy.url + "/", auth=None, cafile=cafile)[0] == 401
    assert urlopen(proxy.url + "/", auth=(USER, "wrong"), cafile=cafile)[0] == 401
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urlopen(proxy.url + "/", auth=(USER, proxy.password), cafile=None)
    # Plain HTTP on the TLS port is refused by nginx (400), never proxied.
    status, _ = http_get_plain(proxy.port)
    assert status == 400


def http_get_plain(port: int) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.decode(errors="replace")
    return int(head.split(" ", 2)[1]), head


# -- (a) the adapter through TLS + basic auth --------------------------------------------------


async def test_backend_smoke_through_tls_and_basic_auth(proxy: TlsProxy, prefix: str) -> None:
    backend = backend_for(proxy, prefix)
    await backend.start()
    try:
        await backend.ping()
        ref = CollectionRef("acme", "products", "uid-tls-1", SCHEMA)
        await backend.ensure_collection(ref)
        results = await backend.apply(
            ref,
            [
                WriteOp("1", 1, {"title": "red lamp over TLS", "tag": "a"}),
                WriteOp("2", 1, {"title": "blue lamp", "tag": "b"}),
                WriteOp("3", 1, {"title": "green chair", "tag": "a"}),
                WriteOp("3", 2, None),  # a delete of 3 in the same batch wins
            ],
        )
        assert [r.outcome for r in results] == ["applied", "applied", "stale", "applied"]
        found = await backend.search(ref, SearchQuery(text="lamp", limit=10))
        assert found.total == 2
        assert {hit.id for hit in found.hits} == {"1", "2"}
        assert await backend.get(ref, "1") == {"title": "red lamp over TLS", "tag": "a"}
        assert await backend.get(ref, "3") is None
        assert await backend.count(ref) == 2
        await backend.drop_collection(ref)
        assert await backend.get(ref, "1") is None
        assert (await backend.search(ref, SearchQuery(text="lamp"))).total == 0
        await backend.drop_tenant("acme")
    finally:
        await backend.close()
    # Every request went through the proxy, authenticated as USER.
    lines = [line for line in proxy.access_log(at_least=1).splitlines() if line.strip()]
    assert lines
    assert all(f" - {USER} [" in line for line in lines), lines[:5]


# -- (b) a certificate the adapter does not trust ----------------------------------------------


@pytest.mark.parametrize("trust", ["system CAs only", "another CA"])
async def test_an_untrusted_certificate_is_backend_unavailable(
    proxy: TlsProxy, prefix: str, pki: tuple[Authority, Authority], trust: str
) -> None:
    ca_file = None if trust == "system CAs only" else pki[1].cert_path
    backend = backend_for(proxy, prefix, ca_file=ca_file, verify_certs=True)
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(BackendUnavailable) as caught:
            await backend.start()
        assert caught.value.status == 503
        assert caught.value.code == "search_unavailable"
        assert caught.value.detail.startswith("the search engine cannot be reached")
        # The operator's log tells it apart from an engine that is down.
        unavailable = [e for e in logs if e["event"] == "opensearch_unavailable"]
        assert unavailable
        assert {e["reason"] for e in unavailable} == {"tls_certificate_not_trusted"}
        for text in PROXY_TEXT:
            assert text.lower() not in caught.value.detail.lower()
        # ... and it failed for the right reason: the handshake, never an HTTP exchange.
        assert "CERTIFICATE_VERIFY_FAILED" in causes(caught.value)
        with pytest.raises(BackendUnavailable):
            await backend.search(
                CollectionRef("acme", "c", "uid-x", SCHEMA), SearchQuery(text="lamp")
            )
    finally:
        await backend.close()
    assert proxy.access_log().strip() == ""  # no request ever got past the handshake


@pytest.mark.parametrize("problem", ["missing", "not a certificate"])
async def test_an_unusable_ca_file_is_misconfigured_and_named(
    tmp_path: Path, proxy: TlsProxy, prefix: str, problem: str
) -> None:
    """Not an outage to wait out: ``start`` raises Misconfigured naming the file (start-up then
    stops with it, see ``startup.start_when_available``); nothing reached the endpoint."""
    ca_file = tmp_path / "ca.pem"
    if problem == "not a certificate":
        ca_file.write_text(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        )
    backend = backend_for(proxy, prefix, ca_file=ca_file)
    try:
        with pytest.raises(Misconfigured) as caught:
            await backend.start()
    finally:
        await backend.close()
    assert str(ca_file) in caught.value.detail
    expected = "cannot be read" if problem == "missing" else "holds no usable certificate"
    assert expected in caught.value.detail
    assert proxy.access_log().strip() == ""


async def test_verification_off_connects_to_an_untrusted_certificate(
    proxy: TlsProxy, prefix: str
) -> None:
    """``TENANTSEARCH_OPENSEARCH_VERIFY_CERTS=false`` (insecure, documented as such) connects."""
    backend = backend_for(proxy, prefix, ca_file=None, verify_certs=False)
    await backend.start()
    try:
        await backend.ping()
    finally:
        await backend.close()


async def test_a_running_app_answers_503_when_the_certificate_becomes_untrusted(
    tmp_path: Path, proxy: TlsProxy, prefix: str, pki: tuple[Authority, Authority]
) -> None:
    async with running(app_settings(tmp_path, proxy, prefix)) as api:
        _, auth = await api.tenant()
        await api.collection(auth, "docs", FIELDS)
        await api.index(auth, "docs", [{"id": "1", "title": "trusted lamp"}])
        r = await api.search(auth, "docs", q="lamp")
        assert r.status_code == 200, r.text
        assert r.json()["total"] == 1

        # The endpoint now presents a certificate from a CA the service does not trust (a
        # man in the middle, or a rotation to a CA the service was not given).
        await asyncio.to_thread(proxy.rotate_certificate, pki[1])
        started = time.monotonic()
        r = await api.search(auth, "docs", q="lamp")
        assert_unavailable_problem(r)
        assert time.monotonic() - started < 5  # a handshake failure is not a timeout
        r = await api.client.get("/v1/collections/docs/documents/1", headers=auth)
        assert_unavailable_problem(r)

        await asyncio.to_thread(proxy.rotate_certificate, pki[0])
        r = await api.search(auth, "docs", q="lamp")
        assert r.status_code == 200, r.text


# -- (c) credentials the endpoint refuses ------------------------------------------------------


@pytest.mark.parametrize("credentials", ["wrong password", "none"])
async def test_refused_credentials_are_backend_unavailable(
    proxy: TlsProxy, prefix: str, credentials: str
) -> None:
    overrides: dict[str, Any] = (
        {"password": "not-" + proxy.password}
        if credentials == "wrong password"
        else {"username": None, "password": None}
    )
    backend = backend_for(proxy, prefix, **overrides)
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await backend.start()
        assert caught.value.detail == "the search engine refused the service's credentials"
        assert caught.value.code == "search_unavailable"
    finally:
        await backend.close()
    # One request, refused at the proxy (401 is not retried: it will not get better by itself).
    log = proxy.access_log(at_least=1)
    statuses = [line.split('" ')[1].split()[0] for line in log.splitlines()]
    assert statuses == ["401"], log


async def test_a_running_app_answers_503_when_its_password_stops_working(
    tmp_path: Path, proxy: TlsProxy, prefix: str
) -> None:
    old_password = proxy.password
    async with running(app_settings(tmp_path, proxy, prefix)) as api:
        _, auth = await api.tenant()
        await api.collection(auth, "docs", FIELDS)
        await api.index(auth, "docs", [{"id": "1", "title": "lamp before the rotation"}])

        # The cluster's password is rotated and the service was not told.
        proxy.set_password("rotated-" + secrets.token_urlsafe(8))
        r = await api.search(auth, "docs", q="lamp")
        assert_unavailable_problem(r)
        assert r.json()["detail"] == "the search engine refused the service's credentials"
        r = await api.client.get("/v1/collections/docs/documents/1", headers=auth)
        assert_unavailable_problem(r)
        # Writes are still accepted: they wait in the queue, not in the engine.
        r = await api.client.post(
            "/v1/collections/docs/documents",
            json=[{"id": "2", "title": "lamp written while refused"}],
            headers=auth,
        )
        assert r.status_code == 202, r.text

        proxy.set_password(old_password)
        r = await api.search(auth, "docs", q="lamp")
        assert r.status_code == 200, r.text
        assert [hit["id"] for hit in r.json()["hits"]][:1] == ["1"]


async def write_while_refused(api: Api, proxy: TlsProxy) -> tuple[dict[str, str], str]:
    """A collection with one document, then a write queued while the proxy refuses the
    service's password (the indexer tries it and is refused), then the password works again;
    returns the auth headers and the write's task id."""
    old_password = proxy.password
    _, auth = await api.tenant()
    await api.collection(auth, "docs", FIELDS)
    await api.index(auth, "docs", [{"id": "1", "title": "lamp before the rotation"}])
    proxy.set_password("rotated-" + secrets.token_urlsafe(8))
    r = await api.client.post(
        "/v1/collections/docs/documents",
        json=[{"id": "2", "title": "lamp written while refused"}],
        headers=auth,
    )
    assert r.status_code == 202, r.text
    await asyncio.sleep(1.5)  # the indexer takes the write and is refused
    proxy.set_password(old_password)
    return auth, str(r.json()["id"])


async def test_a_write_queued_while_refused_lands_soon_after_the_password_works(
    tmp_path: Path, proxy: TlsProxy, prefix: str
) -> None:
    async with running(app_settings(tmp_path, proxy, prefix)) as api:
        auth, task_id = await write_while_refused(api, proxy)
        deadline = time.monotonic() + WRITE_RECOVERY_S
        while True:
            task = (await api.client.get(f"/v1/tasks/{task_id}", headers=auth)).json()
            if task["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert task["status"] == "succeeded", task
        r = await api.search(auth, "docs", q="lamp")
        assert r.json()["total"] == 2, r.text


# -- (d) the password from a file --------------------------------------------------------------


async def test_password_file_runs_the_app_through_tls(
    tmp_path: Path, proxy: TlsProxy, prefix: str
) -> None:
    secret = tmp_path / "opensearch-password"
    secret.write_text(proxy.password + "\n")  # secrets files usually end with a newline
    secret.chmod(0o600)
    environ = {
        "TENANTSEARCH_SEARCH_BACKEND": "opensearch",
        "TENANTSEARCH_OPENSEARCH_URL": proxy.url,
        "TENANTSEARCH_OPENSEARCH_USERNAME": USER,
        "TENANTSEARCH_OPENSEARCH_PASSWORD_FILE": str(secret),
        "TENANTSEARCH_OPENSEARCH_CA_FILE": str(proxy.ca.cert_path),
        "TENANTSEARCH_OPENSEARCH_INDEX_PREFIX": prefix,
        "TENANTSEARCH_OPENSEARCH_REPLICAS": "0",
        "TENANTSEARCH_CACHE_BACKEND": "none",
    }
    settings = load_settings(
        environ=environ,
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        log_level="warning",
        indexer_linger_ms=0,
    )
    assert settings.opensearch_password is not None
    assert settings.opensearch_password.get_secret_value() == proxy.password
    assert settings.opensearch_ca_file == proxy.ca.cert_path
    assert proxy.password not in repr(settings)

    async with running(settings) as api:
        _, auth = await api.tenant()
        await api.collection(auth, "docs", FIELDS)
        await api.index(auth, "docs", [{"id": "1", "title": "lamp from a secret file"}])
        r = await api.search(auth, "docs", q="lamp")
        assert r.status_code == 200, r.text
        assert [hit["id"] for hit in r.json()["hits"]] == ["1"]
    assert f" - {USER} [" in proxy.access_log(at_least=1)

    # The variable and its _FILE form together are refused, naming both.
    with pytest.raises(SettingsError, match="TENANTSEARCH_OPENSEARCH_PASSWORD_FILE"):
        load_settings(environ={**environ, "TENANTSEARCH_OPENSEARCH_PASSWORD": "x"})


# -- warnings -----------------------------------------------------------------------------------


async def test_basic_auth_raises_no_deprecation_warning(proxy: TlsProxy, prefix: str) -> None:
    """opensearch-py's own ``http_auth`` goes through aiohttp.BasicAuth, deprecated in aiohttp
    3.14 (where DeprecationWarnings are errors, every request then fails); the adapter sends the
    ``Authorization`` header itself."""
    backend = backend_for(proxy, prefix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            await backend.start()
            await backend.ping()  # authenticated through the proxy, which refuses without
    finally:
        await backend.close()

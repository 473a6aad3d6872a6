"""The HTTPS server the API server calls, and the loop that keeps its certificate current.

Each accepted connection is wrapped with the SSL context current at that moment, so a renewed
certificate is served to new connections without a restart. Until a certificate is loaded the
server answers nothing (readiness fails): with `failurePolicy: Fail`, GPU pods are refused then.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter

from vgpu_dra.controller.kubeapi import ApiError
from vgpu_dra.webhook.admission import Decision
from vgpu_dra.webhook.certs import TlsMaterial, Validity, not_after, renewed
from vgpu_dra.webhook.kube import TlsStore

MUTATE_PATH = "/mutate-hami"
log = structlog.get_logger("vgpu_dra.webhook")
MAX_BODY = 8 << 20


class WebhookMetrics:
    """Counters of the webhook (served on --metrics-port)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.admissions = Counter("vgpu_dra_webhook_admissions_total",
                                  "Pod admissions answered, by result (translated, untouched, refused, error)",
                                  ["result"], registry=self.registry)
        self.tls_errors = Counter("vgpu_dra_webhook_tls_errors_total",
                                  "Failed checks or renewals of the webhook's certificate", registry=self.registry)


class WebhookServer(ThreadingHTTPServer):
    """ThreadingHTTPServer over TLS with a swappable certificate."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], admit: Callable[[dict[str, Any]], Decision],
                 metrics: WebhookMetrics, work_dir: Path):
        self.admit = admit
        self.metrics = metrics
        self.work_dir = work_dir
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self.loaded_cert = ""
        super().__init__(address, _Handler)

    def load(self, cert_pem: str, key_pem: str) -> None:
        """Serve `cert_pem` to every connection from now on."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        fd, path = tempfile.mkstemp(dir=self.work_dir, suffix=".pem")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(cert_pem + key_pem)
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        with self._lock:
            self._context = context
            self.loaded_cert = cert_pem

    @property
    def ready(self) -> bool:
        """Whether a certificate is loaded."""
        return self._context is not None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        with self._lock:
            context = self._context
        if context is None:
            sock.close()
            raise OSError("no certificate loaded yet")
        sock.settimeout(10)
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection failed", client=str(client_address))


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake failed", client=str(self.client_address), error=str(exc))
            raise
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path in ("/healthz", "/readyz"):
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path.split("?", 1)[0] != MUTATE_PATH:
            self._send(404, b"not found\n", "text/plain")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._send(400, b'{"message": "expected an AdmissionReview body"}')
            return
        try:
            review = json.loads(self.rfile.read(length))
            decision = self.server.admit(review)
        except ValueError as exc:
            self._send(400, json.dumps({"message": f"bad AdmissionReview: {exc}"}).encode())
            return
        self.server.metrics.admissions.labels(decision.result).inc()
        if decision.result != "untouched":
            request = review.get("request") or {}
            log.info("admission", result=decision.result, namespace=request.get("namespace"),
                     pod=(request.get("object") or {}).get("metadata", {}).get("generateName")
                     or (request.get("object") or {}).get("metadata", {}).get("name"), message=decision.message)
        self._send(200, json.dumps(decision.response).encode())


class CertificateKeeper:
    """Keeps the server's certificate current: from the Secret (creating and renewing it, and
    publishing the CA bundle), or from files another issuer (cert-manager) renews."""

    def __init__(self, server: WebhookServer, metrics: WebhookMetrics, *, store: TlsStore | None = None,
                 tls_dir: Path | None = None, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (),
                 validity: Validity = Validity(), clock: Callable[[], dt.datetime] | None = None):
        self.server = server
        self.metrics = metrics
        self.store = store
        self.tls_dir = tls_dir
        self.dns_names = tuple(dns_names)
        self.ip_addresses = tuple(ip_addresses)
        self.validity = validity
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    def check(self) -> None:
        """One round; raises on API or file errors (the caller counts and retries)."""
        if self.tls_dir is not None:
            cert = (self.tls_dir / "tls.crt").read_text()
            key = (self.tls_dir / "tls.key").read_text()
            if cert != self.server.loaded_cert:
                self.server.load(cert, key)
                log.info("loaded serving certificate from files", not_after=not_after(cert).isoformat())
            return
        assert self.store is not None
        for _ in range(3):
            material, version = self.store.read()
            fresh = renewed(material, self.clock(), self.dns_names, self.ip_addresses, self.validity)
            if fresh is None:
                break
            try:
                self.store.write(fresh, version)
            except ApiError as exc:
                if exc.conflict or exc.status == 422:  # another replica wrote first: read theirs
                    continue
                raise
            log.info("stored new certificate", secret=self.store.secret, new_ca=material is None
                     or fresh.ca_cert != material.ca_cert, not_after=not_after(fresh.tls_cert).isoformat())
            material = fresh
            break
        else:
            raise RuntimeError("the TLS Secret kept changing under this replica; will retry")
        assert material is not None
        if material.tls_cert != self.server.loaded_cert:
            self.server.load(material.tls_cert, material.tls_key)
            log.info("serving certificate loaded", not_after=not_after(material.tls_cert).isoformat())
        self.store.publish_bundle(material.bundle)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Check every `interval_s` (sooner after a failure) until `stop`."""
        while not stop.is_set():
            try:
                self.check()
                wait = interval_s
            except Exception as exc:  # noqa: BLE001 - any failure: count it, say it once, retry
                self.metrics.tls_errors.inc()
                log.warning("certificate check failed; retrying", error=str(exc) or type(exc).__name__)
                wait = min(interval_s, 5.0)
            stop.wait(wait)


def bind_address(host: str, port: int) -> tuple[str, int]:
    """The (host, port) to bind, validated early with one clear error."""
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as exc:
        raise ValueError(f"--address {host!r} does not resolve: {exc}") from None
    return host, port

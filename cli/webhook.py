"""`vgpu-dra webhook`: the mutating admission webhook that runs HAMi manifests unchanged."""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import structlog

from .kube_client import ClusterConfigError, api_client
from .logging_setup import add_log_format_argument, configure_logging
from .stop_signals import run_until_stopped


def register(subparsers: Any) -> None:
    """Add the `webhook` subcommand."""
    parser = subparsers.add_parser(
        "webhook", help="serve the admission webhook translating HAMi GPU requests into claims",
        description="Mutates pods asking for nvidia.com/gpu, gpumem, gpumem-percentage or gpucores into pods "
                    "with ResourceClaimTemplate claims of the same shape; creates and renews its own TLS "
                    "certificate (stored in a Secret) and publishes the CA in the MutatingWebhookConfiguration.")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, then ~/.kube/config)")
    parser.add_argument("--address", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=9443, help="HTTPS port (default: 9443)")
    parser.add_argument("--allocator", choices=("controller", "scheduler"), default="controller",
                        help="the chart's allocator: how templates state the share (default: controller)")
    parser.add_argument("--namespace", default="default", help="namespace of the TLS Secret")
    parser.add_argument("--tls-secret", default="vgpu-dra-webhook-tls", help="Secret holding the CA and certificate")
    parser.add_argument("--webhook-config", default=None,
                        help="MutatingWebhookConfiguration whose caBundle this webhook keeps current")
    parser.add_argument("--service-name", default=None,
                        help="Service in front of the webhook: its DNS names go into the certificate")
    parser.add_argument("--dns-name", action="append", default=[], help="extra DNS name of the certificate")
    parser.add_argument("--ip-address", action="append", default=[], help="IP address of the certificate")
    parser.add_argument("--tls-dir", type=Path, default=None,
                        help="serve tls.crt/tls.key from this folder (cert-manager) instead of the Secret")
    parser.add_argument("--cert-validity-days", type=float, default=365,
                        help="lifetime of a serving certificate; renewed in its last third (default: 365)")
    parser.add_argument("--ca-validity-days", type=float, default=3650, help="lifetime of the CA (default: 3650)")
    parser.add_argument("--check-interval", type=float, default=60.0,
                        help="seconds between certificate checks (default: 60)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics, 0 = off (default: 8080)")
    add_log_format_argument(parser)
    parser.set_defaults(handler=run)


def _dns_names(args: argparse.Namespace) -> list[str]:
    names = list(args.dns_name)
    if args.service_name:
        base = f"{args.service_name}.{args.namespace}"
        names += [args.service_name, base, f"{base}.svc", f"{base}.svc.cluster.local"]
    return names


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT."""
    from prometheus_client import start_http_server

    from vgpu_dra.controller.kubeapi import KubeApi
    from vgpu_dra.webhook.admission import admit
    from vgpu_dra.webhook.certs import Validity
    from vgpu_dra.webhook.kube import TemplateEnsurer, TlsStore
    from vgpu_dra.webhook.server import CertificateKeeper, WebhookMetrics, WebhookServer, bind_address

    names = _dns_names(args)
    if args.tls_dir is None and not names and not args.ip_address:
        print("vgpu-dra webhook: error: the certificate needs a name: give --service-name, --dns-name or "
              "--ip-address (or --tls-dir with a certificate from cert-manager)", file=sys.stderr)
        return 2
    if args.cert_validity_days <= 0 or args.ca_validity_days < args.cert_validity_days:
        print("vgpu-dra webhook: error: --cert-validity-days must be positive and at most --ca-validity-days",
              file=sys.stderr)
        return 2
    for ip in args.ip_address:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            print(f"vgpu-dra webhook: error: --ip-address {ip!r} is not an IPv4 or IPv6 address", file=sys.stderr)
            return 2
    try:
        address = bind_address(args.address, args.port)
    except ValueError as exc:
        print(f"vgpu-dra webhook: error: {exc}", file=sys.stderr)
        return 2
    try:
        client = api_client(args.kubeconfig, component="vgpu-dra-hami-webhook", connection_pool_maxsize=32)
    except ClusterConfigError as exc:
        print(f"vgpu-dra webhook: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format)
    log = structlog.get_logger("vgpu_dra.webhook")
    api = KubeApi(client, request_timeout_s=10)
    ensure = TemplateEnsurer(api)
    metrics = WebhookMetrics()
    try:
        server = WebhookServer(address, lambda review: admit(review, ensure, allocator=args.allocator), metrics,
                               Path(tempfile.gettempdir()))
    except OSError as exc:
        print(f"vgpu-dra webhook: error: cannot listen on {args.address}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    store = None if args.tls_dir else TlsStore(api, args.namespace, args.tls_secret, args.webhook_config)
    keeper = CertificateKeeper(server, metrics, store=store, tls_dir=args.tls_dir, dns_names=names,
                               ip_addresses=args.ip_address,
                               validity=Validity(ca=dt.timedelta(days=args.ca_validity_days),
                                                 serving=dt.timedelta(days=args.cert_validity_days)))
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=metrics.registry)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="https", daemon=True)

    def serve(stop: threading.Event) -> None:
        threading.Thread(target=keeper.run, args=(stop, args.check_interval), name="certificates",
                         daemon=True).start()
        serving.start()
        log.info("starting", address=args.address, port=args.port, allocator=args.allocator,
                 webhook_config=args.webhook_config, tls="files" if args.tls_dir else f"secret {args.tls_secret}")
        stop.wait()

    run_until_stopped(serve, "webhook")
    server.shutdown()
    server.server_close()
    log.info("stopped")
    return 0

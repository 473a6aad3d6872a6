"""`vgpu-dra controller`: run the cluster-wide allocation controller."""
from __future__ import annotations

import argparse
import gc
import sys
from typing import TYPE_CHECKING, Any

import structlog

from .kube_client import ClusterConfigError, api_client
from .logging_setup import add_log_format_argument, configure_logging
from .stop_signals import run_until_stopped

if TYPE_CHECKING:
    from vgpu_dra.controller.allocation_term import TermSettings


def register(subparsers: Any) -> None:
    """Add the `controller` subcommand."""
    parser = subparsers.add_parser(
        "controller", help="allocate fractional-GPU ResourceClaims (the cluster-wide allocation controller)",
        description="Allocates ResourceClaims whose DeviceClass is labelled vgpu.dra.dev/allocator=controller, "
                    "for pending pods, with node/GPU placement policies.")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, then ~/.kube/config)")
    parser.add_argument("--node-policy", default="binpack", choices=("binpack", "spread"),
                        help="which node to prefer among those that fit (default: binpack)")
    parser.add_argument("--gpu-policy", default="binpack", choices=("binpack", "spread"),
                        help="which GPU to prefer on the chosen node (default: binpack)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent syncs (default: 16)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics, 0 = off (default: 8080)")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                        help="campaign for a Lease so that only one replica writes (default: on)")
    parser.add_argument("--lease-namespace", default="kube-system", help="namespace of the leader Lease")
    parser.add_argument("--lease-name", default="vgpu-dra-controller", help="name of the leader Lease")
    parser.add_argument("--identity", default=None, help="leader identity (default: hostname + random suffix)")
    parser.add_argument("--lease-duration", type=float, default=4.0,
                        help="seconds a Lease lasts unrenewed: a standby takes over this long after the leader "
                             "dies (default: 4)")
    parser.add_argument("--renew-deadline", type=float, default=None,
                        help="seconds a leader keeps leading while its renewals fail (default: 3/4 of the lease "
                             "duration)")
    parser.add_argument("--retry-period", type=float, default=None,
                        help="seconds between renewals (default: 1/8 of the lease duration)")
    parser.add_argument("--retry-refused-after", type=float, default=30.0,
                        help="seconds before a refused pod is retried even if nothing changed")
    parser.add_argument("--owner-gone-grace", type=float, default=10.0,
                        help="seconds a claim whose owning pod is gone waits for the garbage collector to delete "
                             "it before the controller releases it itself (default: 10)")
    parser.add_argument("--nominate-node", action=argparse.BooleanOptionalAction, default=True,
                        help="write each pod's status.nominatedNodeName with its allocation, so kube-scheduler "
                             "binds it without writing the node itself (default: on)")
    parser.add_argument("--nomination-wait", type=float, default=1.0,
                        help="seconds lifting a pod's gate waits for its nomination's write (0: not at all; "
                             "default: 1)")
    add_log_format_argument(parser)
    parser.set_defaults(handler=run)


def term_settings(args: argparse.Namespace) -> TermSettings:
    """The allocation controller's `TermSettings` from the parsed flags."""
    from vgpu_dra.controller.allocation_term import TermSettings
    from vgpu_dra.driver.placement_policy import PlacementPolicy

    return TermSettings(policy=PlacementPolicy.parse(args.node_policy, args.gpu_policy), workers=args.workers,
                        retry_refused_after_s=args.retry_refused_after, owner_gone_grace_s=args.owner_gone_grace,
                        nominate_node=args.nominate_node, nomination_wait_s=args.nomination_wait)


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT."""
    from prometheus_client import start_http_server

    from vgpu_dra.controller.service import ControllerService, LeaderSettings

    leader = LeaderSettings(enabled=args.leader_elect, namespace=args.lease_namespace, name=args.lease_name,
                            lease_duration_s=args.lease_duration,
                            renew_deadline_s=args.renew_deadline if args.renew_deadline is not None
                            else args.lease_duration * 3 / 4,
                            retry_period_s=args.retry_period if args.retry_period is not None
                            else args.lease_duration / 8,
                            **({"identity": args.identity} if args.identity else {}))
    problem = leader.problem() if args.leader_elect else None
    if problem:
        print(f"vgpu-dra controller: error: {problem}; fix --lease-duration, --renew-deadline or --retry-period",
              file=sys.stderr)
        return 2
    if args.owner_gone_grace < 0:
        print(f"vgpu-dra controller: error: --owner-gone-grace {args.owner_gone_grace:g} is negative; give the "
              "seconds to wait (0 releases at once)", file=sys.stderr)
        return 2
    configure_logging(args.log_format)
    log = structlog.get_logger("vgpu_dra.controller")
    settings = term_settings(args)
    try:
        client = api_client(args.kubeconfig, component="vgpu-dra-controller",
                            # Five watches hold connections for their whole life; workers, events and
                            # the Lease need their own, or urllib3 opens and discards one per request.
                            connection_pool_maxsize=max(16, 2 * args.workers + 8))
    except ClusterConfigError as exc:
        print(f"vgpu-dra controller: error: {exc}", file=sys.stderr)
        return 2
    service = ControllerService(client, settings, leader)
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=service.metrics.registry)
    log.info("starting", node_policy=args.node_policy, gpu_policy=args.gpu_policy, leader_elect=args.leader_elect,
             identity=leader.identity, metrics_port=args.metrics_port, lease_duration_s=leader.lease_duration_s,
             renew_deadline_s=leader.renew_deadline_s, retry_period_s=leader.retry_period_s)
    # Everything loaded so far (the kubernetes client's models, CEL, our modules: tens of thousands
    # of objects) lives as long as the process: out of the collector's sight, so a full collection
    # no longer walks them while a pod waits for its allocation (a 15-20 ms pause at this size).
    gc.freeze()
    run_until_stopped(service.run, "controller")
    log.info("stopped")
    return 0

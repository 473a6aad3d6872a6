"""Start the real-cluster tier's control plane by hand and keep it up until SIGINT/SIGTERM:

    .venv/bin/python -m tests.cluster.up            # prints the admin kubeconfig's path
    .venv/bin/python -m tests.cluster.up --nodes 2  # plus Ready Nodes test-node-0, test-node-1

For poking at it with kubectl, or pointing a benchmark at a real API server (`--kubeconfig`).
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from tests.cluster.control_plane import ControlPlane, ControlPlaneUnavailable, binaries_source, find_binaries
from tests.cluster.real_cluster import RealCluster


def main() -> int:
    """Run until signalled; print one line per fact a user needs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=0, help="Ready Nodes to create and keep Ready")
    parser.add_argument("--binaries", type=Path, default=binaries_source(),
                        help="Kubernetes release binaries (default: $VGPU_K8S_BIN or ../shared/k8s/bin)")
    args = parser.parse_args()
    if args.binaries is None:
        print("cannot start a control plane: set VGPU_K8S_BIN or --binaries to Kubernetes release binaries",
              file=sys.stderr)
        return 2
    try:
        binaries = find_binaries(args.binaries)
    except ControlPlaneUnavailable as exc:
        print(f"cannot start a control plane: {exc}", file=sys.stderr)
        return 2
    control_plane = ControlPlane(binaries).start()
    cluster = RealCluster(control_plane.admin_kubeconfig, binaries.path("kubectl"),
                          Path(tempfile.mkdtemp(prefix="vgpu-cluster-")), control_plane)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        for i in range(args.nodes):
            cluster.nodes.add(f"test-node-{i}")
        print(f"kubeconfig: {control_plane.admin_kubeconfig}", flush=True)
        print(f"kubectl:    {binaries.path('kubectl')}", flush=True)
        done.wait()
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

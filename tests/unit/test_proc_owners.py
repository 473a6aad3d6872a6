"""A host PID's pod and container from /proc/<pid>/cgroup, as the kubelet's cgroup drivers and the
container runtimes name them."""
from __future__ import annotations

import pytest

from vgpu_dra.kubeletplugin.proc_owners import parse_cgroup, parse_ns_pid

UID = "6b1f2c3d-8e4a-4f5b-9c7d-0a1b2c3d4e5f"
CID = "0123456789abcdef" * 4


@pytest.mark.parametrize("text", [
    # cgroup v2, systemd driver, containerd
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
    f"cri-containerd-{CID}.scope\n",
    # guaranteed QoS has no QoS slice; CRI-O names its scopes crio-
    f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n",
    # cgroup v1, cgroupfs driver: many hierarchies, the pod in each
    f"12:memory:/kubepods/besteffort/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{CID}\n"
    "1:name=systemd:/\n",
    # docker-shim era names
    f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
    f"docker-{CID}.scope\n",
])
def test_pod_uid_and_container_id_under_every_driver(text):
    owner = parse_cgroup(42, text)
    assert (owner.pid, owner.pod_uid, owner.container_id) == (42, UID, CID)


def test_a_host_process_is_in_no_pod_and_a_pod_cgroup_without_a_container_still_names_the_pod():
    assert parse_cgroup(7, "0::/system.slice/gdm.service\n").pod_uid is None
    assert parse_cgroup(7, "0::/user.slice/user-1000.slice/session-2.scope\n").pod_uid is None
    owner = parse_cgroup(7, f"0::/kubepods/pod{UID.upper()}\n")
    assert owner.pod_uid == UID and owner.container_id == ""


def test_the_innermost_namespace_pid():
    assert parse_ns_pid("Name:\tpython\nNSpid:\t81234\t17\n") == 17
    assert parse_ns_pid("Name:\tinit\nNSpid:\t1\n") == 1
    assert parse_ns_pid("Name:\told-kernel\n") == 0

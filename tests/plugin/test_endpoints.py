"""The gRPC surface as the kubelet sees it: registration, both DRA versions, health, sockets."""
from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.plugin.kubelet_client import Claim, FakeKubelet, KubeletProtocolError
from vgpu_dra.kubeletplugin.endpoints import PluginEndpoints
from vgpu_dra.kubeletplugin.prepared import ClaimOutcome, ClaimRef, PreparedDevice
from vgpu_dra.kubeletplugin.settings import PluginSettings


class RecordingPreparer:
    """Answers every claim with one device; the claim named 'forget-me' gets no answer at all."""

    def __init__(self) -> None:
        self.prepared: list[ClaimRef] = []
        self.unprepared: list[ClaimRef] = []

    def prepare(self, claims: list[ClaimRef]) -> Mapping[str, ClaimOutcome]:
        self.prepared.extend(claims)
        return {c.uid: ClaimOutcome(devices=(PreparedDevice(("req",), "node-a", "gpu-0",
                                                            (f"k8s.vgpu.dra.dev/claim={c.uid}-gpu-0",),
                                                            share_id="5c3b1a2e-0000-4000-8000-000000000001"),))
                for c in claims if c.name != "forget-me"}

    def unprepare(self, claims: list[ClaimRef]) -> Mapping[str, str]:
        self.unprepared.extend(claims)
        return {c.uid: "" for c in claims if c.name != "forget-me"}


@pytest.fixture
def settings(short_tmp: Path) -> PluginSettings:
    return PluginSettings(node_name="node-a", registrar_dir=short_tmp / "reg", plugin_dir=short_tmp / "plug",
                          state_dir=short_tmp / "state", cdi_dir=short_tmp / "cdi")


@pytest.fixture
def endpoints(settings: PluginSettings):
    preparer = RecordingPreparer()
    ep = PluginEndpoints(settings, preparer)
    ep.start()
    ep.preparer = preparer  # type: ignore[attr-defined]
    yield ep
    ep.stop(grace=0.5)


def _stale_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays: exactly what a crashed plugin leaves behind


def test_registration_answers_like_a_dra_plugin(endpoints, settings):
    kubelet = FakeKubelet(settings.registration_socket)
    info = kubelet.register()
    assert info.type == "DRAPlugin"
    assert info.name == "vgpu.dra.dev"
    assert info.endpoint == str(settings.dra_socket)
    assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    assert kubelet.version == "v1.DRAPlugin"
    assert endpoints.registration.registered.is_set()
    kubelet.close()


def test_rejected_registration_is_remembered(endpoints, settings):
    kubelet = FakeKubelet(settings.registration_socket, supported_versions=("v1alpha3.NodeService",))
    with pytest.raises(KubeletProtocolError, match="none of"):
        kubelet.register()
    assert not endpoints.registration.registered.is_set()
    assert "none of" in endpoints.registration.last_error


@pytest.mark.parametrize("version", ["v1.DRAPlugin", "v1beta1.DRAPlugin"])
def test_prepare_and_unprepare_over_each_version(endpoints, settings, version):
    kubelet = FakeKubelet(settings.registration_socket, supported_versions=(version,))
    kubelet.register()
    claims = [Claim("ns", "uid-1", "one"), Claim("ns", "uid-2", "two")]
    answers = kubelet.prepare(claims)
    assert set(answers) == {"uid-1", "uid-2"}
    device = answers["uid-1"].devices[0]
    assert device.cdi_device_ids == ("k8s.vgpu.dra.dev/claim=uid-1-gpu-0",)
    assert (device.pool_name, device.device_name, device.request_names) == ("node-a", "gpu-0", ("req",))
    # v1beta1 has no share_id field at all; v1 carries it.
    assert device.share_id == ("5c3b1a2e-0000-4000-8000-000000000001" if version == "v1.DRAPlugin" else None)
    assert kubelet.unprepare(claims) == {"uid-1": "", "uid-2": ""}
    assert [c.uid for c in endpoints.preparer.prepared] == ["uid-1", "uid-2"]
    assert endpoints.preparer.prepared[0] == ClaimRef("ns", "uid-1", "one")
    kubelet.close()


def test_every_claim_uid_is_answered_even_if_the_preparer_forgets_one(endpoints, settings):
    kubelet = FakeKubelet(settings.registration_socket)
    kubelet.register()
    answers = kubelet.prepare([Claim("ns", "uid-1", "one"), Claim("ns", "uid-9", "forget-me")])
    assert answers["uid-1"].error == ""
    assert "no answer" in answers["uid-9"].error
    assert "no answer" in kubelet.unprepare([Claim("ns", "uid-9", "forget-me")])["uid-9"]
    kubelet.close()


def test_health_service_reports_serving(endpoints, settings):
    for sock in (settings.dra_socket, settings.registration_socket):
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"):
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_dra_socket_answers_before_the_registration_socket_appears(settings):
    """The kubelet dials the endpoint as soon as it sees the registration socket."""
    seen: dict[str, object] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if settings.registration_socket.exists():
                with grpc.insecure_channel(f"unix://{settings.dra_socket}") as channel:
                    try:
                        seen["status"] = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=2).status
                    except grpc.RpcError as exc:
                        seen["status"] = exc.code()
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    ep = PluginEndpoints(settings, RecordingPreparer())
    ep.start()
    watcher.join(timeout=10)
    stop.set()
    ep.stop(grace=0.5)
    assert seen["status"] == health_pb2.HealthCheckResponse.SERVING


def test_stale_sockets_are_replaced_at_start_and_removed_at_stop(settings):
    _stale_socket(settings.dra_socket)
    _stale_socket(settings.registration_socket)
    ep = PluginEndpoints(settings, RecordingPreparer())
    ep.start()
    kubelet = FakeKubelet(settings.registration_socket)
    kubelet.register()
    assert kubelet.prepare([Claim("ns", "u", "n")])["u"].error == ""
    kubelet.close()
    ep.stop(grace=0.5)
    assert not settings.dra_socket.exists()
    assert not settings.registration_socket.exists()


def test_a_regular_file_at_the_socket_path_is_not_deleted(settings):
    settings.dra_socket.parent.mkdir(parents=True)
    settings.dra_socket.write_text("precious")
    ep = PluginEndpoints(settings, RecordingPreparer())
    with pytest.raises(RuntimeError, match="not a socket"):
        ep.start()
    assert settings.dra_socket.read_text() == "precious"


def test_sockets_of_dead_predecessors_are_removed_but_live_ones_kept(settings):
    from dataclasses import replace

    _stale_socket(settings.registrar_dir / "vgpu.dra.dev-dead-pod-reg.sock")
    _stale_socket(settings.plugin_dir / "dra-dead-pod.sock")
    other = PluginEndpoints(replace(settings, pod_uid="live-pod"), RecordingPreparer())
    other.start()  # a live instance (rolling update): its sockets must survive
    ep = PluginEndpoints(replace(settings, pod_uid="new-pod"), RecordingPreparer())
    ep.start()
    try:
        assert sorted(p.name for p in settings.registrar_dir.iterdir()) == [
            "vgpu.dra.dev-live-pod-reg.sock", "vgpu.dra.dev-new-pod-reg.sock"]
        assert sorted(p.name for p in settings.plugin_dir.iterdir()) == ["dra-live-pod.sock", "dra-new-pod.sock"]
        kubelet = FakeKubelet(replace(settings, pod_uid="live-pod").registration_socket)
        kubelet.register()
        assert kubelet.prepare([Claim("ns", "u", "n")])["u"].error == ""
        kubelet.close()
    finally:
        ep.stop(grace=0.5)
        other.stop(grace=0.5)


def test_settings_refuse_what_cannot_work(short_tmp):
    from dataclasses import replace

    fine = PluginSettings(node_name="n", registrar_dir=short_tmp, plugin_dir=short_tmp)
    fine.check()
    with pytest.raises(ValueError, match="node name is empty"):
        replace(fine, node_name="").check()
    with pytest.raises(ValueError, match="AF_UNIX"):
        replace(fine, plugin_dir=short_tmp / ("x" * 120)).check()

"""What a platform engineer gets from the chart: the allocator mode decides what runs, the
DeviceClasses select what each allocator can allocate, RBAC is least-privilege and sufficient,
the pods pass flags the real CLI accepts, and the DaemonSet reaches the host paths the kubelet and
the container runtime use."""
from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import celpy
import helm_python
import pytest
import yaml
from celpy import celtypes

from tests.deploy.chart import CHART_DIR, NAMESPACE, REPO, render
from vgpu_dra.api import names
from vgpu_dra.api.config import parse_config
from vgpu_dra.api.quantity import parse_bytes
from vgpu_dra.cli.main import build_parser
from vgpu_dra.driver.selectors import candidate_activation, compile_selectors
from vgpu_dra.kubeletplugin import node_events
from vgpu_dra.kubeletplugin import settings as plugin_settings

CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
GIB = 1 << 30


def _container(workload: dict, name: str, *, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    return next(c for c in workload["spec"]["template"]["spec"][key] if c["name"] == name)


def _expand(args: list[str], container: dict) -> list[str]:
    """Kubernetes' $(VAR) expansion of args; every variable used must be in the container's env."""
    defined = {e["name"] for e in container.get("env", [])}
    for arg in args:
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
            assert var in defined, f"{arg!r} uses $({var}) but the container defines no such env"
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: f"<{m.group(1)}>", a) for a in args]


def _parsed_cli(container: dict):
    return build_parser().parse_args(_expand(container["args"], container))


def _selectors(device_class: dict) -> list[str]:
    return [s["cel"]["expression"] for s in device_class["spec"]["selectors"]]


class PublishedGpu:
    """A GPU as its ResourceSlice publishes it."""

    attributes = {"type": "gpu", "uuid": "GPU-1111", "index": 0, "productName": "NVIDIA L40S"}
    capacity = {"memory": 46 * GIB, "cores": 100}


class OtherDriversGpu:
    """A device another DRA driver publishes on the same cluster (attributes in its own domain)."""

    driver = "gpu.nvidia.com"
    attributes = {"gpu.nvidia.com/type": "gpu", "gpu.nvidia.com/uuid": "GPU-2222"}
    capacity = {"gpu.nvidia.com/memory": 46 * GIB}


def _as_scheduler_sees(expression: str, device: object | None = None) -> bool:
    """kube-scheduler evaluates class selectors against every published device as it is (our
    GPUs read type "gpu"); an evaluation error aborts the claim's allocation, so it raises here."""
    device = device or PublishedGpu()
    activation = candidate_activation(device)
    if getattr(device, "driver", names.DRIVER_NAME) == names.DRIVER_NAME:
        activation["device"][celtypes.StringType("attributes")][celtypes.StringType(names.DRIVER_NAME)][
            celtypes.StringType("type")] = celtypes.StringType("gpu")
    env = celpy.Environment()
    result = env.program(env.compile(expression)).evaluate(activation)
    if isinstance(result, Exception):
        raise result
    assert isinstance(result, celtypes.BoolType), f"{expression!r} gave {result!r}"
    return bool(result)


# --------------------------------------------------------------------------- allocator modes


def test_controller_mode_runs_two_leader_elected_controllers_with_a_disruption_budget():
    rendered = render()
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = _parsed_cli(_container(deployment, "controller"))
    assert args.command == "controller"
    assert args.leader_elect is True
    assert args.lease_namespace == NAMESPACE
    assert args.identity == "<POD_NAME>"
    pod_name_env = next(e for e in _container(deployment, "controller")["env"] if e["name"] == "POD_NAME")
    assert pod_name_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_scheduler_mode_renders_no_controller_at_all():
    rendered = render({"allocator": "scheduler"})
    assert rendered.of_kind("Deployment") == []
    assert rendered.of_kind("PodDisruptionBudget") == []
    assert rendered.names("Role") == rendered.names("RoleBinding") == {"vgpu-dra-kubelet-plugin-node-events"}
    everything = {o["metadata"]["name"] for o in rendered.objects}
    assert not any("controller" in name for name in everything), everything
    assert rendered.names("DaemonSet") == {"vgpu-dra-kubelet-plugin"}
    assert "allocator: scheduler" in rendered.notes


def test_a_single_controller_without_leader_election_says_so_and_gets_no_budget():
    rendered = render({"controller": {"replicas": 1, "leaderElection": {"enabled": False}}})
    args = _parsed_cli(_container(rendered.one("Deployment"), "controller"))
    assert args.leader_elect is False
    assert rendered.of_kind("PodDisruptionBudget") == []  # minAvailable 1 of 1 would block every drain
    assert not any("leader-election" in name for name in rendered.names("Role"))


# --------------------------------------------------------------------------- DeviceClasses


def test_controller_mode_classes_are_the_api_names_and_only_the_controller_can_allocate_them():
    rendered = render()
    classes = {c["metadata"]["name"]: c for c in rendered.of_kind("DeviceClass")}
    assert set(classes) == {names.DEVICE_CLASS, names.DEVICE_CLASS_SMALL, names.DEVICE_CLASS_MEDIUM,
                            names.DEVICE_CLASS_LARGE}
    for device_class in classes.values():
        assert device_class["metadata"]["labels"][names.ALLOCATOR_LABEL] == names.ALLOCATOR_CONTROLLER
        selectors = _selectors(device_class)
        assert compile_selectors(selectors)(PublishedGpu()), "the controller must see GPUs as candidates"
        assert not any(_as_scheduler_sees(s) for s in selectors), "kube-scheduler must never allocate them"
        # kube-scheduler also runs them against other drivers' devices: a false, not an error that
        # would abort the claim's allocation.
        assert not any(_as_scheduler_sees(s, OtherDriversGpu()) for s in selectors)


def test_sized_classes_carry_a_valid_default_vgpu_config():
    rendered = render()
    sizes = {}
    for name in (names.DEVICE_CLASS_SMALL, names.DEVICE_CLASS_MEDIUM, names.DEVICE_CLASS_LARGE):
        (config,) = rendered.one("DeviceClass", name)["spec"]["config"]
        assert config["opaque"]["driver"] == names.DRIVER_NAME
        parsed = parse_config(config["opaque"]["parameters"])
        sizes[name] = (parsed.memory, parsed.cores)
    assert sizes == {names.DEVICE_CLASS_SMALL: (2 * GIB, 15), names.DEVICE_CLASS_MEDIUM: (4 * GIB, 30),
                     names.DEVICE_CLASS_LARGE: (8 * GIB, 50)}
    plain = next(c for c in rendered.of_kind("DeviceClass") if c["metadata"]["name"] == names.DEVICE_CLASS)
    assert "config" not in plain["spec"]  # the size comes from the claim


def test_sizes_from_values_reach_the_classes_including_memory_percent():
    rendered = render({"deviceClasses": {"sizes": {"small": {"memory": None, "memoryPercent": 10},
                                                   "large": {"memory": "20Gi", "cores": 0}}}})
    small = parse_config(rendered.one("DeviceClass", names.DEVICE_CLASS_SMALL)["spec"]["config"][0]["opaque"]["parameters"])
    assert (small.memory, small.memory_percent, small.cores) == (None, 10, 15)
    large = parse_config(rendered.one("DeviceClass", names.DEVICE_CLASS_LARGE)["spec"]["config"][0]["opaque"]["parameters"])
    assert (large.memory, large.cores) == (parse_bytes("20Gi"), 0)


def test_chart_classes_match_the_example_device_classes():
    """`kubectl apply -f examples/deviceclasses/` and the chart give claims the same classes."""
    rendered = {c["metadata"]["name"]: c for c in render().of_kind("DeviceClass")}
    examples = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "examples" / "deviceclasses").glob("*.yaml"))]
    assert {e["metadata"]["name"] for e in examples} == set(rendered)
    for example in examples:
        chart_class = rendered[example["metadata"]["name"]]
        assert example["metadata"]["labels"].items() <= chart_class["metadata"]["labels"].items()
        assert example["spec"].get("config") == chart_class["spec"].get("config")
        assert _selectors(example) == _selectors(chart_class)
        for device_class in (example, chart_class):
            assert compile_selectors(_selectors(device_class))(PublishedGpu())
            assert not any(_as_scheduler_sees(s) for s in _selectors(device_class))
            assert not any(_as_scheduler_sees(s, OtherDriversGpu()) for s in _selectors(device_class))


def test_scheduler_mode_classes_are_allocated_by_kube_scheduler_with_the_same_sizes():
    """The same claims work in both modes: the plain class and the sized classes exist in
    scheduler mode too, select what kube-scheduler sees, and carry the same VgpuConfig."""
    rendered = render({"allocator": "scheduler"})
    controller_classes = {c["metadata"]["name"]: c for c in render().of_kind("DeviceClass")}
    classes = {c["metadata"]["name"]: c for c in rendered.of_kind("DeviceClass")}
    assert set(classes) == set(controller_classes) and names.DEVICE_CLASS in classes
    for name, device_class in classes.items():
        assert device_class["metadata"]["labels"][names.ALLOCATOR_LABEL] == names.ALLOCATOR_SCHEDULER
        assert device_class["spec"].get("config") == controller_classes[name]["spec"].get("config")
        (selector,) = _selectors(device_class)
        assert _as_scheduler_sees(selector)
        assert not _as_scheduler_sees(selector, OtherDriversGpu())
        assert not compile_selectors([selector])(PublishedGpu()), "the controller must not see these as candidates"
    assert "config" not in classes[names.DEVICE_CLASS]["spec"]


# --------------------------------------------------------------------------- RBAC


def _rules(role: dict) -> list[tuple[str, str, str]]:
    return [(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]]


def test_controller_may_write_allocations_through_status_and_binding():
    rules = set(_rules(render().one("ClusterRole", "-controller")))
    for subresource in ("resourceclaims/status", "resourceclaims/binding"):
        assert {("resource.k8s.io", subresource, "update"), ("resource.k8s.io", subresource, "patch")} <= rules
    assert ("resource.k8s.io", "resourceclaims", "update") in rules      # its finalizer
    assert ("", "pods", "update") in rules                               # scheduling-gate removal
    assert {v for g, r, v in rules if r == "pods/status"} == {"patch"}  # the nominated node alone
    assert ("", "events", "create") in rules
    for read_only in ("resourceslices", "deviceclasses"):
        assert {v for g, r, v in rules if r == read_only} == {"get", "list", "watch"}
    assert {v for g, r, v in rules if r == "nodes"} == {"get", "list", "watch"}


def test_controller_reads_resourcequotas_and_never_writes_them():
    # Namespace GPU quotas (docs/quotas.md): the controller watches ResourceQuotas; their status is
    # kube-controller-manager's.
    rules = set(_rules(render().one("ClusterRole", "-controller")))
    assert {v for g, r, v in rules if (g, r) == ("", "resourcequotas")} == {"get", "list", "watch"}
    assert not any(r.startswith("resourcequotas/") for g, r, v in rules)


def test_controller_lease_access_is_its_own_lease_in_the_release_namespace():
    rendered = render({"controller": {"leaderElection": {"leaseName": "gpu-allocator"}}})
    role = rendered.one("Role", "-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named and all(r["resourceNames"] == ["gpu-allocator"] for r in named)
    assert all(r["resources"] == ["leases"] for r in role["rules"])
    args = _parsed_cli(_container(rendered.one("Deployment"), "controller"))
    assert (args.lease_name, args.lease_namespace) == ("gpu-allocator", NAMESPACE)


def test_controller_extra_args_set_the_nomination_and_the_owner_grace():
    from vgpu_dra.cli.controller import term_settings

    default = term_settings(_parsed_cli(_container(render().one("Deployment"), "controller")))
    assert (default.nominate_node, default.owner_gone_grace_s) == (True, 10.0)
    values = {"controller": {"extraArgs": ["--no-nominate-node", "--owner-gone-grace=30"]}}
    changed = term_settings(_parsed_cli(_container(render(values).one("Deployment"), "controller")))
    assert (changed.nominate_node, changed.owner_gone_grace_s) == (False, 30.0)


def test_controller_lease_timings_reach_the_cli_and_are_ones_it_accepts():
    from vgpu_dra.controller.service import LeaderSettings

    for values, expected in (({}, (4, 3, 0.5)),
                             ({"leaseDurationSeconds": 15, "renewDeadlineSeconds": 10, "retryPeriodSeconds": 2},
                              (15, 10, 2))):
        args = _parsed_cli(_container(render({"controller": {"leaderElection": values}}).one("Deployment"),
                                      "controller"))
        assert (args.lease_duration, args.renew_deadline, args.retry_period) == expected
        assert LeaderSettings(lease_duration_s=args.lease_duration, renew_deadline_s=args.renew_deadline,
                              retry_period_s=args.retry_period).problem() is None


@pytest.mark.parametrize("timings, named", [
    ({"leaseDurationSeconds": 3}, "leaseDurationSeconds (3) must be more than renewDeadlineSeconds (3)"),
    ({"retryPeriodSeconds": 2.5}, "renewDeadlineSeconds (3) must be more than 1.2 x retryPeriodSeconds (2.5)"),
    ({"renewDeadlineSeconds": 1.2, "retryPeriodSeconds": 1}, "(1.2) must be more than 1.2 x retryPeriodSeconds (1)"),
])
def test_lease_timings_a_standby_could_act_on_too_early_fail_the_install_naming_them(timings, named):
    with pytest.raises(helm_python.HelmRenderError) as raised:
        render({"controller": {"leaderElection": timings}})
    assert named in str(raised.value)


def test_a_standby_may_watch_its_own_lease():
    role = render().one("Role", "-leader-election")
    named = next(r for r in role["rules"] if r.get("resourceNames"))
    assert {"get", "list", "watch", "update"} <= set(named["verbs"])


def test_kubelet_plugin_can_publish_slices_and_write_only_its_claims_device_status():
    role = render().one("ClusterRole", "-kubelet-plugin")
    rules = set(_rules(role))
    assert {v for g, r, v in rules if r == "resourceslices"} == {
        "get", "list", "watch", "create", "update", "patch", "delete"}
    assert {v for g, r, v in rules if r == "resourceclaims"} == {"get", "list"}
    # status.devices only: a patch of /status that the 1.36 API server lets through for our
    # driver's entries on claims allocated on the token's node; never allocation or reservedFor
    # (resourceclaims/binding), never the claim itself.
    assert {v for g, r, v in rules if r == "resourceclaims/status"} == {"patch"}
    assert {v for g, r, v in rules if r == "resourceclaims/driver"} == {"associated-node:patch"}
    [driver_rule] = [rule for rule in role["rules"] if "resourceclaims/driver" in rule["resources"]]
    assert driver_rule["resourceNames"] == ["vgpu.dra.dev"]
    assert {v for g, r, v in rules if r == "nodes"} == {"get"}
    assert {r for g, r, v in rules} == {"resourceslices", "resourceclaims", "resourceclaims/status",
                                        "resourceclaims/driver", "nodes"}


def test_kubelet_plugin_may_create_node_events_where_the_code_writes_them():
    rendered = render()
    role = rendered.one("Role", "-node-events")
    assert role["metadata"]["namespace"] == node_events.EVENT_NAMESPACE
    assert _rules(role) == [("", "events", "create")]
    binding = rendered.one("RoleBinding", "-node-events")
    assert binding["metadata"]["namespace"] == node_events.EVENT_NAMESPACE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vgpu-dra-kubelet-plugin", "namespace": NAMESPACE}]


@pytest.mark.parametrize("allocator", ["controller", "scheduler"])
def test_no_role_uses_wildcards_or_touches_secrets(allocator):
    rendered = render({"allocator": allocator})
    for role in rendered.of_kind("ClusterRole") + rendered.of_kind("Role"):
        for group, resource, verb in _rules(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]
            assert resource != "secrets"


@pytest.mark.parametrize("allocator", ["controller", "scheduler"])
def test_every_binding_grants_a_rendered_role_to_a_rendered_service_account(allocator):
    rendered = render({"allocator": allocator})
    accounts = rendered.names("ServiceAccount")
    for binding in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
        assert binding["roleRef"]["name"] in rendered.names(binding["roleRef"]["kind"])
        for subject in binding["subjects"]:
            assert subject["name"] in accounts and subject["namespace"] == NAMESPACE
    for workload in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet"):
        assert workload["spec"]["template"]["spec"]["serviceAccountName"] in accounts


def test_admission_policy_binds_the_plugins_service_account_to_its_own_nodes_slices():
    rendered = render()
    policy = rendered.one("ValidatingAdmissionPolicy", "-resourceslices")
    binding = rendered.one("ValidatingAdmissionPolicyBinding", "-resourceslices")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["resourceslices"] and set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    account = rendered.one("DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"]
    (condition,) = policy["spec"]["matchConditions"]
    assert f'"system:serviceaccount:{NAMESPACE}:{account}"' in condition["expression"]
    assert policy["spec"]["failurePolicy"] == "Fail"  # what it allows and denies: test_admission_policy.py


# --------------------------------------------------------------------------- the node agent


def _host_paths(daemonset: dict) -> dict[str, str]:
    return {v["name"]: v["hostPath"]["path"] for v in daemonset["spec"]["template"]["spec"]["volumes"] if "hostPath" in v}


def test_daemonset_mounts_kubelet_cdi_and_state_directories_at_their_host_paths():
    daemonset = render().one("DaemonSet")
    host_paths = _host_paths(daemonset)
    assert set(host_paths.values()) == {"/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins",
                                        "/var/run/cdi", "/etc/cdi", "/var/lib/vgpu-dra", "/"}
    plugin = _container(daemonset, "kubelet-plugin")
    mounts = {m["name"]: m for m in plugin["volumeMounts"]}
    for name, path in host_paths.items():
        if name != "driver-root":  # sockets and CDI specs name host paths: inside must equal outside
            assert mounts[name]["mountPath"] == path
    assert mounts["etc-cdi"]["readOnly"] and mounts["driver-root"]["readOnly"]


def test_plugin_flags_parse_with_the_real_cli_and_point_into_the_mounts():
    daemonset = render().one("DaemonSet")
    plugin = _container(daemonset, "kubelet-plugin")
    args = _parsed_cli(plugin)
    assert args.command == "kubelet-plugin"
    assert args.registrar_dir == plugin_settings.DEFAULT_REGISTRAR_DIR
    assert args.plugin_dir == plugin_settings.DEFAULT_PLUGIN_DIR
    assert args.cdi_dir == plugin_settings.DEFAULT_CDI_DIR
    assert args.state_dir == plugin_settings.DEFAULT_STATE_DIR
    assert args.shim == plugin_settings.DEFAULT_SHIM_SOURCE
    assert set(args.nvidia_cdi_dirs) == set(plugin_settings.DEFAULT_NVIDIA_CDI_DIRS)
    ports = {p["name"]: p["containerPort"] for p in plugin["ports"]}
    assert args.metrics_port == ports["metrics"] == plugin_settings.DEFAULT_METRICS_PORT
    env = {e["name"]: e for e in plugin["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    assert args.node_name == "<NODE_NAME>" and args.pod_uid == "<POD_UID>"
    assert env["LD_LIBRARY_PATH"]["value"] == next(
        m["mountPath"] for m in plugin["volumeMounts"] if m["name"] == "nvml-link")


def test_a_moved_kubelet_directory_moves_sockets_mounts_and_flags_together():
    daemonset = render({"kubeletPlugin": {"kubeletDir": "/var/lib/k0s/kubelet/", "stateDir": "/data/vgpu",
                                          "metricsPort": 9999}}).one("DaemonSet")
    host_paths = _host_paths(daemonset)
    assert host_paths["plugins-registry"] == "/var/lib/k0s/kubelet/plugins_registry"
    assert host_paths["plugins"] == "/var/lib/k0s/kubelet/plugins"
    assert host_paths["state"] == "/data/vgpu"
    args = _parsed_cli(_container(daemonset, "kubelet-plugin"))
    settings = plugin_settings.PluginSettings(node_name="n", registrar_dir=args.registrar_dir,
                                              plugin_dir=args.plugin_dir, state_dir=args.state_dir, pod_uid="u")
    settings.check()
    assert settings.registration_socket.parent == Path(host_paths["plugins-registry"])
    assert settings.dra_socket.is_relative_to(host_paths["plugins"])
    assert settings.checkpoint_path.is_relative_to(host_paths["state"])
    assert args.metrics_port == 9999
    init = _container(daemonset, "prepare-node", init=True)
    assert "--state-dir=/data/vgpu" in init["args"]


def test_rolling_update_keeps_the_old_plugin_until_the_new_one_runs():
    daemonset = render().one("DaemonSet")
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # Two pods on one node need distinct sockets (--pod-uid) and host-side state.
    args = _parsed_cli(_container(daemonset, "kubelet-plugin"))
    assert args.pod_uid
    state = next(v for v in daemonset["spec"]["template"]["spec"]["volumes"] if v["name"] == "state")
    assert "hostPath" in state
    assert "hostNetwork" not in daemonset["spec"]["template"]["spec"]  # no port clash between the two pods


def test_init_container_runs_the_charts_prepare_node_script_on_the_plugins_paths():
    daemonset = render().one("DaemonSet")
    init = _container(daemonset, "prepare-node", init=True)
    plugin_args = _parsed_cli(_container(daemonset, "kubelet-plugin"))
    assert init["command"][:2] == ["python", "-c"]
    assert init["command"][2] == (CHART_DIR / "files" / "prepare-node.py").read_text()
    assert f"--shim={plugin_args.shim}" in init["args"]
    assert f"--state-dir={plugin_args.state_dir}" in init["args"]
    assert init["image"] == _container(daemonset, "kubelet-plugin")["image"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert mounts["state"] == str(plugin_args.state_dir)


def test_runtime_class_mode_drops_the_driver_root_and_asks_the_toolkit_for_nvml():
    daemonset = render({"nvidia": {"driverRoot": "", "runtimeClassName": "nvidia"}}).one("DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert "/" not in _host_paths(daemonset).values()
    env = {e["name"]: e.get("value") for e in _container(daemonset, "kubelet-plugin")["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and "LD_LIBRARY_PATH" not in env
    init = _container(daemonset, "prepare-node", init=True)
    assert not any(a.startswith("--driver-root") for a in init["args"])


# --------------------------------------------------------------------------- image and values


def test_image_defaults_to_the_chart_app_version_which_is_the_package_version():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert CHART["appVersion"] == pyproject["project"]["version"]
    rendered = render()
    images = {c["image"] for w in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet")
              for key in ("containers", "initContainers") for c in w["spec"]["template"]["spec"].get(key, [])}
    assert images == {f"ghcr.io/vgpu-dra/vgpu-dra:{CHART['appVersion']}"}


def test_image_tag_from_values_reaches_every_container():
    rendered = render({"image": {"repository": "registry.example.com/vgpu-dra", "tag": "v9.9.9"}})
    for workload in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet"):
        spec = workload["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] == "registry.example.com/vgpu-dra:v9.9.9"


@pytest.mark.parametrize(("values", "where"), [
    ({"allocator": "kube-scheduler"}, "/allocator"),
    ({"allocater": "scheduler"}, "allocater"),
    ({"controller": {"nodePolicy": "pack"}}, "/controller/nodePolicy"),
    ({"deviceClasses": {"sizes": {"small": {"memoryPercent": 10}}}}, "/deviceClasses/sizes/small"),
    ({"deviceClasses": {"sizes": {"large": {"cores": 150}}}}, "/deviceClasses/sizes/large/cores"),
    ({"kubeletPlugin": {"stateDir": "var/lib/vgpu-dra"}}, "/kubeletPlugin/stateDir"),
    # Two replicas without a leader would both allocate and oversubscribe GPUs.
    ({"controller": {"leaderElection": {"enabled": False}}}, "/controller/replicas"),
    # A Lease stores whole seconds.
    ({"controller": {"leaderElection": {"leaseDurationSeconds": 4.5}}}, "/controller/leaderElection/leaseDurationSeconds"),
])
def test_values_schema_rejects_bad_values_naming_the_key(values, where):
    with pytest.raises(helm_python.HelmValuesError) as raised:
        render(values)
    assert where in str(raised.value)


# --------------------------------------------------------------------------- dashboards


@pytest.fixture
def chart_with_dashboard(tmp_path: Path) -> Path:
    chart = tmp_path / "vgpu-dra"
    shutil.copytree(CHART_DIR, chart)
    (chart / "dashboards").mkdir(exist_ok=True)
    (chart / "dashboards" / "vgpu-dra.json").write_text('{"title": "vgpu-dra", "panels": []}\n')
    return chart


def test_dashboard_files_become_a_sidecar_config_map_when_enabled(chart_with_dashboard):
    rendered = render({"grafana": {"dashboards": {"enabled": True}}}, chart_dir=chart_with_dashboard)
    config_map = rendered.one("ConfigMap", "-dashboards")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {"vgpu-dra.json": '{"title": "vgpu-dra", "panels": []}\n'}
    assert render(chart_dir=chart_with_dashboard).of_kind("ConfigMap") == []


def test_no_dashboard_config_map_without_dashboard_files(chart_with_dashboard):
    shutil.rmtree(chart_with_dashboard / "dashboards")
    rendered = render({"grafana": {"dashboards": {"enabled": True}}}, chart_dir=chart_with_dashboard)
    assert rendered.of_kind("ConfigMap") == []

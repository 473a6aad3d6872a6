"""CEL selectors evaluated against a GPU presented as a vGPU candidate."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from vgpu_dra.driver.selectors import SelectorError, SemVer, compile_selectors

GIB = 1 << 30


@dataclass
class Gpu:
    driver: str = "vgpu.dra.dev"
    attributes: Mapping[str, object] = field(default_factory=lambda: {
        "type": "gpu", "uuid": "GPU-1111", "index": 0, "productName": "NVIDIA GeForce RTX 3080",
        "cudaComputeCapability": SemVer.parse("8.6.0"), "driverVersion": SemVer.parse("550.54.15"),
        "numaNode": 1,
    })
    capacity: Mapping[str, int] = field(default_factory=lambda: {"memory": 10 * GIB, "cores": 100})


CLASS_SELECTOR = 'device.driver == "vgpu.dra.dev" && device.attributes["vgpu.dra.dev"].type == "vgpu"'


def matches(*expressions: str, gpu: Gpu | None = None) -> bool:
    return compile_selectors(list(expressions))(gpu or Gpu())


def test_controller_class_selector_matches_gpu_presented_as_vgpu():
    assert matches(CLASS_SELECTOR)
    assert not matches('device.attributes["vgpu.dra.dev"].type == "gpu"')


def test_other_drivers_devices_are_not_vgpu_candidates():
    assert not matches(CLASS_SELECTOR, gpu=Gpu(driver="gpu.nvidia.com"))


def test_no_selectors_match_everything():
    assert matches()


@pytest.mark.parametrize(("expression", "expected"), [
    ('device.capacity["vgpu.dra.dev"].memory.compareTo(quantity("8Gi")) >= 0', True),
    ('device.capacity["vgpu.dra.dev"].memory.isGreaterThan(quantity("10Gi"))', False),
    ('device.capacity["vgpu.dra.dev"].memory.isLessThan(quantity("12G"))', True),
    ('device.capacity["vgpu.dra.dev"].memory == quantity("10Gi")', True),
    ('device.capacity["vgpu.dra.dev"].memory.asInteger() == 10737418240', True),
    ('device.capacity["vgpu.dra.dev"].cores.sub(quantity("50")).asInteger() == 50', True),
    ('device.capacity["vgpu.dra.dev"].cores.add(1).compareTo(quantity("101")) == 0', True),
    ('isQuantity("2Gi") && !isQuantity("2 gigs")', True),
])
def test_quantity_library(expression, expected):
    assert matches(expression) is expected


@pytest.mark.parametrize(("expression", "expected"), [
    ('device.attributes["vgpu.dra.dev"].cudaComputeCapability.isGreaterThan(semver("8.0.0"))', True),
    ('device.attributes["vgpu.dra.dev"].cudaComputeCapability.isLessThan(semver("8.6.0"))', False),
    ('device.attributes["vgpu.dra.dev"].driverVersion.compareTo(semver("550.54.15")) == 0', True),
    ('device.attributes["vgpu.dra.dev"].driverVersion.major() >= 550', True),
    ('device.attributes["vgpu.dra.dev"].cudaComputeCapability.minor() == 6', True),
    ('semver("1.0.0-alpha").isLessThan(semver("1.0.0"))', True),
    ('semver("1.0.0-alpha.2").isLessThan(semver("1.0.0-alpha.10"))', True),
    ('semver("1.0.0+build1") == semver("1.0.0+build2")', True),
    ('isSemver("1.2.3") && !isSemver("1.2") && isSemver("v1.2", true)', True),
])
def test_semver_library(expression, expected):
    assert matches(expression) is expected


def test_model_include_and_uuid_exclude():
    gpu = Gpu()
    assert matches('device.attributes["vgpu.dra.dev"].productName.matches(".*RTX 30[0-9]0.*")', gpu=gpu)
    assert not matches('!(device.attributes["vgpu.dra.dev"].uuid in ["GPU-1111", "GPU-2222"])', gpu=gpu)
    assert matches('device.attributes["vgpu.dra.dev"].productName.lowerAscii().contains("geforce")')


def test_unknown_domain_is_an_empty_map():
    assert matches('size(device.attributes["gpu.example.com"]) == 0')
    assert matches('!("model" in device.attributes["gpu.example.com"])')


def test_unknown_attribute_means_no_match_and_reports_once():
    selector = compile_selectors(['device.attributes["vgpu.dra.dev"].model == "A100"'])
    assert not selector(Gpu())
    assert not selector(Gpu(attributes={"type": "gpu", "index": 3}))
    assert len(selector.errors) == 1
    assert "model" in selector.errors[0]


def test_non_boolean_result_is_no_match_with_reason():
    selector = compile_selectors(['device.attributes["vgpu.dra.dev"].index'])
    assert not selector(Gpu())
    assert "expected bool" in selector.errors[0]


def test_all_expressions_must_hold():
    assert not matches(CLASS_SELECTOR, 'device.attributes["vgpu.dra.dev"].numaNode == 0')
    assert matches(CLASS_SELECTOR, 'device.attributes["vgpu.dra.dev"].numaNode == 1')


def test_compile_error_names_the_expression():
    with pytest.raises(SelectorError, match=r"device\.driver ==.*does not compile"):
        compile_selectors(["device.driver =="])
    with pytest.raises(SelectorError, match="empty"):
        compile_selectors(["  "])


def test_results_follow_attribute_changes():
    selector = compile_selectors(['device.attributes["vgpu.dra.dev"].driverVersion.major() >= 560'])
    assert not selector(Gpu())
    newer = Gpu()
    newer.attributes = {**newer.attributes, "driverVersion": SemVer.parse("560.1.0")}
    assert selector(newer)


def test_semver_parse_rejects_garbage_with_message():
    with pytest.raises(ValueError, match="not a semantic version"):
        SemVer.parse("eight")


def test_allocator_candidates_with_published_version_attributes():
    from vgpu_dra.driver.ledger import GpuCandidate, GpuDevice, Version

    device = GpuDevice(name="gpu-0", uuid="GPU-1", memory_bytes=10 * GIB, attributes={
        "type": "gpu", "uuid": "GPU-1", "cudaComputeCapability": Version("8.6.0"),
        "productName": "NVIDIA GeForce RTX 3080"})
    selector = compile_selectors([CLASS_SELECTOR,
                                  'device.attributes["vgpu.dra.dev"].cudaComputeCapability.isGreaterThan(semver("8.0.0"))',
                                  'device.capacity["vgpu.dra.dev"].memory.compareTo(quantity("10Gi")) == 0'])
    assert selector(GpuCandidate("node-a", device, used_memory_bytes=GIB, used_cores=0))
    older = GpuDevice(name="gpu-0", uuid="GPU-1", memory_bytes=10 * GIB,
                      attributes={**device.attributes, "cudaComputeCapability": Version("7.5.0")})
    assert not selector(GpuCandidate("node-a", older, used_memory_bytes=0, used_cores=0))


@pytest.mark.parametrize(("expression", "expected"), [
    ('cel.bind(attrs, device.attributes["vgpu.dra.dev"], attrs.productName.contains("3080") && attrs.index == 0)', True),
    ('cel.bind(m, device.capacity["vgpu.dra.dev"].memory, cel.bind(q, quantity("8Gi"), m.isGreaterThan(q)))', True),
    ('cel.bind(name, "a,(b)", name == "a,(b)")', True),
    ('cel.bind(x, 1, x == 2)', False),
])
def test_cel_bind(expression, expected):
    assert matches(expression) is expected


def test_cel_bind_with_wrong_arity_is_a_compile_error():
    with pytest.raises(SelectorError, match="3 arguments"):
        compile_selectors(['cel.bind(x, 1)'])


@pytest.mark.parametrize("expression", [
    'device.attributes["vgpu.dra.dev"].productName.replace("NVIDIA ", "") == "GeForce RTX 3080"',
    'device.attributes["vgpu.dra.dev"].productName.substring(7, 14) == "GeForce"',
    'device.attributes["vgpu.dra.dev"].uuid.lastIndexOf("1") == 7',
    'device.attributes["vgpu.dra.dev"].uuid.charAt(0) == "G"',
    '["a", "b"].join("-") == "a-b"',
    'device.attributes["vgpu.dra.dev"].productName.split(" ").size() == 4',
])
def test_kubernetes_string_library(expression):
    assert matches(expression)

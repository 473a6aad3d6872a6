"""VgpuConfig: every rejection names the field and the accepted form; valid forms parse exactly."""
import pytest

from vgpu_dra.api.config import InvalidConfigError, VgpuConfig, json_schema, merge_configs, parse_config

BASE = {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig"}


def cfg(**fields):
    return {**BASE, **fields}


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        (cfg(memroy="2Gi"), "unknown field 'memroy'"),
        (cfg(memory="2Gi", memoryPercent=20), "'memory' and 'memoryPercent' are both set"),
        (cfg(cores=150), "field 'cores' = 150"),
        (cfg(cores=-1), "field 'cores' = -1"),
        (cfg(cores="25"), "field 'cores' = '25'"),
        (cfg(memoryPercent=0), "field 'memoryPercent' = 0"),
        (cfg(memoryPercent=101), "field 'memoryPercent' = 101"),
        (cfg(memory="-2Gi"), "'-2Gi' is negative"),
        (cfg(memory="2Gb"), "'2Gb' is not a Kubernetes quantity"),
        (cfg(memory="0.5"), "not a whole number of bytes"),
        (cfg(memory=0), "must be more than 0 bytes"),
        (cfg(memory=True), "field 'memory'"),
        (cfg(corePolicy="strict"), "field 'corePolicy' = 'strict'"),
        ({"kind": "VgpuConfig"}, "field 'apiVersion' is required"),
        (cfg(apiVersion="vgpu.dra.dev/v1"), "field 'apiVersion' = 'vgpu.dra.dev/v1'"),
        (cfg(kind="GpuConfig"), "field 'kind' = 'GpuConfig'"),
    ],
)
def test_rejections_name_the_field(parameters, expected):
    with pytest.raises(InvalidConfigError) as info:
        parse_config(parameters)
    assert expected in str(info.value)
    assert str(info.value).startswith("invalid VgpuConfig: ")


def test_rejection_states_the_accepted_form():
    with pytest.raises(InvalidConfigError, match=r"expected an integer from 0 to 100"):
        parse_config(cfg(cores=150))
    with pytest.raises(InvalidConfigError, match=r"allowed fields: apiVersion, kind, memory"):
        parse_config(cfg(gpuMemory="1Gi"))


def test_all_problems_are_reported_at_once():
    with pytest.raises(InvalidConfigError) as info:
        parse_config(cfg(cores=150, memoryPercent=0))
    assert len(info.value.problems) == 2


@pytest.mark.parametrize(
    ("memory", "exact_bytes"),
    [("2Gi", 2 << 30), ("2G", 2_000_000_000), ("1536Mi", 1536 << 20), ("1.5Gi", 1610612736),
     ("2147483648", 2147483648), (2147483648, 2147483648), ("500M", 500_000_000), ("1Ti", 1 << 40),
     ("2e9", 2_000_000_000)],
)
def test_quantity_forms_are_exact_bytes(memory, exact_bytes):
    assert parse_config(cfg(memory=memory)).memory == exact_bytes


def test_json_text_and_wire_form_round_trip():
    parsed = parse_config('{"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig", "memory": "2Gi", "cores": 25}')
    assert parsed.to_parameters() == cfg(memory=2 << 30, cores=25)
    assert parse_config(parsed.to_parameters()) == parsed


def test_not_json_and_not_an_object_are_rejected():
    with pytest.raises(InvalidConfigError, match="not valid JSON"):
        parse_config("{memory: 2Gi")
    with pytest.raises(InvalidConfigError, match="must be an object"):
        parse_config("[1, 2]")


def test_merge_later_wins_and_memory_forms_replace_each_other():
    from_class = parse_config(cfg(memoryPercent=50, cores=10, corePolicy="hard"))
    from_claim = parse_config(cfg(memory="2Gi"))
    merged = merge_configs([from_class, from_claim])
    assert merged == VgpuConfig.model_validate(cfg(memory=2 << 30, cores=10, corePolicy="hard"))
    assert merged.memory_percent is None
    assert merge_configs([]) is None


def test_schema_lists_every_field_and_forbids_others():
    schema = json_schema()
    assert set(schema["properties"]) == {"apiVersion", "kind", "memory", "memoryPercent", "cores", "corePolicy"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["cores"]["anyOf"][0]["maximum"] == 100

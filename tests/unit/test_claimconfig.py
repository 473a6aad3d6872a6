"""The claim config text format shared by the kubelet plugin (writer) and libvgpu.so (reader)."""

import pytest

from vgpu_dra.driver.claimconfig import ClaimConfig, ClaimConfigError, GpuLimit, parse, render

UUID_A = "GPU-0b8c2f6e-1111-2222-3333-444455556666"
UUID_B = "GPU-9f00aa11-7777-8888-9999-000011112222"


def _config() -> ClaimConfig:
    return ClaimConfig(
        claim_uid="0e7f4d3c-aaaa-bbbb-cccc-ddddeeeeffff",
        gpus=(
            GpuLimit(uuid=UUID_A, memory_bytes=2 * 1024**3, cores=25, policy="soft"),
            GpuLimit(uuid=UUID_B, memory_bytes=512 * 1024**2, cores=0, policy="hard"),
        ),
    )


def test_render_then_parse_round_trips() -> None:
    config = _config()
    assert parse(render(config)) == config


def test_render_writes_one_gpu_line_per_gpu() -> None:
    text = render(_config())
    assert f"gpu uuid={UUID_A} memory=2147483648 cores=25 policy=soft" in text.splitlines()
    assert "version=1" in text.splitlines()


def test_records_and_keys_in_any_order_with_comments_and_blanks() -> None:
    text = f"""
    # written by hand
    gpu policy=hard cores=7 memory=1000 uuid={UUID_A}
    claim=abc-123

    version=1
    """
    assert parse(text) == ClaimConfig("abc-123", (GpuLimit(UUID_A, 1000, 7, "hard"),))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"claim=x\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\n", "missing version"),
        (f"version=1\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\n", "missing claim"),
        ("version=1\nclaim=x\n", "no gpu records"),
        (f"version=2\nclaim=x\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\n", "line 1: version=2"),
        (f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft colour=red\n", "line 3: unknown gpu field 'colour'"),
        (f"version=1\nclaim=x\nlimit=5\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\n", "line 3: unknown record 'limit'"),
        (f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=2Gi cores=0 policy=soft\n", "line 3: memory='2Gi'"),
        (f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=-1 cores=0 policy=soft\n", "line 3: memory='-1'"),
        (f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=0 cores=0 policy=soft\n", "line 3"),
        (f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=1 cores=101 policy=soft\n", "line 3: cores=101"),
        (f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=1 cores=0 policy=firm\n", "line 3: policy='firm'"),
        (f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=1 cores=0\n", "line 3: gpu record lacks policy"),
        (f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=1 memory=2 cores=0 policy=soft\n", "line 3: gpu field 'memory' repeated"),
        (f"version=1\nclaim=x\ngpu uuid=0 memory=1 cores=0 policy=soft\n", "line 3"),
        (
            f"version=1\nclaim=x\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\n",
            "line 4: gpu GPU-0b8c2f6e-1111-2222-3333-444455556666 appears twice",
        ),
        (f"version=1\nversion=1\nclaim=x\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\n", "line 2: version repeated"),
        (f"version=1\nclaim=x y\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\n", "line 2: unexpected text"),
        (f"version=1\nclaim=a/b\ngpu uuid={UUID_A} memory=1 cores=0 policy=soft\n", "claim uid"),
    ],
)
def test_invalid_configs_are_rejected_with_the_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ClaimConfigError) as err:
        parse(text)
    assert message in str(err.value)


def test_more_than_sixteen_gpus_is_rejected() -> None:
    gpus = "".join(f"gpu uuid=GPU-{i:08d} memory=1 cores=0 policy=soft\n" for i in range(17))
    with pytest.raises(ClaimConfigError, match="more than 16"):
        parse("version=1\nclaim=x\n" + gpus)


def test_dataclasses_refuse_values_render_could_not_express() -> None:
    with pytest.raises(ClaimConfigError, match="cores"):
        GpuLimit(UUID_A, 1, -1, "soft")
    with pytest.raises(ClaimConfigError, match="memory"):
        GpuLimit(UUID_A, 0, 0, "soft")
    with pytest.raises(ClaimConfigError, match="appears twice"):
        ClaimConfig("x", (GpuLimit(UUID_A, 1, 0, "soft"), GpuLimit(UUID_A, 2, 0, "soft")))

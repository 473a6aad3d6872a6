"""Quantities mean exactly what they mean to the Kubernetes API server."""
import pytest

from vgpu_dra.api.quantity import QuantityError, format_bytes, humanize_bytes, parse_bytes


@pytest.mark.parametrize(
    ("text", "exact"),
    [("2Gi", 2147483648), ("2G", 2000000000), ("1536Mi", 1610612736), ("1.5Gi", 1610612736),
     ("2147483648", 2147483648), ("64Mi", 67108864), ("1Ki", 1024), ("1k", 1000), ("0", 0),
     (" 2Gi ", 2147483648), (4096, 4096)],
)
def test_parse_bytes_exact(text, exact):
    assert parse_bytes(text) == exact


@pytest.mark.parametrize("bad", ["2GB", "two", "", "1.5", "100m", "-1", -5, 1.5, None, True])
def test_parse_bytes_rejects_with_the_input_in_the_message(bad):
    with pytest.raises(QuantityError) as info:
        parse_bytes(bad)
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)


@pytest.mark.parametrize(("value", "text"), [(2 << 30, "2Gi"), (1536 << 20, "1536Mi"), (1000, "1000"), (0, "0")])
def test_format_bytes_is_exact_and_parses_back(value, text):
    assert format_bytes(value) == text
    assert parse_bytes(format_bytes(value)) == value


def test_humanize_bytes():
    assert humanize_bytes(int(4.5 * (1 << 30))) == "4.5 GiB"
    assert humanize_bytes(512 << 20) == "512 MiB"
    assert humanize_bytes(12) == "12 B"

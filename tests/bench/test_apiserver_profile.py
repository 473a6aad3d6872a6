"""Reading kube-apiserver's CPU profiles without Go: a real profile, recorded from the v1.36.2
kube-apiserver of the real-cluster tier while it answered LISTs (tests/data/pprof)."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from bench.apiserver_profile import AREAS, areas_line, main, parse

PROFILE = Path(__file__).resolve().parents[1] / "data" / "pprof" / "kube-apiserver-cpu.pb.gz"


def test_a_real_profile_reads_as_cpu_seconds_per_function():
    profile = parse(PROFILE.read_bytes())
    # Two seconds of a server answering LISTs on a 2-core machine: some CPU, at most both cores.
    assert 0.05 < profile.total_s < 4.0
    # A function counts once per sample, so none exceeds the total.
    assert max(profile.cumulative_s.values()) <= profile.total_s + 1e-9
    # The LISTs it served hold a good part of it, and the frames nest as the handler chain does:
    # whatever runs inside a frame cannot take longer than the frame.
    chain = ["net/http.HandlerFunc.ServeHTTP", "k8s.io/apiserver/pkg/endpoints/filters.withAuthentication.func1",
             "k8s.io/apiserver/pkg/endpoints/handlers.ListResource.func1"]
    seconds = [profile.seconds(name) for name in chain]
    assert seconds[2] > 0.2 * profile.total_s
    assert seconds == sorted(seconds, reverse=True), dict(zip(chain, seconds))

def test_plain_and_gzipped_profiles_read_alike():
    raw = PROFILE.read_bytes()
    assert parse(gzip.decompress(raw)) == parse(raw)


def test_the_areas_line_names_every_area():
    line = areas_line(parse(PROFILE.read_bytes()))
    assert line.startswith("total ")
    for area in AREAS:
        assert f"{area} " in line


@pytest.mark.parametrize("junk", [b"", b"\x1f\x8bnot gzip", b"<html>error</html>", gzip.compress(b"\x0fxyz")])
def test_what_is_not_a_profile_is_one_clear_error(junk):
    with pytest.raises(ValueError, match="not a pprof"):
        parse(junk)


def test_the_command_reads_a_profile_and_refuses_junk(tmp_path, capsys):
    assert main([str(PROFILE), str(PROFILE)]) == 0
    out = capsys.readouterr().out
    assert "ListResource" in out
    junk = tmp_path / "error.html"
    junk.write_text("Unauthorized")
    assert main([str(junk)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a pprof" in err[0]
    assert main([]) == 2

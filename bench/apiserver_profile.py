"""Where kube-apiserver's CPU goes during a bench round: its own pprof CPU profile, read here.

kube-apiserver serves a Go CPU profile at /debug/pprof/profile (gzipped `profile.proto`). No Go
toolchain is needed to read one: the wire format is plain protobuf, and this module decodes just
the parts a CPU profile needs (samples, locations, functions, strings) and sums each function's
cumulative CPU. `bench/real_cluster.py --profile DIR` records one per round; this file also runs as

    .venv/bin/python bench/apiserver_profile.py A.pb.gz [B.pb.gz]   # top functions, or A against B

`AREAS` names the parts of the API server that tell the two allocator modes apart.
"""
from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# A part of the API server's work → the Go function whose cumulative time stands for it.
AREAS: dict[str, str] = {
    # Writes run in a goroutine of their own (finisher), outside the handler chain's stack.
    "writes": "k8s.io/apiserver/pkg/endpoints/handlers/finisher.finishRequest.func1",
    "handler chain (reads, watches, the rest of writes)": "k8s.io/apiserver/pkg/endpoints/filters.withAuthentication.func1",
    "admission policies (mutating)": "k8s.io/apiserver/pkg/admission/plugin/policy/mutating.(*Plugin).Admit",
    "admission policies (validating)": "k8s.io/apiserver/pkg/admission/plugin/policy/validating.(*Plugin).Validate",
    "managed fields": "k8s.io/apimachinery/pkg/util/managedfields/internal.(*FieldManager).Update",
    "etcd writes": "k8s.io/apiserver/pkg/storage/etcd3.(*store).updateState",
    "watch encoding": "k8s.io/apiserver/pkg/endpoints/handlers.(*watchEncoder).Encode",
    "garbage collector": "runtime.gcBgMarkWorker",
}


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of one protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        wire = key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"not a pprof profile: protobuf wire type {wire}")
        yield key >> 3, value


def _ints(value: int | bytes) -> list[int]:
    """A repeated integer field, packed (bytes) or not (one int)."""
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        number, i = _varint(value, i)
        out.append(number)
    return out


@dataclass(frozen=True)
class Profile:
    """A CPU profile reduced to what it says per function: cumulative seconds (a function counts
    once per sample however often it is on the stack) and the total."""

    total_s: float
    cumulative_s: dict[str, float]

    def seconds(self, function: str) -> float:
        return self.cumulative_s.get(function, 0.0)


def parse(raw: bytes) -> Profile:
    """A Profile from pprof's gzipped (or plain) profile.proto bytes; ValueError when it is not one."""
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as exc:
        raise ValueError(f"not a pprof profile: {exc}") from None
    strings: list[str] = []
    samples: list[tuple[list[int], list[int]]] = []
    lines_of: dict[int, list[int]] = {}   # location id → function ids (inlined frames too)
    name_of: dict[int, int] = {}          # function id → string index
    for number, value in _fields(data):
        if number == 6 and isinstance(value, bytes):
            strings.append(value.decode(errors="replace"))
        elif number == 2 and isinstance(value, bytes):
            locations: list[int] = []
            values: list[int] = []
            for field, item in _fields(value):
                if field == 1:
                    locations += _ints(item)
                elif field == 2:
                    values += _ints(item)
            samples.append((locations, values))
        elif number == 4 and isinstance(value, bytes):
            location, functions = 0, []
            for field, item in _fields(value):
                if field == 1 and isinstance(item, int):
                    location = item
                elif field == 4 and isinstance(item, bytes):
                    functions += [f for g, f in _fields(item) if g == 1 and isinstance(f, int)]
            lines_of[location] = functions
        elif number == 5 and isinstance(value, bytes):
            ident = dict((g, f) for g, f in _fields(value) if isinstance(f, int))
            name_of[ident.get(1, 0)] = ident.get(2, 0)
    if not strings or not samples:
        raise ValueError("not a pprof CPU profile: no samples or no string table")
    cumulative: dict[str, float] = {}
    total = 0.0
    for locations, values in samples:
        seconds = values[-1] / 1e9   # the last sample type of a Go CPU profile: cpu nanoseconds
        total += seconds
        on_stack = {strings[name_of[f]] for loc in locations for f in lines_of.get(loc, []) if f in name_of}
        for function in on_stack:
            cumulative[function] = cumulative.get(function, 0.0) + seconds
    return Profile(total, cumulative)


def start_recording(kubectl: Path, kubeconfig: Path, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """Ask kube-apiserver for a CPU profile of the next `seconds`, written to `out` once it ends
    (the caller waits on the returned process)."""
    with out.open("wb") as sink:
        return subprocess.Popen([str(kubectl), "--kubeconfig", str(kubeconfig), "get", "--raw",
                                 f"/debug/pprof/profile?seconds={seconds}"], stdout=sink, stderr=subprocess.PIPE)


def areas_line(profile: Profile) -> str:
    """One line: the profile's total and each of AREAS, in CPU seconds."""
    return f"total {profile.total_s:.2f}; " + ", ".join(
        f"{area} {profile.seconds(function):.2f}" for area, function in AREAS.items())


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: apiserver_profile.py PROFILE.pb.gz [BASELINE.pb.gz]", file=sys.stderr)
        return 2
    try:
        profiles = [parse(Path(name).read_bytes()) for name in argv]
    except (OSError, ValueError) as exc:
        print(f"apiserver_profile: {exc}", file=sys.stderr)
        return 1
    for name, profile in zip(argv, profiles):
        print(f"{name}: {areas_line(profile)}")
    first = profiles[0]
    other = profiles[1] if len(profiles) == 2 else None
    print(f"{'s':>7} {'baseline':>9}  function (cumulative CPU)")
    for function, seconds in sorted(first.cumulative_s.items(), key=lambda kv: -kv[1])[:40]:
        baseline = f"{other.seconds(function):9.2f}" if other else ""
        print(f"{seconds:7.2f} {baseline:>9}  {function}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

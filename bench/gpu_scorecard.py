"""The scorecard: one command that measures what matters on the GPU it finds and prints a table.

    make scorecard                     # on a machine with an NVIDIA GPU and PyTorch (<= 8 min on an H100)
    make scorecard ARGS=--fake         # every non-PyTorch row on the project's fake driver and NVML
    .venv/bin/python bench/gpu_scorecard.py [--fake] [--dry-run] [--only PREFIX] [--deadline S]
                                            [--json PATH] [--markdown PATH] [--torch-python PATH]

Builds the shim (and the fake driver and test programs the driver rows run) with make, then runs
each measurement in a child process with its own timeout, under one global deadline: a hung
measurement costs its own rows ("timeout"), the deadline costs the rows not reached, the card is
printed either way. Rows: the user's two workers side by side; the memory wall of a 2 GiB claim;
costs (context creation, alloc/free, launch, enforcement latency); the SM cap (alone, beside a
noisy neighbour, CUDA graphs, cap 100, no cap). Output: a markdown table (stdout and --markdown)
and a JSON file with every figure, the machine's GPU, driver and CUDA versions, and the published
figures ours stand beside. Exit status 0 when no row that ran failed, 1 otherwise, 2 on bad
input or a failed build.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scorecard.core import Measurement, Mode  # noqa: E402  (stdlib only: safe before the bootstrap)


def _bootstrap_imports() -> str:
    """Make ``vgpu_dra`` importable from the checkout when it is not installed (a GPU machine
    with PyTorch but no venv): its sub-packages are the repository's top-level folders. Returns
    the problem, if a dependency is missing, as one line saying what to do."""
    if importlib.util.find_spec("vgpu_dra") is None:
        package = types.ModuleType("vgpu_dra")
        package.__path__ = [str(REPO)]  # vgpu_dra.driver -> driver/, vgpu_dra.api -> api/, ...
        sys.modules["vgpu_dra"] = package
    # cffi reads claim regions, pynvml asks NVML; nothing else is needed (the workers' claims are
    # sized by the plugin's code where pydantic and kubernetes are there, by the same rule if not).
    missing = [name for name in ("cffi", "pynvml") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"missing Python packages {', '.join(missing)}: run `make venv` (or `pip install cffi "
                "nvidia-ml-py`), then `make scorecard`")
    return ""


def measurements() -> list[Measurement]:
    """Every measurement of the card, in the order they run (most telling first)."""
    from bench.scorecard import costs, facts, memory, smcap, workers

    return [*facts.measurements(), *workers.measurements(), *memory.measurements(), *costs.measurements(),
            *smcap.measurements()]


BUILD_TARGETS = ("shim", "tests/fakes", "tests/shim/progs")


def build(work: Path) -> tuple[str, str]:
    """make the shim, the fakes and the test programs; compile bench/shim_overhead_loop.c.
    Returns (loop path, problem)."""
    for target in BUILD_TARGETS:
        out = subprocess.run(["make", "-s", "-C", str(REPO / target)], capture_output=True, text=True)
        if out.returncode != 0:
            return "", f"`make -C {target}` failed: {out.stderr.strip()[-400:]}"
    loop = work / "shim_overhead_loop"
    out = subprocess.run(["cc", "-O2", "-std=gnu11", f"-I{REPO / 'shim' / 'include'}", "-o", str(loop),
                          str(REPO / "bench" / "shim_overhead_loop.c"), f"-L{REPO / 'tests' / 'fakes' / 'out'}",
                          "-l:libcuda.so.1"], capture_output=True, text=True)
    if out.returncode != 0:
        return "", f"compiling bench/shim_overhead_loop.c failed: {out.stderr.strip()[-400:]}"
    return str(loop), ""


class NoGpu(Exception):
    """A GPU run on a machine whose NVML answers nothing: say so once instead of a card of errors."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake", action="store_true", help="run on the fake driver and NVML (no GPU needed)")
    parser.add_argument("--dry-run", action="store_true", help="list the rows and what each would run; run nothing")
    parser.add_argument("--only", action="append", metavar="PREFIX", help="only measurements whose id starts so")
    parser.add_argument("--deadline", type=float, default=470.0, metavar="S", help="whole-card budget in seconds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the JSON here (default scorecard-<mode>.json)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table here")
    parser.add_argument("--torch-python", metavar="PATH", help="interpreter with PyTorch (default: found)")
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # shorter fake runs, for tests
    # --fake plus the PyTorch rows on tests/fakes/torch: exercises the GPU path's plumbing in tests.
    parser.add_argument("--torch-on-fakes", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", metavar="ID", help=argparse.SUPPRESS)
    parser.add_argument("--context", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.deadline <= 0:
        parser.error(f"--deadline {args.deadline:g} must be more than 0 seconds")
    return args


def child(args: argparse.Namespace) -> int:
    from bench.scorecard.core import child_main
    from bench.scorecard.machine import Context

    by_id = {m.id: m for m in measurements()}
    return child_main(by_id[args.child], Context.load(args.context))


def dry_run(chosen: list[Measurement], mode: Mode, ctx: object) -> int:
    """Print every row and the commands its measurement would run; run nothing."""
    print("build  (before any measurement)")
    for target in BUILD_TARGETS:
        print(f"    $ make -s -C {target}")
    print("    $ cc -O2 -o <work>/shim_overhead_loop bench/shim_overhead_loop.c -L tests/fakes/out -l:libcuda.so.1")
    for m in chosen:
        where = "runs" if m.runs_in(mode) else "needs a GPU"
        print(f"{m.id}  [{m.needs}, timeout {m.timeout_s:.0f} s, {where}]")
        for command in m.commands(ctx):
            print(f"    $ {command}")
        for row in m.rows:
            print(f"    - {row.id}: {row.title} ({row.unit or 'value'}; target {row.target})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    problem = _bootstrap_imports()
    if args.child:
        return child(args)
    if problem:
        print(f"gpu_scorecard: {problem}", file=sys.stderr)
        return 2
    from bench.scorecard import render
    from bench.scorecard.core import Deadline, run_card, run_in_child
    from bench.scorecard.machine import Context, python_with_torch

    mode: Mode = "fake-torch" if args.torch_on_fakes else "fake" if args.fake else "gpu"
    chosen = [m for m in measurements() if not args.only or m.id.startswith("machine.")
              or any(m.id.startswith(p) for p in args.only)]
    deadline = Deadline(args.deadline)
    with tempfile.TemporaryDirectory(prefix="vgpu-scorecard-") as tmp:
        work = Path(tmp)
        ctx = Context(mode=mode, work=str(work), quick=args.quick)
        if args.dry_run:
            return dry_run(chosen, mode, ctx)
        if mode == "gpu":
            ctx.torch_python = args.torch_python or python_with_torch()
        elif mode == "fake-torch":
            ctx.torch_python, ctx.python_path = sys.executable, str(REPO / "tests" / "fakes" / "torch")
        ctx.loop, problem = build(work)
        if problem:
            print(f"gpu_scorecard: {problem}", file=sys.stderr)
            return 2
        context_file = work / "context.json"

        figures: dict[str, dict[str, object]] = {}

        def launch(m: Measurement, timeout: float) -> dict[str, Any]:
            ctx.save(context_file)
            argv = [sys.executable, str(Path(__file__).resolve()), "--child", m.id, "--context", str(context_file)]
            raw = run_in_child(argv, timeout, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            if m.id == "machine.facts" and mode == "gpu" and "nvml" not in raw:
                raise NoGpu(str(raw.get("error") or raw.get("stderr") or "no answer")[-300:])
            if m.id == "machine.facts" and "nvml" in raw:
                nvml = raw["nvml"]  # the rest of the card uses the GPU the facts found
                ctx.gpu_uuid, ctx.gpu_total = nvml["uuid"], nvml["total"]
                ctx.gpu_usable = nvml["total"] - nvml.get("reserved", 0)
            figures[m.id] = raw
            return raw

        started = time.time()
        try:
            results = run_card(chosen, mode, deadline, launch)
        except NoGpu as exc:
            print(f"gpu_scorecard: no NVIDIA GPU answers here (NVML: {exc}); `make scorecard ARGS=--fake` "
                  "runs the card on the fake driver", file=sys.stderr)
            return 2
    facts = figures.get("machine.facts", {})
    nvml: dict[str, Any] = facts.get("nvml") or {}  # type: ignore[assignment]
    torch: dict[str, Any] = facts.get("torch") or {}  # type: ignore[assignment]
    from bench.scorecard.facts import cuda_version

    counts = render.summary(results)
    header = {"mode": mode, "gpu": nvml.get("name", "?"), "gpu_uuid": nvml.get("uuid", ""),
              "gpu_memory_bytes": nvml.get("total"), "driver": nvml.get("driver", "?"),
              "cuda": cuda_version(nvml["cuda_driver"]) if nvml.get("cuda_driver") else "?",
              "torch": torch.get("torch", "—"), "torch_cuda": torch.get("torch_cuda", ""),
              "nvidia_smi": facts.get("nvidia_smi", ""), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                  time.gmtime(started)),
              "duration_s": round(time.time() - started, 1), "deadline_s": args.deadline,
              "summary": ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))}
    table = render.markdown(results, header)
    print(table)
    json_path = args.json or Path(f"scorecard-{mode}.json")
    json_path.write_text(render.document(results, header, figures))
    if args.markdown:
        args.markdown.write_text(table)
    print(f"gpu_scorecard: wrote {json_path}" + (f" and {args.markdown}" if args.markdown else ""), file=sys.stderr)
    bad = [r for r in results if r.status in ("fail", "error", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""bench/gpu_scorecard.py end to end on the fakes (what CI runs on every commit), plus its core:
timeouts, the deadline, a row that breaks.

The end-to-end test runs the card once (module fixture, ``--fake --quick``) and reads what a user
reads: the JSON file and the markdown table. Figures are checked for being there and for what the
fake driver makes exact (the wall, the caps' shares within a wide band); costs are timings and get
no bound here (benchmarks, not tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.scorecard.core import Deadline, Measurement, Row, Verdict, run_card, run_in_child

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_scorecard.py"
# What needs PyTorch on a GPU (or nvidia-smi): "needs a GPU" on the fakes.
GPU_ONLY = ("workers.", "memory.torch_", "costs.launch_torch")


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("card")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--fake", "--quick", "--json", str(out / "card.json"),
                           "--markdown", str(out / "card.md")], capture_output=True, text=True, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    document = json.loads((out / "card.json").read_text())
    return {"proc": proc, "json": document, "rows": {r["id"]: r for r in document["rows"]},
            "markdown": (out / "card.md").read_text()}


def listed_rows() -> list[str]:
    """Every row id --dry-run lists: the card's full set."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--fake", "--dry-run"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [line.split(":")[0].strip()[2:] for line in out.splitlines() if line.startswith("    - ")]


def test_every_row_is_in_the_json_once(card: dict[str, Any]) -> None:
    listed = listed_rows()
    assert len(listed) >= 45 and len(set(listed)) == len(listed)
    assert [r["id"] for r in card["json"]["rows"]] == listed


def test_gpu_rows_say_they_need_a_gpu_and_fake_rows_have_figures(card: dict[str, Any]) -> None:
    for row_id, row in card["rows"].items():
        if row_id.startswith(GPU_ONLY):
            assert row["status"] == "needs-gpu" and row["value"] is None, row
        elif row_id != "machine.torch":
            assert row["status"] in ("pass", "fail", "info"), row
            assert row["value"] is not None, row


def test_the_machine_and_the_published_figures_are_recorded(card: dict[str, Any]) -> None:
    doc = card["json"]
    assert doc["mode"] == "fake" and doc["gpu"] == "NVIDIA Fake H100 80GB HBM3"
    assert doc["driver"] == "550.54.15" and doc["cuda"] == "12.4"
    assert doc["published"]["memory_limit_accuracy"]["HAMi-core"] == "91.46 %"
    assert card["rows"]["memory.driver_accuracy"]["published"].startswith("HAMi-core 91.46 %")
    assert card["rows"]["smcap.noisy_impact"]["published"] == "HAMi-core 14.38 %, best published 4.74 %"
    # The raw figures behind the rows: every run, not only the median a row shows.
    costs = doc["measurements"]["costs.driver"]
    assert len(costs["startup_base_us"]) == len(costs["startup_shim_us"]) >= 5
    assert set(doc["measurements"]["smcap.neighbour"]["rates"]["with25"]) == {"run", "noisy"}


def test_the_wall_rows_hold_on_the_fake_driver(card: dict[str, Any]) -> None:
    rows = card["rows"]
    for row_id in ("memory.driver_refuses", "memory.driver_accuracy", "memory.driver_info", "memory.nvml_inside",
                   "memory.vmm", "memory.two_processes"):
        assert rows[row_id]["status"] == "pass", rows[row_id]
    assert rows["memory.driver_info"]["value"] == 2048
    assert 99.0 <= rows["memory.driver_accuracy"]["value"] <= 100.0
    # The fake context (500 MiB) is charged to the wall: a program gets the rest.
    assert rows["memory.driver_usable"]["value"] == pytest.approx(100 * (2048 - 500) / 2048, abs=0.2)
    assert rows["costs.enforcement"]["detail"].startswith("answer 2 ")


def test_cap_shares_follow_the_caps(card: dict[str, Any]) -> None:
    rows = card["rows"]
    for row_id, cap in (("smcap.cap25", 25), ("smcap.cap50", 50), ("smcap.cap75", 75), ("smcap.neighbour25", 25),
                        ("smcap.pair30", 30), ("smcap.pair70", 70), ("smcap.graph50", 50)):
        assert abs(rows[row_id]["value"] - cap) <= 10, rows[row_id]
    assert rows["smcap.cap100"]["value"] >= 90 and rows["smcap.nocap"]["value"] >= 90


def test_the_markdown_table_has_a_line_per_row(card: dict[str, Any]) -> None:
    table = card["markdown"]
    assert table.startswith("Scorecard (fake): NVIDIA Fake H100 80GB HBM3, driver 550.54.15, CUDA 12.4")
    assert "| row | ours | unit | target | result | published | notes |" in table
    body = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(body) == len(card["rows"])
    assert any("`workers.a.sees`" in line and "needs a GPU" in line for line in body)
    assert card["markdown"] in card["proc"].stdout


def test_dry_run_lists_commands_and_runs_nothing() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert "workers.side_by_side  [torch" in out and "$ python -c HARNESS" in out
    assert "smcap.alone  [driver" in out


def test_bad_deadline_is_one_line() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--deadline", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--deadline 0 must be more than 0 seconds" in out.stderr
    assert "Traceback" not in out.stderr


# ---- the core, without the card ------------------------------------------------------------------

def _measurement(mid: str, compute: Any = lambda raw: Verdict(raw["x"], raw["x"] > 0), timeout: float = 5,
                 needs: Any = "driver") -> Measurement:
    return Measurement(mid, "g", needs, timeout, run=lambda ctx: {}, rows=(Row(f"{mid}.row", "t", "u", "> 0", compute),))


def test_a_row_that_raises_reports_its_error_and_the_others_go_on() -> None:
    ms = [_measurement("a", compute=lambda raw: Verdict(raw["missing"], True)), _measurement("b")]
    results = run_card(ms, "fake", Deadline(60), lambda m, t: {"x": 3}, progress=lambda line: None)
    assert [r.status for r in results] == ["error", "pass"]
    assert "KeyError" in results[0].detail and results[1].value == 3


def test_torch_rows_need_a_gpu_on_the_fakes_and_run_on_a_gpu() -> None:
    ms = [_measurement("t", needs="torch")]
    assert run_card(ms, "fake", Deadline(60), lambda m, t: {"x": 1}, progress=lambda line: None)[0].status == "needs-gpu"
    assert run_card(ms, "gpu", Deadline(60), lambda m, t: {"x": 1}, progress=lambda line: None)[0].status == "pass"


def test_the_deadline_leaves_later_rows_unmeasured_but_printed() -> None:
    def slow(m: Measurement, timeout: float) -> dict[str, Any]:
        deadline.started -= 100  # the first measurement "took" 100 s of a 60 s budget
        return {"x": 1}

    deadline = Deadline(60)
    results = run_card([_measurement("a"), _measurement("b")], "fake", deadline, slow, progress=lambda line: None)
    assert [r.status for r in results] == ["pass", "deadline"]


def test_a_hung_child_is_killed_at_its_timeout_with_its_children() -> None:
    hang = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
            "print(p.pid, file=sys.stderr, flush=True); time.sleep(60)")
    started = time.monotonic()
    raw = run_in_child([sys.executable, "-c", hang], timeout_s=1.5)
    assert raw["timeout"] is True and time.monotonic() - started < 20
    grandchild = int(raw["stderr"].split()[0])
    for _ in range(50):  # killed with its group; init reaps it
        if not Path(f"/proc/{grandchild}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{grandchild}").exists()
    timed_out = run_card([_measurement("h", timeout=1)], "fake", Deadline(60), lambda m, t: {"timeout": True},
                         progress=lambda line: None)
    assert timed_out[0].status == "timeout"


def test_a_gpu_run_without_a_gpu_says_so_in_one_line(tmp_path: Path) -> None:
    # NVML that answers "driver not loaded" (the fake's failure mode), as on a machine without a GPU.
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(REPO / "tests" / "fakes" / "out"),
           "FAKE_NVML_FAIL_INIT": "DRIVER_NOT_LOADED", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, str(SCRIPT), "--json", str(tmp_path / "card.json")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    said = [line for line in out.stderr.splitlines() if line.startswith("gpu_scorecard:")]
    assert len(said) == 1 and "no NVIDIA GPU answers here" in said[0] and "ARGS=--fake" in said[0]
    assert "Traceback" not in out.stderr and not (tmp_path / "card.json").exists()


@pytest.mark.parametrize("usable", [80 * 1024**3 - 512 * 1024**2, 10 * 1024**3, 15_828_058_112, 300 * 1024**2])
@pytest.mark.parametrize("percent", [1, 20, 30, 100])
def test_the_workers_claims_are_sized_the_plugins_way_with_or_without_its_module(
        monkeypatch: pytest.MonkeyPatch, usable: int, percent: int) -> None:
    from bench.scorecard.workers import share_of
    from vgpu_dra.driver.limits import ShareRequest

    plugin = ShareRequest(memory_percent=percent, cores=25, cores_requested=True).resolve(usable)
    assert share_of(usable, percent, 25) == (plugin.memory_bytes, 25, plugin.core_policy)
    monkeypatch.setitem(sys.modules, "vgpu_dra.driver.limits", None)  # a GPU machine without pydantic
    assert share_of(usable, percent, 25) == (plugin.memory_bytes, 25, plugin.core_policy)

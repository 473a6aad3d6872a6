"""The card as a markdown table and as a JSON document (pure: results in, text out)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bench.scorecard.core import Result, Value

STATUS_TEXT = {"pass": "ok", "fail": "**FAIL**", "info": "", "needs-gpu": "needs a GPU", "error": "**error**",
               "timeout": "**timeout**", "deadline": "not run (deadline)"}

# Every published figure the card sets ours beside, with where it comes from.
PUBLISHED = {
    "memory_limit_accuracy": {"HAMi-core": "91.46 %", "best published": "99.89 %",
                              "source": "GPU-Virt-Bench, memory-limit accuracy"},
    "context_creation_overhead": {"HAMi-core": "84 ms", "source": "GPU-Virt-Bench"},
    "noisy_neighbour_impact": {"HAMi-core": "14.38 %", "best published": "4.74 %", "source": "GPU-Virt-Bench"},
    "sm_caps_30_70": {"HAMi-core": "21.4 / 25.2 it/s at caps 30 / 70 against 23.1 it/s uncapped (188-SM GPU)"},
    "seed_workers_on_hami": {"worker-a": "held ~1.5 GB, host nvidia-smi 1828 MiB, limit 2 GiB (RTX 3080)",
                             "worker-b": "held ~2 GB, host nvidia-smi 2860 MiB, limit 3 GiB (RTX 3080)"},
}


def format_value(value: Value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: Sequence[Result], header: dict[str, Any]) -> str:
    """The table, one row per result, under a line naming the machine."""
    lines = [f"Scorecard ({header['mode']}): {header.get('gpu', '?')}, driver {header.get('driver', '?')}, "
             f"CUDA {header.get('cuda', '?')}, PyTorch {header.get('torch', '—')}; "
             f"{header.get('duration_s', 0):.0f} s; {header.get('summary', '')}", "",
             "| row | ours | unit | target | result | published | notes |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        note = r.detail if len(r.detail) <= 110 else r.detail[:107] + "..."
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{r.id}` {r.title}", format_value(r.value), r.unit, r.target, STATUS_TEXT[r.status],
            r.published, note)) + " |")
    return "\n".join(lines) + "\n"


def summary(results: Sequence[Result]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def document(results: Sequence[Result], header: dict[str, Any], figures: dict[str, Any] | None = None) -> str:
    """The JSON file: the machine, every row with its figure, the published figures, and every
    measurement's raw figures (each run's timings, each lane's rate) behind the rows."""
    return json.dumps({"card": "vgpu-dra scorecard", "version": 1, **header, "summary": summary(results),
                       "rows": [r.to_json() for r in results], "published": PUBLISHED,
                       "measurements": figures or {}}, indent=2) + "\n"

"""The limit options `vgpu-dra run` and `vgpu-dra cdi create` share: one share's wall, cap and GPUs."""
from __future__ import annotations

import argparse


def add_limit_arguments(parser: argparse.ArgumentParser, gpu_help: str) -> None:
    """Add --memory, --cores, --core-policy and --gpu (``gpu_help`` says what the GPU is for)."""
    parser.add_argument("--memory", required=True, metavar="QUANTITY",
                        help="GPU memory wall per GPU, a Kubernetes quantity (2Gi, 1536Mi, 2G)")
    parser.add_argument("--cores", type=int, default=0, metavar="PERCENT",
                        help="SM-core cap in percent, 0-100 (default 0: no cap)")
    parser.add_argument("--core-policy", choices=("soft", "hard"), default="soft",
                        help="soft: the cap holds only while other work wants the GPU; hard: always")
    parser.add_argument("--gpu", action="append", metavar="INDEX|UUID",
                        help=f"{gpu_help}, by NVML index or UUID (repeatable; default: GPU 0)")

"""The `vgpu-dra` command line: one program, one subcommand per role.

Each subcommand lives in its own module of this package exposing
``register(subparsers) -> None``, which adds its parser and sets ``handler`` (a function taking
the parsed arguments and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMAND_MODULES = ("plan", "run", "cdi", "smi", "status", "doctor", "controller", "kubelet_plugin", "migrate",
                      "webhook")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vgpu-dra",
        description="Fractional NVIDIA GPUs for Kubernetes through Dynamic Resource Allocation.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue  # subcommand not built yet in this tree
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

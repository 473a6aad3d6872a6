"""`vgpu-dra migrate FILE|DIR…`: rewrite HAMi manifests as DRA manifests, offline.

    vgpu-dra migrate deploy/                      # print the DRA form of every manifest under deploy/
    vgpu-dra migrate gpu_worker_a.yaml > gpu_worker_a.dra.yaml
    vgpu-dra migrate deploy/ --allocator scheduler

Each workload asking for nvidia.com/gpu, gpumem, gpumem-percentage or gpucores (and HAMi's
placement annotations) gets a claim per GPU container from a ResourceClaimTemplate of the same
shape; the templates are printed first, then every document (unchanged when it has nothing of
HAMi). The translation is the admission webhook's own code, so both name the same templates.
Exit status: 0 printed, 2 bad input (one line naming the file, the object and the field).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

EXIT_OK, EXIT_BAD_INPUT = 0, 2


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts in `args`) as literal blocks, as people write them."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and all(line == line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def register(subparsers: Any) -> None:
    """Add the ``migrate`` subcommand."""
    parser = subparsers.add_parser(
        "migrate", help="print HAMi manifests rewritten as DRA manifests (ResourceClaimTemplates + workloads)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="YAML files or folders of them")
    parser.add_argument("--allocator", choices=("controller", "scheduler"), default="controller",
                        help="the chart's allocator: how the templates state the share (default: controller)")
    parser.set_defaults(handler=run)


def _documents(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    from vgpu_dra.driver.manifests import ManifestError, manifest_files, read_text

    found: list[tuple[str, dict[str, Any]]] = []
    for path in manifest_files(paths):
        text = read_text(path, "a manifest")
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ManifestError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        if not documents:
            raise ManifestError(f"{path}: no Kubernetes objects in the file (it is empty or only comments)")
        for number, document in enumerate(documents, start=1):
            if not isinstance(document, dict):
                raise ManifestError(f"{path}#{number}: expected a Kubernetes object (a mapping), "
                                    f"got {type(document).__name__}")
            found.append((f"{path}#{number}" if len(documents) > 1 else str(path), document))
    return found


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Translate and print; returns the exit status."""
    from vgpu_dra.driver.hami_manifests import migrate_documents
    from vgpu_dra.driver.hami_translation import HamiTranslationError
    from vgpu_dra.driver.manifests import ManifestError

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        migration = migrate_documents(_documents(list(args.paths)), allocator=args.allocator)
    except (ManifestError, HamiTranslationError) as exc:
        print(f"vgpu-dra migrate: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    out.write(f"# vgpu-dra migrate --allocator {args.allocator}: {len(migration.translated)} workload(s) translated "
              f"from HAMi, {len(migration.templates)} ResourceClaimTemplate(s)\n")
    out.write(yaml.dump_all(migration.output(), Dumper=_Dumper, sort_keys=False, explicit_start=True, width=120))
    if not migration.translated:
        print("vgpu-dra migrate: nothing asks for HAMi resources (nvidia.com/gpu, gpumem, gpumem-percentage, "
              "gpucores); printed unchanged", file=err)
    return EXIT_OK

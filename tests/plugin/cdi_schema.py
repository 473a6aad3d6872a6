"""Validate CDI specs against the CDI project's JSON schema in the shared reference folder."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The shared reference folder: `shared/` in the checkout, or next to the repository."""
    for candidate in (REPO / "shared", REPO.parent / "shared"):
        if (candidate / "cdi-schema" / "schema.json").is_file():
            return candidate
    raise FileNotFoundError("cannot find shared/cdi-schema next to or inside the repository")


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    folder = shared_dir() / "cdi-schema"
    schema = json.loads((folder / "schema.json").read_text())
    defs = json.loads((folder / "defs.json").read_text())
    base = (folder / "schema.json").as_uri()
    schema = {**schema, "$id": base}
    # schema.json refers to defs.json by a relative $ref: register it under the URI it resolves to.
    registry = Registry().with_resource((folder / "defs.json").as_uri(),
                                        Resource.from_contents(defs, default_specification=DRAFT7))
    return jsonschema.Draft7Validator(schema, registry=registry)


def validate_cdi_spec(spec: Any) -> None:
    """Raise jsonschema.ValidationError when `spec` does not follow the CDI schema."""
    _validator().validate(spec)

"""Validate CDI specs against the CDI project's JSON schema (carried in tests/data/cdi-schema)."""
from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.data import CDI_SCHEMA_DIR


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    folder = CDI_SCHEMA_DIR
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

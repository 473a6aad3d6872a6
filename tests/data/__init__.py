"""Data the tests carry, so a fresh clone tests on its own: the API server's OpenAPI documents
(openapi/) and the CDI spec's JSON schema (cdi-schema/). See README.md here."""
from pathlib import Path

from tests.data.refresh_openapi import OPENAPI_DIR

CDI_SCHEMA_DIR = Path(__file__).resolve().parent / "cdi-schema"

__all__ = ["CDI_SCHEMA_DIR", "OPENAPI_DIR"]

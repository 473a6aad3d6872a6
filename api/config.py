"""`VgpuConfig`: the opaque per-claim (or per-class) configuration of driver ``vgpu.dra.dev``.

It travels in a ResourceClaim's or DeviceClass's ``config[].opaque.parameters``:

    apiVersion: vgpu.dra.dev/v1alpha1
    kind: VgpuConfig
    memory: 2Gi          # or memoryPercent: 20 (of the chosen GPU's usable memory), never both
    cores: 25            # soft cap on the share of SMs, percent; 0 = no cap
    corePolicy: soft     # soft: cap only while other claims want the GPU; hard: always cap

Validation is strict (no type coercion, unknown fields rejected) and every error names the field
and the accepted form, because the message ends up verbatim in a Kubernetes Event.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from .names import CONFIG_API_VERSION, CONFIG_KIND, CORES_MAX
from .quantity import QuantityError, parse_bytes

CorePolicy = Literal["soft", "hard"]

ACCEPTED_FORMS: dict[str, str] = {
    "apiVersion": f"the string {CONFIG_API_VERSION!r}",
    "kind": f"the string {CONFIG_KIND!r}",
    "memory": "a Kubernetes quantity such as '2Gi', '1536Mi', '2G' or an integer number of bytes",
    "memoryPercent": "an integer from 1 to 100 (percent of the GPU's usable memory)",
    "cores": f"an integer from 0 to {CORES_MAX} (percent of the GPU's SMs; 0 = no cap)",
    "corePolicy": "'soft' or 'hard'",
}


class InvalidConfigError(ValueError):
    """A VgpuConfig that cannot be accepted; ``str()`` is a complete, user-facing sentence."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid VgpuConfig: " + "; ".join(problems))


_MemoryBytes = Annotated[
    int | None,
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^[0-9.]+([KMGTPE]i?|[eE][0-9]+)?$"},
                              {"type": "integer", "minimum": 1}],
                    "description": ACCEPTED_FORMS["memory"]}),
]


class VgpuConfig(BaseModel):
    """A claim's size. Unset fields mean "not said here" so configs can be layered."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True,
                              title="VgpuConfig")

    api_version: Literal["vgpu.dra.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["VgpuConfig"]
    memory: _MemoryBytes = Field(default=None, description=ACCEPTED_FORMS["memory"])
    memory_percent: int | None = Field(default=None, alias="memoryPercent", ge=1, le=100,
                                       description=ACCEPTED_FORMS["memoryPercent"])
    cores: int | None = Field(default=None, ge=0, le=CORES_MAX, description=ACCEPTED_FORMS["cores"])
    core_policy: CorePolicy | None = Field(default=None, alias="corePolicy",
                                           description=ACCEPTED_FORMS["corePolicy"])

    @field_validator("memory", mode="before")
    @classmethod
    def _parse_memory(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            parsed = parse_bytes(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
        if parsed == 0:
            raise ValueError("must be more than 0 bytes")
        return parsed

    @model_validator(mode="after")
    def _one_memory_form(self) -> VgpuConfig:
        if self.memory is not None and self.memory_percent is not None:
            raise ValueError("fields 'memory' and 'memoryPercent' are both set: give the size one way only")
        return self

    def to_parameters(self) -> dict[str, Any]:
        """The wire form (camelCase, unset fields omitted, memory in bytes)."""
        return self.model_dump(by_alias=True, exclude_none=True)


def parse_config(parameters: Mapping[str, Any] | str | bytes) -> VgpuConfig:
    """Validate opaque parameters (a mapping, or its JSON text) into a VgpuConfig."""
    if isinstance(parameters, (str, bytes)):
        try:
            parameters = json.loads(parameters)
        except json.JSONDecodeError as exc:
            raise InvalidConfigError([f"parameters are not valid JSON: {exc}"]) from None
    if not isinstance(parameters, Mapping):
        raise InvalidConfigError([f"parameters must be an object, got {type(parameters).__name__}"])
    try:
        return VgpuConfig.model_validate(dict(parameters))
    except ValidationError as exc:
        raise InvalidConfigError(_describe(exc, parameters)) from None


def _describe(exc: ValidationError, parameters: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(ACCEPTED_FORMS)
            problems.append(f"unknown field {field!r} (allowed fields: {allowed})")
        elif error["type"] == "missing":
            problems.append(f"field {field!r} is required: {ACCEPTED_FORMS.get(field, '')}".rstrip(": "))
        elif not field:
            problems.append(str(error["msg"]).removeprefix("Value error, "))
        else:
            got = parameters.get(field, error.get("input"))
            form = ACCEPTED_FORMS.get(field)
            detail = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"field {field!r} = {got!r}: {detail}" + (f"; expected {form}" if form else ""))
    return problems


def merge_configs(configs: Iterable[VgpuConfig]) -> VgpuConfig | None:
    """Layer configs, later entries winning field by field (class < claim < resolved).

    ``memory`` and ``memoryPercent`` are one setting: a later config naming either replaces both.
    Returns None when there is nothing to merge.
    """
    merged: dict[str, Any] | None = None
    for config in configs:
        if merged is None:
            merged = config.to_parameters()
            continue
        update = config.to_parameters()
        if "memory" in update or "memoryPercent" in update:
            merged.pop("memory", None)
            merged.pop("memoryPercent", None)
        merged.update(update)
    return None if merged is None else VgpuConfig.model_validate(merged)


def json_schema() -> dict[str, Any]:
    """The JSON schema of VgpuConfig's wire form (docs/api.md shows it)."""
    return VgpuConfig.model_json_schema(by_alias=True)

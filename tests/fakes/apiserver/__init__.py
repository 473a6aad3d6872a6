"""In-process fake Kubernetes API server for tests (real HTTP, real `kubernetes` client)."""

from .errors import ApiError
from .hooks import AuditRecord, Fault, FaultInjector
from .resources import RESOURCE_TYPES, ResourceType, resource_named
from .server import USER_HEADER, FakeApiServer, RecordedEvent
from .store import WriteRecord

__all__ = [
    "ApiError", "AuditRecord", "FakeApiServer", "Fault", "FaultInjector", "RESOURCE_TYPES", "RecordedEvent",
    "ResourceType", "USER_HEADER", "WriteRecord", "resource_named",
]

"""In-process fake Kubernetes API server for tests: real HTTP, the real `kubernetes` client.

    from tests.fakes.apiserver import FakeApiServer
    from tests.fakes.kubeconfig import api_client_for

    with FakeApiServer() as server:                      # 127.0.0.1, ephemeral port, own thread
        api = api_client_for(server, user="controller")  # identity shows in server.audit()
        ...                                              # typed calls, raw JSON, watch.Watch().stream

pytest fixtures (`fake_apiserver`, `kube_client`, `kubeconfig_path`) live in `.fixtures`.

Served: core/v1 pods (+status, +binding), nodes (+status), namespaces, events, configmaps;
events.k8s.io/v1 events (a view of core events); coordination.k8s.io/v1 leases; resource.k8s.io/v1
resourceclaims (+status), resourceclaimtemplates, resourceslices, deviceclasses. Every stored
object is validated strictly against tests/data/openapi (unknown fields are 422) plus the
semantic rules in `semantics.py` and `dra_validation.py`; quantities are stored canonical.

Test hooks on FakeApiServer: `objects(kind)`, `get(kind, name, ns)`, `create(obj)`,
`update_status(obj)`, `delete(kind, name, ns)`; `add_observer(fn)` (every committed write, in
order, under the store lock); `faults.add(code, resource=, verbs=, subresource=, count=, delay_s=, before=)`
(`before`: another client's write run just ahead of the request, a race);
`latency_s`; `end_watches()`; `wait_until(check)`; `audit()` / `writes_by(user)`; `events()`; `compact()` (older RVs → 410);
`disable_feature("DRAConsumableCapacity")`; `internal_errors`, `observer_errors`.
`claim_controller.ResourceClaimControllerEmulator` adds kube-controller-manager's claim handling.

Not imitated: authentication/RBAC, server-side apply, dryRun, protobuf, graceful pod deletion
(pods without finalizers go at once), namespace lifecycle, admission beyond defaults listed in
`semantics.apply_defaults`, CEL compilation of selectors.
"""

from .errors import ApiError
from .hooks import DROP_CONNECTION, AuditRecord, Fault, FaultInjector
from .resources import RESOURCE_TYPES, ResourceType, resource_named
from .server import USER_HEADER, FakeApiServer, RecordedEvent
from .store import WriteRecord

__all__ = [
    "DROP_CONNECTION", "ApiError", "AuditRecord", "FakeApiServer", "Fault", "FaultInjector", "RESOURCE_TYPES", "RecordedEvent",
    "ResourceType", "USER_HEADER", "WriteRecord", "resource_named",
]

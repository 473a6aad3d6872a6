"""The fake Kubernetes API server: real HTTP on 127.0.0.1, served from a background thread.

It speaks enough of the API for the real `kubernetes` Python client (typed calls, raw JSON with
`_preload_content=False`, `watch.Watch().stream`) and for code that talks HTTP directly:
discovery, CRUD, status and binding subresources, the three patch forms, list selectors and
pagination, and watch with resourceVersions, bookmarks and 410 Gone.
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qs, urlsplit

from . import events_view
from .discovery import discovery_response
from .errors import ApiError, bad_request, invalid
from .hooks import DROP_CONNECTION, SLOW, WRITE_VERBS, AuditLog, AuditRecord, FaultInjector
from .patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .resources import RESOURCE_TYPES, ResourceType, resource_for_path, resource_named
from .schema_validation import SchemaRegistry, default_openapi_dir
from .selectors import Predicate, SelectorError, parse_field_selector, parse_label_selector
from .store import Observer, Store
from .watch_stream import WatchRequest, WatchStream

T = TypeVar("T")
USER_HEADER = "X-Fake-User"

_shared_registries: dict[Path, SchemaRegistry] = {}
_shared_lock = threading.Lock()


def shared_schema_registry(openapi_dir: Path | None = None) -> SchemaRegistry:
    """One registry per directory for the whole process, so compiled validators are reused by
    every server a test session starts."""
    path = (openapi_dir or default_openapi_dir()).resolve()
    with _shared_lock:
        if path not in _shared_registries:
            _shared_registries[path] = SchemaRegistry(path)
        return _shared_registries[path]


@dataclass(frozen=True)
class RecordedEvent:
    """A Kubernetes Event (core/v1 or events.k8s.io/v1), reduced to what tests assert on."""

    type: str
    reason: str
    message: str
    regarding_kind: str
    regarding_name: str
    regarding_namespace: str
    reporter: str
    count: int


@dataclass
class _Route:
    rt: ResourceType
    namespace: str | None
    name: str
    subresource: str
    legacy_watch: bool


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _bearer_identity(authorization: str | None) -> str:
    """The identity a kubeconfig written by write_kubeconfig(user=...) sends: its bearer token."""
    if authorization and authorization.startswith("Bearer "):
        return authorization[len("Bearer "):].strip()
    return ""


def _delete_options(body: Any, query: dict[str, str]) -> dict[str, Any]:
    """DeleteOptions from the body, with query parameters (the client may send either) filling gaps."""
    options = dict(body) if isinstance(body, dict) else {}
    if "propagationPolicy" in query:
        options.setdefault("propagationPolicy", query["propagationPolicy"])
    if query.get("orphanDependents") in ("true", "false"):
        options.setdefault("orphanDependents", query["orphanDependents"] == "true")
    return options


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # A controller opens dozens of pooled connections at once; the stdlib default backlog of 5
    # would turn that burst into SYN retries (a second each).
    request_queue_size = 256

    def __init__(self, fake: "FakeApiServer") -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the audit log records requests; stderr noise helps nobody

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.fake._dispatch(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.server.fake._dispatch(self, "POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.server.fake._dispatch(self, "PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self.server.fake._dispatch(self, "PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.fake._dispatch(self, "DELETE")

    def send_json(self, code: int, body: Any, extra_headers: dict[str, str] | None = None) -> None:
        self.send_body(code, "application/json", body, extra_headers)

    def send_body(self, code: int, content_type: str, body: Any, extra_headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else _json_bytes(body)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def drain_body(self) -> None:
        """Read the request body off the connection now: a keep-alive connection carries the
        next request right after it, so an error answered early must not leave it unread."""
        length = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(length) if length else b""

    def read_body(self) -> Any:
        raw = self.raw_body
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from None


class FakeApiServer:
    """An in-process Kubernetes API server for tests. Start with `start()` or as a context manager.

    Test hooks: `objects(kind)` reads the store, `add_observer(fn)` sees every committed write,
    `faults.add(...)` fails upcoming requests, `latency_s` delays every non-watch request,
    `audit()` lists who did what (identity from the X-Fake-User header), `events()` lists recorded
    Events, `compact()` makes older resourceVersions expire (410 Gone).
    """

    def __init__(self, openapi_dir: Path | None = None, *, bookmark_interval_s: float = 1.0,
                 history: int = 200_000) -> None:
        self.schemas = shared_schema_registry(openapi_dir)
        self.store = Store(self.schemas, history=history)
        self.faults = FaultInjector()
        self.latency_s = 0.0
        self.bookmark_interval_s = bookmark_interval_s
        self._audit = AuditLog()
        # Tracebacks of requests the fake itself failed on (answered 500); tests may assert it is empty.
        self.internal_errors: list[str] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> "FakeApiServer":
        """Bind an ephemeral port on 127.0.0.1 and serve in a daemon thread."""
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-apiserver:{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The TCP port served."""
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for kubernetes.client.Configuration(host=...)."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop serving: end watches, close every connection, join the serving thread."""
        if self._httpd is None:
            return
        self.store.close()
        self._httpd.shutdown()
        with self._httpd.connections_lock:
            conns = list(self._httpd.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> "FakeApiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- test hooks -----------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion."""
        return self.store.resource_version

    def objects(self, kind: str, namespace: str | None = None, *, copies: bool = True) -> list[dict[str, Any]]:
        """The stored objects of `kind` ("ResourceClaim", "pods", "Event.events.k8s.io"), as deep
        copies. `copies=False` hands out the stored objects themselves, read-only: for observers
        that look at the whole store on every write (copying it each time would be quadratic)."""
        rt = resource_named(kind)
        storage = resource_named(rt.stored_as) if rt.stored_as else rt
        convert = events_view.to_view if rt.stored_as else (lambda o: o)
        found = [convert(o) for o in self.store.snapshot(storage)
                 if namespace is None or o["metadata"].get("namespace") == namespace]
        return [copy.deepcopy(o) for o in found] if copies else found

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """A deep copy of one stored object, or None."""
        rt = resource_named(kind)
        storage = resource_named(rt.stored_as) if rt.stored_as else rt
        try:
            obj = self.store.get(storage, namespace if rt.namespaced else "", name)
        except ApiError:
            return None
        return copy.deepcopy(events_view.to_view(obj) if rt.stored_as else obj)

    def create(self, obj: dict[str, Any], user: str = "test", *, check_cel: bool = True) -> dict[str, Any]:
        """Store an object directly (validated like a POST); kind/apiVersion pick the resource.

        `check_cel=False` stores CEL selectors that do not parse, as if persisted by a server
        whose CEL environment differed (a real one rejects them on create; it never recompiles a
        stored expression on update): only for testing code that must survive such objects."""
        rt = self._resource_of(obj)
        namespace = (obj.get("metadata") or {}).get("namespace") or ("default" if rt.namespaced else "")
        if rt.stored_as:
            stored = self.store.create(resource_named(rt.stored_as), namespace, events_view.to_core(obj), user=user)
            return copy.deepcopy(events_view.to_view(stored))
        return copy.deepcopy(self.store.create(rt, namespace, copy.deepcopy(obj), user=user, check_cel=check_cel))

    def update_status(self, obj: dict[str, Any], user: str = "test") -> dict[str, Any]:
        """PUT .../status directly (obj carries the resourceVersion it is based on)."""
        rt = self._resource_of(obj)
        meta = obj["metadata"]
        namespace = meta.get("namespace") or ("default" if rt.namespaced else "")
        return copy.deepcopy(self.store.update(rt, namespace, meta["name"], copy.deepcopy(obj),
                                               "status" if rt.status_subresource else "", user=user))

    @property
    def observer_errors(self) -> list[tuple[Any, Exception]]:
        """(WriteRecord, exception) for every observer call that raised."""
        return self.store.observer_errors

    def delete(self, kind: str, name: str, namespace: str = "", user: str = "test") -> None:
        """DELETE directly (finalizers honoured)."""
        rt = resource_named(kind)
        storage = resource_named(rt.stored_as) if rt.stored_as else rt
        self.store.delete(storage, namespace, name, user=user)

    def _resource_of(self, obj: dict[str, Any]) -> ResourceType:
        kind, api_version = obj.get("kind"), obj.get("apiVersion", "")
        for rt in RESOURCE_TYPES:
            if rt.kind == kind and rt.api_version == api_version:
                return rt
        raise KeyError(f"the fake API server does not serve {api_version}/{kind}")

    def disable_feature(self, gate: str) -> None:
        """Behave like a server with this feature gate off (e.g. "DRAConsumableCapacity": slices
        lose allowMultipleAllocations and requestPolicy, claims their capacity requests)."""
        self.store.set_feature(gate, enabled=False)

    def enable_feature(self, gate: str) -> None:
        """Undo `disable_feature`."""
        self.store.set_feature(gate, enabled=True)

    def wait_until(self, check: Callable[["FakeApiServer"], T | None], timeout: float = 10.0, what: str = "") -> T:
        """Block until `check(server)` returns something truthy, re-checking after every write
        (no polling interval to tune); returns that value. TimeoutError names `what`."""
        changed = threading.Condition()
        writes = [0]

        # Runs under the store lock: only bump and notify. `check` runs without `changed` held,
        # so a check that reads the store cannot deadlock with a writer.
        def on_write(_: Any) -> None:
            with changed:
                writes[0] += 1
                changed.notify_all()

        self.add_observer(on_write)
        try:
            deadline = time.monotonic() + timeout
            while True:
                with changed:
                    seen = writes[0]
                result = check(self)
                if result:
                    return result
                with changed:
                    while writes[0] == seen:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")
                        changed.wait(remaining)
        finally:
            self.remove_observer(on_write)

    def add_observer(self, observer: Observer) -> None:
        """See `Store.add_observer`: called with a WriteRecord after every committed write."""
        self.store.add_observer(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling an observer."""
        self.store.remove_observer(observer)

    def audit(self) -> list[AuditRecord]:
        """Every resource request so far (user, verb, resource, name, result code)."""
        return self._audit.snapshot()

    def writes_by(self, user: str) -> list[AuditRecord]:
        """Successful writes made by one identity."""
        return [r for r in self._audit.snapshot() if r.user == user and r.verb in WRITE_VERBS and r.code < 300]

    def events(self) -> list[RecordedEvent]:
        """Every Event stored (written through the core or the events.k8s.io API), oldest first."""
        out: list[tuple[int, RecordedEvent]] = []
        for obj in self.store.snapshot(resource_named("Event")):
            ref = obj.get("involvedObject") or {}
            count = obj.get("count") or (obj.get("series") or {}).get("count") or 1
            out.append((int(obj["metadata"]["resourceVersion"]), RecordedEvent(
                obj.get("type", ""), obj.get("reason", ""), obj.get("message", ""), ref.get("kind", ""),
                ref.get("name", ""), ref.get("namespace", ""),
                obj.get("reportingComponent") or (obj.get("source") or {}).get("component", ""), int(count))))
        return [e for _, e in sorted(out, key=lambda p: p[0])]

    def compact(self) -> int:
        """Expire every resourceVersion up to now: a later watch from an older RV gets 410 Gone."""
        return self.store.compact()

    def end_watches(self) -> None:
        """End every open watch stream now (clients re-watch from their last resourceVersion)."""
        self.store.end_watches()

    # --- request handling -----------------------------------------------------------------

    def _dispatch(self, handler: _Handler, method: str) -> None:
        handler.drain_body()
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segs = [s for s in parts.path.split("/") if s]
        user = handler.headers.get(USER_HEADER) or _bearer_identity(handler.headers.get("Authorization")) or "anonymous"
        route: _Route | None = None
        verb = method.lower()
        try:
            if method == "GET":
                # The handler's own server: a request still in flight while stop() ran has no self.port.
                found = discovery_response(segs, f"127.0.0.1:{handler.server.server_address[1]}", self.schemas.directory)
                if found is not None:
                    handler.send_body(200, found[0], found[1])
                    return
            route = self._route(segs)
            if route is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            verb = self._verb(method, route, query)
            if "dryRun" in query:
                raise bad_request("dryRun is not supported by the fake API server")
            fault = self.faults.take(verb, route.rt, route.subresource)
            if fault is not None and fault.before is not None:
                fault.before()
            if self.latency_s > 0 and verb != "watch":
                time.sleep(self.latency_s)
            if fault is not None and fault.code == SLOW:
                time.sleep(fault.delay_s)
                fault = None
            watch_gone = None
            if fault is not None and fault.code == DROP_CONNECTION:
                # Vanish mid-request, like a crashed server or a cut network: no answer at all.
                self._audit.add(AuditRecord(user, verb, route.rt.plural, route.rt.group, route.namespace or "",
                                            route.name, route.subresource, 0))
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None and fault.code == 410 and verb == "watch":
                watch_gone = fault.error(route.rt, route.name)  # a watch is told in-stream, as the watch cache does
            elif fault is not None:
                raise fault.error(route.rt, route.name)
            if verb == "watch":
                self._audit.add(AuditRecord(user, verb, route.rt.plural, route.rt.group, route.namespace or "",
                                            route.name, route.subresource, 410 if watch_gone else 200))
                self._serve_watch(handler, route, query, watch_gone)
                return
            code, body = self._serve_resource(handler, method, verb, route, query, user)
            rv, name = "", route.name
            if isinstance(body, dict) and verb in WRITE_VERBS:
                rv = (body.get("metadata") or {}).get("resourceVersion", "")
                name = name or (body.get("metadata") or {}).get("name", "")
            # Audit before answering, so the log is in order by the time the client sees the result.
            self._audit.add(AuditRecord(user, verb, route.rt.plural, route.rt.group, route.namespace or "",
                                        name, route.subresource, code, rv))
            handler.send_json(code, body)
        except ApiError as exc:
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
            if route is not None:
                self._audit.add(AuditRecord(user, verb, route.rt.plural, route.rt.group, route.namespace or "",
                                            route.name, route.subresource, exc.code))
            try:
                handler.send_json(exc.code, exc.status(), headers)
            except OSError:
                return
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug in the fake must surface as a 500, not a hang
            self.internal_errors.append(f"{method} {handler.path}: {traceback.format_exc()}")
            try:
                handler.send_json(500, ApiError(500, "InternalError", f"fake API server bug: {exc!r}").status())
            except OSError:
                handler.close_connection = True

    def _verb(self, method: str, route: _Route, query: dict[str, str]) -> str:
        if method == "GET":
            if route.legacy_watch or query.get("watch") in ("1", "true", "True"):
                return "watch"
            return "get" if route.name else "list"
        if method == "POST":
            return "create"
        if method == "PUT":
            return "update"
        if method == "PATCH":
            return "patch"
        return "delete" if route.name else "deletecollection"

    def _route(self, segs: list[str]) -> _Route | None:
        if len(segs) >= 3 and segs[0] == "api":
            group, version, rest = "", segs[1], segs[2:]
        elif len(segs) >= 4 and segs[0] == "apis":
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            return None
        legacy_watch = False
        if rest and rest[0] == "watch":
            legacy_watch, rest = True, rest[1:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and resource_for_path(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return None
        rt = resource_for_path(group, version, rest[0])
        if rt is None:
            return None
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3:
            return None
        if namespace is not None and not rt.namespaced:
            return None
        if sub and not ((sub == "status" and rt.status_subresource) or (sub == "binding" and rt.kind == "Pod")):
            return None
        return _Route(rt, namespace, name, sub, legacy_watch)

    def _serve_resource(self, handler: _Handler, method: str, verb: str, route: _Route, query: dict[str, str],
                        user: str) -> tuple[int, Any]:
        rt, ns = route.rt, route.namespace
        if rt.namespaced and ns is None and verb not in ("list", "watch"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns_key = ns or ""
        if rt.stored_as:
            return self._serve_view(handler, verb, route, query, user)
        if verb == "get":
            return 200, self.store.get(rt, ns_key, route.name)
        if verb == "list":
            return 200, self._list(rt, ns, query)
        body = handler.read_body()
        if verb == "create":
            if route.subresource == "binding":
                return 201, self.store.bind_pod(rt, ns_key, route.name, body, user=user)
            if route.name:
                raise ApiError(405, "MethodNotAllowed", "POST is not allowed on a named resource")
            return 201, self.store.create(rt, ns_key, body, user=user)
        if verb == "update":
            if route.subresource == "binding":
                raise ApiError(405, "MethodNotAllowed", "binding only supports create")
            return 200, self.store.update(rt, ns_key, route.name, body, route.subresource, user=user)
        if verb == "patch":
            ctype = (handler.headers.get("Content-Type") or "").split(";")[0].strip()
            return 200, self.store.patch(rt, ns_key, route.name, ctype, body, route.subresource, user=user)
        if verb == "delete":
            if route.subresource:
                raise ApiError(405, "MethodNotAllowed", "DELETE is not allowed on a subresource")
            return 200, self.store.delete(rt, ns_key, route.name, _delete_options(body, query), user=user)
        if verb == "deletecollection":
            items, _ = self.store.list(rt, ns, self._predicate(rt, query))
            for obj in items:
                try:
                    self.store.delete(rt, obj["metadata"].get("namespace", ""), obj["metadata"]["name"],
                                      _delete_options(body, query), user=user)
                except ApiError as exc:
                    if exc.code != 404:
                        raise
            return 200, {"kind": rt.list_kind, "apiVersion": rt.api_version,
                         "metadata": {"resourceVersion": str(self.store.resource_version)}, "items": []}
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed")

    def _serve_view(self, handler: _Handler, verb: str, route: _Route, query: dict[str, str],
                    user: str) -> tuple[int, Any]:
        """events.k8s.io Events: validated in their own shape, stored as core Events."""
        rt, ns = route.rt, route.namespace or ""
        storage = resource_named(rt.stored_as or "")
        to_view, to_core = events_view.to_view, events_view.to_core
        if verb == "get":
            return 200, to_view(self.store.get(storage, ns, route.name))
        if verb == "list":
            return 200, self._list(rt, route.namespace, query, storage=storage, convert=to_view)
        if verb in ("delete", "deletecollection"):
            body = handler.read_body()
            if verb == "delete":
                return 200, to_view(self.store.delete(storage, ns, route.name, body if isinstance(body, dict) else None,
                                                      user=user))
            items, _ = self.store.list(storage, route.namespace, self._predicate(rt, query))
            for obj in items:
                self.store.delete(storage, obj["metadata"]["namespace"], obj["metadata"]["name"], user=user)
            return 200, {"kind": rt.list_kind, "apiVersion": rt.api_version,
                         "metadata": {"resourceVersion": str(self.store.resource_version)}, "items": []}
        body = handler.read_body()
        with self.store.lock:  # a patch reads, converts and writes back without a window for others
            if verb == "patch":
                old = to_view(self.store.get(storage, ns, route.name))
                ctype = (handler.headers.get("Content-Type") or "").split(";")[0].strip()
                try:
                    if ctype == "application/merge-patch+json" and isinstance(body, dict):
                        body = merge_patch(old, body)
                    elif ctype == "application/strategic-merge-patch+json" and isinstance(body, dict):
                        body = strategic_merge_patch(old, body, self.schemas.document(rt.group_version), rt.schema_key)
                    elif ctype == "application/json-patch+json":
                        body = json_patch(old, body)
                    else:
                        raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
                except PatchError as exc:
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our "
                                   f"request: {exc}") from None
            if not isinstance(body, dict):
                raise bad_request("the request body must be a JSON object describing an Event")
            body = {**body, "apiVersion": body.get("apiVersion") or rt.api_version, "kind": body.get("kind") or rt.kind}
            if body["apiVersion"] != rt.api_version or body["kind"] != rt.kind:
                raise bad_request(f"the body is a {body['apiVersion']}/{body['kind']}, but the request is for "
                                  f"{rt.api_version}/{rt.kind}")
            name = (body.get("metadata") or {}).get("name", route.name)
            errors = self.schemas.validate(body, rt.group_version, rt.schema_key) or events_view.view_errors(body)
            if errors:
                raise invalid(rt.kind, rt.group, name, errors)
            if verb == "create":
                return 201, to_view(self.store.create(storage, ns, to_core(body), user=user))
            return 200, to_view(self.store.update(storage, ns, route.name, to_core(body), user=user))

    def _predicate(self, rt: ResourceType, query: dict[str, str]) -> Predicate | None:
        try:
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), rt.field_selectors, rt.kind)
        except SelectorError as exc:
            raise bad_request(str(exc)) from None
        if labels and fields:
            return lambda o: labels(o) and fields(o)
        return labels or fields

    def _list(self, rt: ResourceType, namespace: str | None, query: dict[str, str],
              storage: ResourceType | None = None, convert: Any = None) -> bytes:
        items, rv = self.store.list(storage or rt, namespace, self._predicate(rt, query))
        if convert is not None:
            items = [convert(o) for o in items]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        token = query.get("continue")
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))
                start_key = (start["ns"], start["name"])
            except (ValueError, KeyError, TypeError):
                raise bad_request("invalid continue token") from None
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start_key]
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(
                _json_bytes({"ns": last.get("namespace", ""), "name": last["name"]})).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        # Items of a list carry no kind/apiVersion on the real server either.
        head = _json_bytes({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta})
        encoded = b",".join(_json_bytes({k: v for k, v in o.items() if k not in ("kind", "apiVersion")})
                            for o in items)
        return head[:-1] + b',"items":[' + encoded + b"]}"

    # --- watch ----------------------------------------------------------------------------

    def _serve_watch(self, handler: _Handler, route: _Route, query: dict[str, str],
                     fault_410: ApiError | None = None) -> None:
        rt = route.rt
        storage = resource_named(rt.stored_as) if rt.stored_as else rt
        request = WatchRequest.from_query(rt, storage, route.namespace, route.name, self._predicate(rt, query), query,
                                          events_view.to_view if rt.stored_as else None)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.close_connection = True
        stream = WatchStream(self.store, request, handler.wfile, handler.connection, self.bookmark_interval_s)
        if fault_410 is not None:
            stream.error(fault_410)  # the watch cache tells a watcher in-stream
        else:
            stream.run()

"""Object storage, resourceVersions and watch event logs of the fake API server.

One lock guards everything, as etcd's single revision counter does: every write takes the next
global resourceVersion, so RVs order all writes across kinds. Stored objects are never mutated
after they are stored (writes build new dicts), which lets readers share them without copies.

Each resource type has an append-only event log that watchers read from their own position; the
log's oldest events are dropped beyond `history` entries (or by `compact()`), after which a watch
from an older resourceVersion gets 410 Gone, like an etcd compaction.
"""

from __future__ import annotations

import bisect
import json
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from . import dra_validation, semantics
from .errors import ApiError, already_exists, bad_request, conflict, gone, invalid, not_found
from .feature_gates import KNOWN_GATES, drop_disabled_fields
from .patch import PatchConflict, PatchError, json_patch, merge_patch, strategic_merge_patch
from .resources import RESOURCE_TYPES, ResourceType
from .schema_validation import FieldError, SchemaRegistry
from .selectors import Predicate

Key = tuple[str, str]  # (namespace or "", name)

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    """The current time the way metav1.Time serialises it (second precision, UTC)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_nulls(value: Any) -> Any:
    # Go's decoder treats null as "unset"; the stored object then omits the field.
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


@dataclass
class WatchEvent:
    """One change of one object, as a watcher sees it."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None = None
    _line: bytes | None = None

    def line(self, event_type: str | None = None) -> bytes:
        """The JSON line for the watch stream (serialised once, shared by all watchers)."""
        if event_type is not None and event_type != self.type:
            return json.dumps({"type": event_type, "object": self.obj}, separators=(",", ":")).encode() + b"\n"
        if self._line is None:
            self._line = json.dumps({"type": self.type, "object": self.obj}, separators=(",", ":")).encode() + b"\n"
        return self._line


@dataclass(frozen=True)
class WriteRecord:
    """What an observer sees after every committed write."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: ResourceType
    obj: dict[str, Any]
    old: dict[str, Any] | None
    user: str


Observer = Callable[[WriteRecord], None]


@dataclass
class _EventLog:
    events: list[WatchEvent] = field(default_factory=list)
    rvs: list[int] = field(default_factory=list)
    base: int = 0  # absolute position of events[0]
    compacted_rv: int = 0  # every event with rv <= this is gone


class Store:
    """All objects of all served kinds, with watch logs and the write pipeline."""

    def __init__(self, schemas: SchemaRegistry, history: int = 200_000) -> None:
        self._lock = threading.RLock()
        self._schemas = schemas
        self._history = history
        self._rv = 1
        self._objects: dict[ResourceType, dict[Key, dict[str, Any]]] = {rt: {} for rt in RESOURCE_TYPES}
        self._logs: dict[ResourceType, _EventLog] = {rt: _EventLog() for rt in RESOURCE_TYPES}
        self._changed: dict[ResourceType, threading.Condition] = {
            rt: threading.Condition(self._lock) for rt in RESOURCE_TYPES}
        self._observers: list[Observer] = []
        # uid of an owner → keys of the objects naming it in ownerReferences (for garbage collection).
        self._dependents: dict[str, set[tuple[ResourceType, Key]]] = {}
        self._uids: set[str] = set()
        self.closed = False
        # Bumped by end_watches(): every open watch stream ends, as on an API server restart.
        self.watch_epoch = 0
        self.observer_errors: list[tuple[WriteRecord, Exception]] = []
        self.disabled_features: frozenset[str] = frozenset()

    # --- reads ------------------------------------------------------------------------------

    @property
    def lock(self) -> threading.RLock:
        """The store lock, for callers composing a read and a write into one atomic step."""
        return self._lock

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion handed out."""
        return self._rv

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        """The stored object (shared, read-only) or 404."""
        obj = self._objects[rt].get((namespace, name))
        if obj is None:
            raise not_found(rt.plural, rt.group, name)
        return obj

    def list(self, rt: ResourceType, namespace: str | None, predicate: Predicate | None = None,
             ) -> tuple[list[dict[str, Any]], int]:
        """Matching objects sorted by (namespace, name), and the RV the list is consistent at."""
        with self._lock:
            items = self._objects[rt]
            keys = sorted(items)
            out = []
            for key in keys:
                if namespace is not None and key[0] != namespace:
                    continue
                obj = items[key]
                if predicate is None or predicate(obj):
                    out.append(obj)
            return out, self._rv

    def snapshot(self, rt: ResourceType) -> list[dict[str, Any]]:
        """Every stored object of a kind (shared, read-only)."""
        with self._lock:
            return list(self._objects[rt].values())

    def add_observer(self, observer: Observer) -> None:
        """Call `observer` after every committed write, under the store lock: it sees every state in
        order, must be quick, and must not call the server over HTTP (it may read the store)."""
        with self._lock:
            self._observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling `observer`."""
        with self._lock:
            self._observers.remove(observer)

    # --- the commit path --------------------------------------------------------------------

    def _validate(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None = None,
                  check_cel: bool = True) -> dict[str, Any]:
        """`obj` as it will be stored (stored_form.py), or 422 naming every bad field."""
        errors = semantics.metadata_errors(rt, obj)
        errors.extend(self._schemas.validate(obj, rt.group_version, rt.schema_key))
        if not errors:
            # Semantic rules assume the shape is right (they index into typed fields).
            errors.extend(dra_validation.object_errors(rt.kind, obj, old, check_cel))
        if errors:
            raise invalid(rt.kind, rt.group, (obj.get("metadata") or {}).get("name", ""), errors)
        return self._schemas.stored_form(obj, rt.group_version, rt.schema_key)

    def _commit(self, rt: ResourceType, key: Key, event_type: str, obj: dict[str, Any],
                old: dict[str, Any] | None, user: str) -> None:
        rv = self._rv
        table = self._objects[rt]
        if event_type == "DELETED":
            table.pop(key, None)
            self._uids.discard(obj["metadata"]["uid"])
        else:
            table[key] = obj
            self._uids.add(obj["metadata"]["uid"])
        self._index_owners(rt, key, old, obj if event_type != "DELETED" else None)
        log = self._logs[rt]
        log.events.append(WatchEvent(rv, event_type, obj, old))
        log.rvs.append(rv)
        # Trim in batches so a full log does not memmove itself on every write.
        if len(log.events) > self._history + max(1, self._history // 8):
            drop = len(log.events) - self._history
            log.compacted_rv = log.rvs[drop - 1]
            del log.events[:drop]
            del log.rvs[:drop]
            log.base += drop
        self._changed[rt].notify_all()
        record = WriteRecord(rv, event_type, rt, obj, old, user)
        for observer in list(self._observers):
            try:
                observer(record)
            except Exception as exc:  # noqa: BLE001 - a test's observer must not break the write
                # Kept for the test to assert on; the write itself has been committed.
                self.observer_errors.append((record, exc))

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _index_owners(self, rt: ResourceType, key: Key, old: dict[str, Any] | None,
                      new: dict[str, Any] | None) -> None:
        def owners(obj: dict[str, Any] | None) -> set[str]:
            refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
            return {r.get("uid") for r in refs if r.get("uid")}

        before, after = owners(old), owners(new)
        for uid in before - after:
            deps = self._dependents.get(uid)
            if deps:
                deps.discard((rt, key))
                if not deps:
                    del self._dependents[uid]
        for uid in after - before:
            self._dependents.setdefault(uid, set()).add((rt, key))

    # --- writes -----------------------------------------------------------------------------

    def _check_body(self, rt: ResourceType, namespace: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(f"the request body must be a JSON object describing a {rt.kind}")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind not in (None, "", rt.kind) or api_version not in (None, "", rt.api_version):
            raise bad_request(f"the body is a {api_version}/{kind}, but the request is for {rt.api_version}/{rt.kind}")
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        body_ns = (meta or {}).get("namespace")
        if rt.namespaced and body_ns and body_ns != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        obj = _strip_nulls(body)
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        return obj

    def create(self, rt: ResourceType, namespace: str, body: Any, user: str = "",
               check_cel: bool = True) -> dict[str, Any]:
        """POST: assign name (generateName), uid, timestamps, RV; validate; store."""
        obj = self._check_body(rt, namespace, body)
        meta = dict(obj.get("metadata") or {})
        for server_owned in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                             "deletionGracePeriodSeconds", "generation", "selfLink", "managedFields"):
            meta.pop(server_owned, None)
        if rt.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        obj["metadata"] = meta
        obj = semantics.prepare_for_create(rt, semantics.apply_defaults(rt, obj))
        obj = drop_disabled_fields(rt.kind, obj, None, self.disabled_features)
        with self._lock:
            if not meta.get("name") and meta.get("generateName"):
                for _ in range(100):
                    candidate = meta["generateName"] + "".join(random.choices(_GENERATE_ALPHABET, k=5))
                    if (namespace if rt.namespaced else "", candidate) not in self._objects[rt]:
                        meta["name"] = candidate
                        break
            key = (namespace if rt.namespaced else "", meta.get("name") or "")
            obj = self._validate(rt, obj, check_cel=check_cel)
            meta = obj["metadata"]
            errors = semantics.create_errors(rt, obj)
            if errors:
                raise invalid(rt.kind, rt.group, key[1], errors)
            if key in self._objects[rt]:
                raise already_exists(rt.plural, rt.group, key[1])
            meta["uid"] = semantics.new_uid()
            meta["creationTimestamp"] = now_rfc3339()
            if semantics.has_generation(rt):
                meta["generation"] = 1
            meta["resourceVersion"] = self._next_rv()
            self._commit(rt, key, "ADDED", obj, None, user)
            self._collect_if_orphaned(rt, key, obj)
            return obj

    def update(self, rt: ResourceType, namespace: str, name: str, body: Any, subresource: str = "",
               user: str = "") -> dict[str, Any]:
        """PUT (optionally /status): 409 on a stale resourceVersion, 422 on invalid changes."""
        obj = self._check_body(rt, namespace, body)
        meta = obj.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
        with self._lock:
            old = self.get(rt, namespace if rt.namespaced else "", name)
            rv = meta.get("resourceVersion")
            # Without a resourceVersion the update is unconditional (AllowUnconditionalUpdate is
            # true for every kind served here), as on the real server.
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(rt.plural, rt.group, name)
            return self._replace(rt, old, obj, subresource, user)

    def _replace(self, rt: ResourceType, old: dict[str, Any], obj: dict[str, Any], subresource: str,
                 user: str) -> dict[str, Any]:
        """Common tail of PUT and PATCH: carry server-owned metadata, validate, bump, store."""
        old_meta = old["metadata"]
        name = old_meta["name"]
        meta = dict(obj.get("metadata") or {})
        if meta.get("uid") not in (None, "", old_meta["uid"]):
            raise conflict(rt.plural, rt.group, name,
                           f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}")
        for server_owned in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                             "generation", "namespace", "name"):
            if server_owned in old_meta:
                meta[server_owned] = old_meta[server_owned]
            else:
                meta.pop(server_owned, None)
        meta.pop("managedFields", None)
        obj = {**obj, "metadata": meta}
        obj = semantics.prepare_for_update(rt, old, semantics.apply_defaults(rt, obj), subresource)
        obj = drop_disabled_fields(rt.kind, obj, old, self.disabled_features)
        obj = self._validate(rt, obj, old)
        meta = dict(obj["metadata"])
        obj = {**obj, "metadata": meta}
        errors = semantics.update_errors(rt, old, obj, subresource)
        if errors:
            raise invalid(rt.kind, rt.group, name, errors)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if obj == old:
            return old  # a no-op write does not bump the resourceVersion, as on the real server
        if semantics.has_generation(rt) and semantics.spec_part(rt, obj) != semantics.spec_part(rt, old):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        meta["resourceVersion"] = self._next_rv()
        key = (old_meta.get("namespace") or "", name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._commit(rt, key, "DELETED", obj, old, user)
            self._collect_garbage(meta["uid"], user)
        else:
            self._commit(rt, key, "MODIFIED", obj, old, user)
            if meta.get("ownerReferences") != old_meta.get("ownerReferences"):
                self._collect_if_orphaned(rt, key, obj)
        return obj

    def patch(self, rt: ResourceType, namespace: str, name: str, patch_type: str, patch: Any,
              subresource: str = "", user: str = "") -> dict[str, Any]:
        """PATCH with merge, strategic-merge or JSON patch; applied under the lock, so it never
        conflicts unless the patch itself names a stale metadata.resourceVersion."""
        with self._lock:
            old = self.get(rt, namespace if rt.namespaced else "", name)
            try:
                if patch_type == "application/merge-patch+json":
                    if not isinstance(patch, dict):
                        raise PatchError("a merge patch must be a JSON object")
                    new = merge_patch(old, patch)
                elif patch_type == "application/strategic-merge-patch+json":
                    doc = self._schemas.document(rt.group_version)
                    new = strategic_merge_patch(old, patch, doc, rt.schema_key)
                elif patch_type == "application/json-patch+json":
                    new = json_patch(old, patch)
                else:
                    raise ApiError(415, "UnsupportedMediaType",
                                   f"the body of the request was in an unknown format - accepted media types "
                                   f"include: application/json-patch+json, application/merge-patch+json, "
                                   f"application/strategic-merge-patch+json (got {patch_type})")
            except PatchConflict as exc:
                raise invalid(rt.kind, rt.group, name, [FieldError("", str(exc))]) from None
            except PatchError as exc:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}") from None
            if not isinstance(new, dict):
                raise bad_request("the patch did not produce an object")
            new = self._check_body(rt, namespace, {**new, "kind": rt.kind, "apiVersion": rt.api_version})
            new_rv = (new.get("metadata") or {}).get("resourceVersion")
            if new_rv and new_rv != old["metadata"]["resourceVersion"]:
                raise conflict(rt.plural, rt.group, name)
            return self._replace(rt, old, new, subresource, user)

    def delete(self, rt: ResourceType, namespace: str, name: str, options: dict[str, Any] | None = None,
               user: str = "") -> dict[str, Any]:
        """DELETE: with finalizers set deletionTimestamp and keep; otherwise remove."""
        options = options or {}
        with self._lock:
            old = self.get(rt, namespace if rt.namespaced else "", name)
            old_meta = old["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old_meta["uid"]:
                raise conflict(rt.plural, rt.group, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                                          f"UID in object meta: {old_meta['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old_meta["resourceVersion"]:
                raise conflict(rt.plural, rt.group, name, "Precondition failed: ResourceVersion in precondition: "
                                                          f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                                          f"{old_meta['resourceVersion']}")
            key = (old_meta.get("namespace") or "", name)
            if old_meta.get("finalizers"):
                if old_meta.get("deletionTimestamp"):
                    return old
                meta = {**old_meta, "deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 0,
                        "resourceVersion": self._next_rv()}
                obj = {**old, "metadata": meta}
                self._commit(rt, key, "MODIFIED", obj, old, user)
                return obj
            meta = {**old_meta, "resourceVersion": self._next_rv()}
            obj = {**old, "metadata": meta}
            self._commit(rt, key, "DELETED", obj, old, user)
            if options.get("propagationPolicy") != "Orphan" and options.get("orphanDependents") is not True:
                self._collect_garbage(old_meta["uid"], user)
            return obj

    def _collect_garbage(self, owner_uid: str, user: str) -> None:
        """Delete dependents all of whose owners are gone (background propagation, done at once)."""
        for dep_rt, dep_key in sorted(self._dependents.pop(owner_uid, set()), key=lambda d: (d[0].plural, d[1])):
            dep = self._objects[dep_rt].get(dep_key)
            if dep is None:
                continue
            remaining = [r for r in dep["metadata"].get("ownerReferences") or []
                         if r.get("uid") != owner_uid and r.get("uid") in self._uids]
            if not remaining:
                self.delete(dep_rt, dep_key[0], dep_key[1], user="garbage-collector")

    def _collect_if_orphaned(self, rt: ResourceType, key: Key, obj: dict[str, Any]) -> None:
        """The garbage collector deletes an object whose owners are all gone (no object with the
        owner's uid), soon after it is written: a dependent written with a stale owner uid (say,
        of a Node since re-registered) disappears, on a cluster and here. The write itself
        succeeds; the deletion follows as its own event."""
        refs = obj["metadata"].get("ownerReferences") or []
        if refs and not any(r.get("uid") in self._uids for r in refs):
            self.delete(rt, key[0], key[1], user="garbage-collector")

    def bind_pod(self, rt: ResourceType, namespace: str, name: str, body: Any, user: str = "") -> dict[str, Any]:
        """POST pods/<name>/binding: set spec.nodeName once (what kube-scheduler does)."""
        if not isinstance(body, dict) or not isinstance(body.get("target"), dict) or not body["target"].get("name"):
            raise invalid("Binding", "", name, [FieldError("target.name", "Required value", "FieldValueRequired")])
        node = body["target"]["name"]
        with self._lock:
            old = self.get(rt, namespace, name)
            spec = old.get("spec") or {}
            if spec.get("nodeName"):
                raise conflict(rt.plural, rt.group, name, f"pod {name} is already assigned to node "
                                                          f"\"{spec['nodeName']}\"")
            if spec.get("schedulingGates"):
                raise conflict(rt.plural, rt.group, name, f"pod {name} has non-empty .spec.schedulingGates")
            if old["metadata"].get("deletionTimestamp"):
                raise conflict(rt.plural, rt.group, name, f"pod {name} is being deleted, cannot be assigned to a host")
            meta = {**old["metadata"], "resourceVersion": self._next_rv()}
            obj = {**old, "metadata": meta, "spec": {**spec, "nodeName": node}}
            self._commit(rt, (namespace, name), "MODIFIED", obj, old, user)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def set_feature(self, gate: str, enabled: bool) -> None:
        """Turn a feature gate on or off (see feature_gates.py for what each one drops)."""
        if gate not in KNOWN_GATES:
            raise KeyError(f"unknown feature gate {gate!r}; the fake knows {sorted(KNOWN_GATES)}")
        with self._lock:
            self.disabled_features = (self.disabled_features - {gate}) if enabled else (self.disabled_features | {gate})

    # --- watch ------------------------------------------------------------------------------

    def compact(self) -> int:
        """Drop every event so far (like an etcd compaction); a watch from an older RV gets 410."""
        with self._lock:
            for log in self._logs.values():
                log.base += len(log.events)
                log.events.clear()
                log.rvs.clear()
                log.compacted_rv = self._rv
            return self._rv

    def watch_start(self, rt: ResourceType, resource_version: int | None) -> tuple[int, list[dict[str, Any]] | None]:
        """Where a watch from `resource_version` starts in the kind's log: (position, initial
        objects or None). None/0 means "now, with the current objects as ADDED"."""
        with self._lock:
            log = self._logs[rt]
            if resource_version is None:
                return log.base + len(log.events), list(self._objects[rt].values())
            if resource_version < log.compacted_rv:
                raise gone(f"too old resource version: {resource_version} ({log.compacted_rv})")
            idx = bisect.bisect_right(log.rvs, resource_version)
            return log.base + idx, None

    def wait_events(self, rt: ResourceType, position: int, deadline: float,
                    epoch: int | None = None) -> tuple[list[WatchEvent], int]:
        """Events of the kind at or after `position`, waiting until one arrives, `deadline`, the
        store closes or the watch epoch moves past `epoch`. Raises 410 if the watcher fell behind
        the retained history."""
        with self._lock:
            log = self._logs[rt]
            while True:
                if epoch is not None and epoch != self.watch_epoch:
                    return [], position  # ended: what follows goes to the client's next watch
                if position < log.base:
                    raise gone(f"too old resource version: the watch fell behind ({log.compacted_rv})")
                end = log.base + len(log.events)
                if position < end or self.closed:
                    batch = log.events[position - log.base:]
                    return batch, end
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], position
                self._changed[rt].wait(remaining)

    def end_watches(self) -> None:
        """End every open watch stream cleanly (clients reconnect from their last resourceVersion)."""
        with self._lock:
            self.watch_epoch += 1
            for cond in self._changed.values():
                cond.notify_all()

    def close(self) -> None:
        """Wake every watcher so their streams end."""
        with self._lock:
            self.closed = True
            for cond in self._changed.values():
                cond.notify_all()


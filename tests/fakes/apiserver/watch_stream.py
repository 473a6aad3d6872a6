"""One watch request served as a chunked stream of JSON lines, as the real API server does.

Events come from the store's per-kind log; a watch with a selector turns MODIFIED events that
cross the selector into ADDED/DELETED (a kubelet watching `spec.nodeName` sees a pod appear when
it is bound). Errors after the headers (410 Gone) are in-stream ERROR events.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from .errors import ApiError, bad_request
from .resources import ResourceType
from .store import Store, WatchEvent

Predicate = Callable[[dict[str, Any]], bool]


def _json_line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def peer_closed(sock: socket.socket) -> bool:
    """Whether the client closed its end (readable with nothing to read). A watch client sends
    nothing after its request, so readability means EOF or a reset."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


@dataclass
class WatchRequest:
    """What one watch asks for."""

    rt: ResourceType  # as requested (shape of the objects sent)
    storage: ResourceType  # where the objects live (differs for events.k8s.io Events)
    namespace: str | None
    predicate: Predicate | None  # selectors (and the name of a single-object watch)
    resource_version: str
    send_initial_events: bool
    bookmarks: bool
    timeout_s: float | None
    convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    @classmethod
    def from_query(cls, rt: ResourceType, storage: ResourceType, namespace: str | None, name: str,
                   predicate: Predicate | None, query: dict[str, str],
                   convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> "WatchRequest":
        """Parse the watch query parameters."""
        if name:
            selected = predicate
            predicate = lambda o: o["metadata"]["name"] == name and (selected is None or selected(o))  # noqa: E731
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        return cls(rt, storage, namespace, predicate, query.get("resourceVersion") or "",
                   query.get("sendInitialEvents") == "true", query.get("allowWatchBookmarks") in ("1", "true"),
                   timeout, convert)

    def matches(self, obj: dict[str, Any] | None) -> bool:
        """Whether an object is visible to this watch."""
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.predicate is None or self.predicate(obj)

    @property
    def filtered(self) -> bool:
        """Whether some objects are hidden from this watch."""
        return self.namespace is not None or self.predicate is not None


class WatchStream:
    """Writes one watch's events to a client connection until timeout, client close, server stop
    or `Store.end_watches()`."""

    def __init__(self, store: Store, request: WatchRequest, wfile: BinaryIO, connection: socket.socket,
                 bookmark_interval_s: float) -> None:
        self._store = store
        self._req = request
        self._wfile = wfile
        self._connection = connection
        self._bookmark_interval_s = bookmark_interval_s

    def _write(self, data: bytes) -> None:
        self._wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end(self) -> None:
        self._wfile.write(b"0\r\n\r\n")

    def _line(self, ev: WatchEvent, event_type: str | None = None) -> bytes:
        if self._req.convert is None:
            return ev.line(event_type)
        return _json_line({"type": event_type or ev.type, "object": self._req.convert(ev.obj)})

    def _bookmark(self, annotations: dict[str, str] | None = None) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(self._store.resource_version)}
        if annotations:
            meta["annotations"] = annotations
        rt = self._req.rt
        return _json_line({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version,
                                                          "metadata": meta}})

    def _visible(self, batch: list[WatchEvent]) -> list[bytes]:
        if not self._req.filtered:
            return [self._line(ev) for ev in batch]
        lines = []
        for ev in batch:
            new_ok = self._req.matches(ev.obj)
            if ev.type == "MODIFIED":
                old_ok = self._req.matches(ev.old)
                if new_ok:
                    lines.append(self._line(ev) if old_ok else self._line(ev, "ADDED"))
                elif old_ok:
                    lines.append(self._line(ev, "DELETED"))
            elif new_ok:
                lines.append(self._line(ev))
        return lines

    def error(self, exc: ApiError) -> None:
        """Send only an in-stream ERROR event (the headers must be out already)."""
        self._write(_json_line({"type": "ERROR", "object": exc.status()}))
        self._end()

    def run(self) -> None:
        """Stream until done; returns quietly when the client goes away."""
        req = self._req
        end_time = time.monotonic() + req.timeout_s if req.timeout_s else float("inf")
        epoch = self._store.watch_epoch
        try:
            try:
                text = req.resource_version
                if text and not text.isdigit():
                    raise bad_request(f"invalid resourceVersion {text!r}")
                rv = int(text) if text else None
                start_rv = None if (rv in (None, 0) or req.send_initial_events) else rv
                position, initial = self._store.watch_start(req.storage, start_rv)
            except ApiError as exc:
                self.error(exc)
                return
            if initial is not None:
                ordered = sorted(initial, key=lambda o: int(o["metadata"]["resourceVersion"]))
                chunk = [self._line(WatchEvent(int(o["metadata"]["resourceVersion"]), "ADDED", o))
                         for o in ordered if req.matches(o)]
                if chunk:
                    self._write(b"".join(chunk))
                if req.send_initial_events and req.bookmarks:
                    self._write(self._bookmark({"k8s.io/initial-events-end": "true"}))
            next_bookmark = time.monotonic() + self._bookmark_interval_s
            while not self._store.closed and self._store.watch_epoch == epoch:
                now = time.monotonic()
                if now >= end_time:
                    break
                if peer_closed(self._connection):
                    return
                deadline = min(end_time, next_bookmark) if req.bookmarks else end_time
                try:
                    # Wake at least every second to notice a client that went away while idle.
                    batch, position = self._store.wait_events(req.storage, position, min(deadline, now + 1.0), epoch)
                except ApiError as exc:
                    self.error(exc)
                    return
                lines = self._visible(batch)
                if lines:
                    self._write(b"".join(lines))
                if req.bookmarks and time.monotonic() >= next_bookmark:
                    self._write(self._bookmark())
                    next_bookmark = time.monotonic() + self._bookmark_interval_s
            self._end()
        except OSError:  # the client went away mid-write
            return

"""The allocator's vocabulary: what one pod asks for, and what it gets (a placement or a refusal).

Pure data. A pod's claims (`ClaimRequest`) hold requests that are either one concrete
`DeviceRequest` (``exactly``) or a `FirstAvailable` list of them (``firstAvailable``: the first
alternative that can be placed wins, results are named ``request/subrequest``), plus the claim's
constraints (`MatchAttribute`, `DistinctAttribute`). A `Placement` says, per claim, which GPUs each
request got and what share of each; a `Refusal` says why nothing fits.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from vgpu_dra.api.names import DRIVER_NAME
from vgpu_dra.driver.device_taints import Toleration
from vgpu_dra.driver.ledger import Consumption, GpuCandidate, GpuDevice
from vgpu_dra.driver.limits import ResolvedShare, ShareRequest

GpuPredicate = Callable[[GpuCandidate], bool]
"""A request's device filter (compiled CEL selectors); must not depend on what is used."""

MAX_ALLOCATION_RESULTS = 32
"""`status.allocation.devices.results` holds at most this many entries (AllocationResultsMaxSize)."""


class AllocationInputError(ValueError):
    """A request that is malformed in itself (not merely unsatisfiable)."""


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One request (or one alternative of a `FirstAvailable`) that can be placed as it is.

    ``count`` distinct GPUs each give ``share``; with ``all_devices`` (``allocationMode: All``)
    every GPU of the node that passes the selector and has room for the share now is taken
    instead. ``admin_access`` shares are placed like any other but book nothing (upstream's
    rule: admin access does not count as use). ``tolerations`` let the request onto GPUs with
    matching taints. ``name`` is what results carry: ``req`` or ``req/subrequest``.
    """

    name: str
    share: ShareRequest
    count: int = 1
    selector: GpuPredicate | None = None
    all_devices: bool = False
    admin_access: bool = False
    tolerations: tuple[Toleration, ...] = ()

    def __post_init__(self) -> None:
        if self.count < 1:
            raise AllocationInputError(f"request {self.name!r}: count must be at least 1, got {self.count}")

    @property
    def parent(self) -> str:
        """The claim-level request name (``req`` of ``req/subrequest``)."""
        return self.name.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class FirstAvailable:
    """``firstAvailable``: alternatives in order of preference; exactly one of them is placed."""

    name: str
    alternatives: tuple[DeviceRequest, ...]

    def __post_init__(self) -> None:
        if not self.alternatives:
            raise AllocationInputError(f"request {self.name!r}: firstAvailable lists no subrequests")
        names = [alternative.name for alternative in self.alternatives]
        if len(set(names)) != len(names):
            raise AllocationInputError(f"request {self.name!r}: subrequest names are not unique: {names}")


ClaimEntry = DeviceRequest | FirstAvailable


def _key_of(attribute: str) -> str:
    domain, slash, name = attribute.rpartition("/")
    return name if slash and domain == DRIVER_NAME else attribute


def _covers(requests: tuple[str, ...], request: DeviceRequest) -> bool:
    return not requests or request.name in requests or request.parent in requests


@dataclass(frozen=True, slots=True)
class _AttributeConstraint:
    """A constraint on one attribute of the GPUs of ``requests`` (empty = all requests)."""

    attribute: str
    requests: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The key in `GpuDevice.attributes`: bare for our domain, qualified for any other."""
        return _key_of(self.attribute)

    def covers(self, request: DeviceRequest) -> bool:
        """Whether the constraint applies to this (concrete) request."""
        return _covers(self.requests, request)


@dataclass(frozen=True, slots=True)
class MatchAttribute(_AttributeConstraint):
    """``constraints[].matchAttribute``: every GPU of ``requests`` (empty = all) has the same value.

    ``attribute`` is fully qualified (``vgpu.dra.dev/numaNode``) or, for our own domain, bare;
    a GPU without the attribute never satisfies it. ``requests`` may name ``req`` or ``req/sub``.
    """


@dataclass(frozen=True, slots=True)
class DistinctAttribute(_AttributeConstraint):
    """``constraints[].distinctAttribute``: the GPUs of ``requests`` (empty = all) have pairwise
    different values (e.g. ``uuid``: no two shares of one GPU within the claim)."""


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A claim to place: its ledger ``key``, its requests, and its constraints."""

    key: str
    requests: tuple[ClaimEntry, ...]
    match_attributes: tuple[MatchAttribute, ...] = ()
    label: str = ""
    """How messages name the claim (``namespace/name``); defaults to the key."""
    distinct_attributes: tuple[DistinctAttribute, ...] = ()

    def __post_init__(self) -> None:
        if not self.requests:
            raise AllocationInputError(f"claim {self.display}: has no requests")
        names = [request.name for request in self.requests]
        if len(set(names)) != len(names):
            raise AllocationInputError(f"claim {self.display}: request names are not unique: {names}")
        known = set(names) | {request.name for request in self.device_requests()}
        for constraint in (*self.match_attributes, *self.distinct_attributes):
            unknown = [name for name in constraint.requests if name not in known]
            if unknown:
                kind = "matchAttribute" if isinstance(constraint, MatchAttribute) else "distinctAttribute"
                raise AllocationInputError(
                    f"claim {self.display}: {kind} {constraint.attribute} names unknown "
                    f"request(s) {unknown} (requests: {names})")

    @property
    def display(self) -> str:
        return self.label or self.key

    def device_requests(self) -> Iterator[DeviceRequest]:
        """Every concrete request, the alternatives of `FirstAvailable` entries included."""
        for request in self.requests:
            if isinstance(request, FirstAvailable):
                yield from request.alternatives
            else:
                yield request


@dataclass(frozen=True, slots=True)
class PodRequest:
    """All claims one pod still needs allocated, and where the pod may run."""

    claims: tuple[ClaimRequest, ...]
    allowed_nodes: frozenset[str] | None = None
    node_filter: Callable[[str], bool] | None = None
    avoid_nodes: frozenset[str] = frozenset()
    label: str = ""

    def __post_init__(self) -> None:
        if not self.claims:
            raise AllocationInputError(f"pod {self.label}: has no claims to allocate")
        keys = [claim.key for claim in self.claims]
        if len(set(keys)) != len(keys):
            raise AllocationInputError(f"pod {self.label}: claim keys are not unique: {keys}")

    @property
    def restricted(self) -> bool:
        """Whether any node restriction is set."""
        return self.allowed_nodes is not None or self.node_filter is not None or bool(self.avoid_nodes)

    def allows(self, node: str) -> bool:
        """Whether the pod may be placed on ``node``."""
        if self.allowed_nodes is not None and node not in self.allowed_nodes:
            return False
        if node in self.avoid_nodes:
            return False
        return self.node_filter is None or self.node_filter(node)


@dataclass(frozen=True, slots=True)
class GpuShare:
    """One GPU of a placement and the share it gives (``admin_access``: books nothing)."""

    device: GpuDevice
    share: ResolvedShare
    admin_access: bool = False


@dataclass(frozen=True, slots=True)
class ClaimPlacement:
    """Where one claim landed: result request name (``req`` or ``req/sub``) → its GPUs, in the
    claim's request order."""

    key: str
    requests: tuple[tuple[str, tuple[GpuShare, ...]], ...]

    def shares(self, request: str) -> tuple[GpuShare, ...]:
        """The GPUs (and shares) of one request: by its result name, or by the claim-level name of
        a firstAvailable request (whichever alternative was placed)."""
        for name, shares in self.requests:
            if name == request or name.split("/", 1)[0] == request:
                return shares
        raise KeyError(request)

    def chosen(self, request: str) -> str:
        """The result name placed for a claim-level request (``req`` or ``req/sub``)."""
        for name, _ in self.requests:
            if name == request or name.split("/", 1)[0] == request:
                return name
        raise KeyError(request)

    def consumptions(self, node: str) -> tuple[Consumption, ...]:
        """What the claim books: every share but admin-access ones."""
        return tuple(Consumption(node, item.device.name, item.share.memory_bytes, item.share.cores)
                     for _, shares in self.requests for item in shares if not item.admin_access)


@dataclass(frozen=True, slots=True)
class Placement:
    """A pod's claims placed on one node."""

    node: str
    claims: tuple[ClaimPlacement, ...]

    def claim(self, key: str) -> ClaimPlacement:
        for claim in self.claims:
            if claim.key == key:
                return claim
        raise KeyError(key)

    def claim_consumptions(self) -> Iterator[tuple[str, tuple[Consumption, ...]]]:
        """(claim key, what it consumes) pairs, the form `Ledger.apply` books."""
        for claim in self.claims:
            yield claim.key, claim.consumptions(self.node)


class RefusalKind(StrEnum):
    """Why a pod's claims could not be placed; stable values for metric labels."""

    NO_NODE = "no-node"                  # no node publishes GPUs, or the pod may use none of them
    NO_MATCHING_GPU = "no-matching-gpu"  # no GPU passes the request's selectors
    TAINTED = "tainted"                  # the GPUs that could take it have taints it does not tolerate
    TOO_LARGE = "too-large"              # more than any (matching) GPU can give even when idle
    TOO_FEW_GPUS = "too-few-gpus"        # no node has that many suitable GPUs
    NO_CAPACITY = "no-capacity"          # would fit idle GPUs, but not what is free now
    CONSTRAINT = "constraint"            # matchAttribute / distinctAttribute cannot be met
    SELECTOR_ERROR = "selector-error"    # a selector failed to evaluate
    SEARCH_BUDGET = "search-budget"      # the search stopped before it could rule every placement out


@dataclass(frozen=True, slots=True)
class Refusal:
    """No placement, and a reason a user can act on."""

    reason: str
    kind: RefusalKind
    claim_key: str | None = None
    request: str | None = None

    def __str__(self) -> str:
        return self.reason


def selector_errors(claims: Iterable[ClaimRequest], limit: int = 3) -> list[str]:
    """Distinct CEL evaluation errors the claims' selectors met (a GPU a selector failed on did not
    match; a refusal should say why), at most ``limit`` of them."""
    errors: list[str] = []
    for claim in claims:
        for request in claim.device_requests():
            for error in getattr(request.selector, "errors", ()):
                if error not in errors:
                    errors.append(error)
    return errors[:limit]

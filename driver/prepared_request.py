"""One concrete request prepared for one decision: what it takes of each GPU, cached.

Internal to the allocator (`allocator`, `node_search`, `allocation_refusals`). A `Need` knows, for
any GPU, the memory and cores the request would consume there (the GPU's requestPolicy applied,
percent shares resolved against that GPU), whether the request's selector and tolerations let it
onto the GPU, and the thresholds a node's summary must reach before its GPUs are looked at.
"""
from __future__ import annotations

from vgpu_dra.api.names import CORES_MAX, MEMORY_MIN_BYTES
from vgpu_dra.api.quantity import humanize_bytes
from vgpu_dra.driver.allocation_request import ClaimRequest, DeviceRequest, Refusal, RefusalKind
from vgpu_dra.driver.device_taints import DeviceTaint, blocking_taint
from vgpu_dra.driver.ledger import GpuDevice, NodeState
from vgpu_dra.driver.limits import ResolvedShare


class SelectorFailed(Exception):
    """A selector raised: the decision ends with its refusal, as a CEL runtime error does upstream."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.reason)
        self.refusal = refusal


_UNRESOLVED = object()


class Need:
    """A `DeviceRequest` of a claim, ready to be matched against GPUs many times."""

    __slots__ = ("claim", "request", "order", "prefix", "cores", "count", "selector", "all_devices",
                 "admin_access", "tolerations", "min_free_memory", "min_free_fraction", "prune_memory",
                 "prune_fraction", "_memory", "_cores", "_selected")

    def __init__(self, claim: ClaimRequest, request: DeviceRequest, order: int, *, loose: bool = False):
        self.claim = claim
        self.request = request
        self.order = order
        self.prefix = ""
        self.cores = request.share.cores
        self.count = request.count
        self.selector = request.selector
        self.all_devices = request.all_devices
        self.admin_access = request.admin_access
        self.tolerations = request.tolerations
        self._memory: dict[object, int | None] = {}
        self._cores: dict[object, int | None] = {}
        self._selected: dict[tuple[str, int], bool] = {}
        share = request.share
        # What a node's best GPU must have free (necessary conditions), under the driver's policy.
        if share.memory_percent is not None:
            # Percent shares round down to the 1 MiB step; 1/64 covers that on any GPU ≥ 64 MiB.
            self.min_free_memory = MEMORY_MIN_BYTES
            self.min_free_fraction = share.memory_percent / 100 - 1 / 64
        elif share.memory_bytes is not None:
            self.min_free_memory = share.consumed_memory(1 << 62) or share.memory_bytes
            self.min_free_fraction = 0.0
        else:
            self.min_free_memory = MEMORY_MIN_BYTES
            self.min_free_fraction = 1.0
        if loose:
            # Some GPU publishes a policy of its own, which may round below the driver's grid.
            self.prune_memory = share.memory_bytes if share.memory_bytes is not None else 0
            self.prune_fraction = 0.0
        else:
            self.prune_memory = self.min_free_memory
            self.prune_fraction = self.min_free_fraction

    # --- what it takes of one GPU -----------------------------------------------------------

    def memory_on(self, gpu: GpuDevice) -> int | None:
        """Bytes this request takes on ``gpu``, None if that GPU can never give it."""
        key: object = gpu.memory_bytes if gpu.memory_policy is None else (gpu.memory_bytes, gpu.memory_policy)
        memory = self._memory.get(key, _UNRESOLVED)
        if memory is _UNRESOLVED:
            memory = self.request.share.consumed_memory(gpu.memory_bytes, gpu.memory_policy)
            self._memory[key] = memory
        return memory  # type: ignore[return-value]

    def memory_for_size(self, usable: int) -> int | None:
        """Bytes on a GPU of ``usable`` bytes publishing the driver's own policy."""
        memory = self._memory.get(usable, _UNRESOLVED)
        if memory is _UNRESOLVED:
            memory = self.request.share.consumed_memory(usable)
            self._memory[usable] = memory
        return memory  # type: ignore[return-value]

    def cores_on(self, gpu: GpuDevice) -> int | None:
        """Cores this request takes on ``gpu``, None if that GPU's cores policy refuses it."""
        if gpu.cores_policy is None and gpu.cores == CORES_MAX:
            return self.cores  # the driver's policy: 0..100 in steps of 1, taken as asked
        key = (gpu.cores, gpu.cores_policy)
        cores = self._cores.get(key, _UNRESOLVED)
        if cores is _UNRESOLVED:
            cores = self.request.share.consumed_cores(gpu.cores, gpu.cores_policy)
            self._cores[key] = cores
        return cores  # type: ignore[return-value]

    def resolve(self, gpu: GpuDevice) -> ResolvedShare:
        """The share this request gets on ``gpu`` (which must be able to give it)."""
        memory, cores = self.memory_on(gpu), self.cores_on(gpu)
        assert memory is not None and cores is not None
        return ResolvedShare(memory_bytes=memory, cores=cores, core_policy=self.request.share.core_policy)

    def selects(self, state: NodeState, i: int) -> bool:
        """Whether the request's selector accepts GPU ``i`` of ``state`` (cached per decision)."""
        if self.selector is None:
            return True
        key = (state.name, i)
        chosen = self._selected.get(key)
        if chosen is None:
            try:
                # Compiled CEL reads the published device only: no usage view needs building.
                chosen = bool(self.selector(state.gpus[i] if getattr(self.selector, "device_only", False)  # type: ignore[arg-type]
                                            else state.candidate(i)))
            except Exception as exc:  # a CEL runtime error aborts the decision, as in Kubernetes
                raise SelectorFailed(Refusal(
                    f"{self.where()}selector failed on {state.name} {state.gpus[i].name}: {exc}",
                    RefusalKind.SELECTOR_ERROR, self.claim.key, self.request.name)) from None
            self._selected[key] = chosen
        return chosen

    def blocking_taint(self, gpu: GpuDevice) -> DeviceTaint | None:
        """The taint of ``gpu`` this request does not tolerate, if any."""
        return blocking_taint(gpu.taints, self.tolerations) if gpu.taints else None

    def may_use(self, state: NodeState, i: int) -> bool:
        """Selector and taints: whether GPU ``i`` is for this request at all (capacity aside)."""
        gpu = state.gpus[i]
        if gpu.taints and blocking_taint(gpu.taints, self.tolerations) is not None:
            return False
        return self.selector is None or self.selects(state, i)

    def all_set(self, state: NodeState) -> list[int]:
        """``allocationMode: All`` on this node: every GPU it may use that has room for it now
        (upstream counts the devices against what is allocated before the decision)."""
        found = []
        for i, gpu in enumerate(state.gpus):
            if not self.selects(state, i):
                continue
            memory, cores = self.memory_on(gpu), self.cores_on(gpu)
            if memory is None or cores is None or memory > state.free_memory(i) or cores > state.free_cores(i):
                continue
            found.append(i)
        return found

    # --- node summaries and messages ---------------------------------------------------------

    def summary_allows(self, state: NodeState) -> bool:
        """Necessary conditions on the node's best GPU (no GPU is looked at)."""
        return (state.max_free_memory >= self.prune_memory
                and state.max_free_fraction >= self.prune_fraction
                and state.max_free_cores >= self.cores
                and len(state.gpus) >= (1 if self.all_devices else self.count))

    @property
    def least_count(self) -> int:
        """GPUs it needs at least (1 for allocationMode All)."""
        return 1 if self.all_devices else self.count

    def size_key(self) -> tuple[int, int, float, int, int]:
        """Placement order within a claim: All-mode requests first (forced), then largest first."""
        return (0 if self.all_devices else 1, -self.count, -self.min_free_fraction, -self.min_free_memory,
                -self.cores)

    def describe(self) -> str:
        """``6 GiB`` / ``20 % of GPU memory`` / ``a whole GPU``, plus cores when capped."""
        share = self.request.share
        if share.memory_percent is not None:
            memory = f"{share.memory_percent} % of GPU memory"
        elif share.memory_bytes is not None:
            memory = humanize_bytes(self.min_free_memory)
        else:
            memory = "a whole GPU's memory"
        return f"{memory} and {self.cores} % cores" if self.cores else memory

    def where(self) -> str:
        """Message prefix naming the request when the pod has more than one."""
        return self.prefix

"""The consumption book: which GPUs exist on which node, and how much of each is taken.

Pure and in-memory. The allocation controller keeps one `Ledger` for the whole cluster (GPUs from
ResourceSlices, consumption from every claim's ``status.allocation``, its own and anybody else's)
and `vgpu-dra plan` keeps one for the inventories it plans on. The allocator reads it; callers
change it only through:

- `Ledger.set_node` / `Ledger.remove_node` — the GPUs a node publishes (idempotent, replaces);
- `Ledger.record` / `Ledger.release` — what one claim consumes, keyed by a caller-chosen claim key
  (the controller uses the claim UID). Recording a key again replaces its previous consumption, so
  rebuilding from a re-listed claim is harmless; releasing an unknown key is a no-op.
- `Ledger.apply` — record every claim of an allocator `Placement` at once.

Consumption is booked per (node, device name) whether or not that GPU is known yet, so the order
in which slices and claims arrive does not matter: a node published later picks up what was
already booked against it. Booked consumption above a GPU's capacity (an allocation written by
another allocator) is kept as is; free capacity then reads 0, never negative.

Every update touches one node: its GPUs' totals, its summary (largest free memory / fraction /
cores on any one GPU), and its position in five sorted node lists (``O(log n)`` search plus a
``memmove`` each): by free share ascending and descending (the node policies' walking orders) and
by the best GPU's free memory, free fraction and free cores (bisect finds the nodes that could
take a request at all). That is what lets the allocator reject most nodes without looking at their GPUs.
It also remembers, per compiled selector, which nodes have a GPU it matches, until a node's GPUs
change (`nodes_selected_by`; a cache, invisible in what the allocator decides). The per-node
records (`GpuDevice`, `NodeState`) are in `vgpu_dra.driver.node_state`.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from vgpu_dra.driver.node_state import AttributeValue, Consumption, GpuCandidate, GpuDevice, NodeState, Version

__all__ = ["AttributeValue", "Consumption", "GpuCandidate", "GpuDevice", "HasConsumptions", "Ledger", "NodeState",
           "Version"]


class HasConsumptions(Protocol):
    """Anything that can be booked claim by claim (an allocator `Placement`)."""

    def claim_consumptions(self) -> Iterable[tuple[str, tuple[Consumption, ...]]]: ...


class Ledger:
    """Nodes, their GPUs, and per-claim consumption; see the module docstring for the contract."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeState] = {}
        # Ascending by (score, name): binpack walks it forwards. The second list holds
        # (-score, name) so spread also breaks ties by name.
        self._by_free_ascending: list[tuple[float, str]] = []
        self._by_free_descending: list[tuple[float, str]] = []
        # Ascending by the node's best GPU: bisect finds the nodes that could take a request at all.
        self._by_max_free_memory: list[tuple[int, str]] = []
        self._by_max_free_fraction: list[tuple[float, str]] = []
        self._by_max_free_cores: list[tuple[int, str]] = []
        self._names: list[str] = []
        self._book: dict[str, tuple[Consumption, ...]] = {}
        # (node, device) -> claim key -> (memory, cores): survives the GPU's absence.
        self._holders: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        # Nodes publishing a memory requestPolicy other than the driver's own: the allocator's
        # thresholds assume the driver's rounding and are loosened while any exist.
        self._custom_policy_nodes: set[str] = set()
        self._not_plain_nodes: set[str] = set()  # nodes whose `NodeState.plain` is False
        # Bumped whenever any node's GPUs change: what a device-only selector matches stays valid
        # until then (selector id -> (selector, topology, nodes with a matching GPU)).
        self._topology = 0
        self._selected: dict[int, tuple[object, int, frozenset[str]]] = {}

    # --- nodes -----------------------------------------------------------------------------

    def set_node(self, name: str, gpus: Iterable[GpuDevice]) -> None:
        """Publish (or replace) a node's GPUs; consumption already booked against it is kept."""
        devices = tuple(gpus)
        names = [gpu.name for gpu in devices]
        if len(set(names)) != len(names):
            raise ValueError(f"node {name}: device names are not unique: {names}")
        if name in self._nodes:
            self._unindex(self._nodes[name])
        else:
            bisect.insort(self._names, name)
        state = NodeState(name, devices)
        self._topology += 1
        for i, gpu in enumerate(devices):
            for memory, cores in self._holders.get((name, gpu.name), {}).values():
                state.used_memory[i] += memory
                state.used_cores[i] += cores
        state.refresh()
        self._nodes[name] = state
        self._index(state)
        for flagged, nodes in ((any(gpu.memory_policy is not None for gpu in devices), self._custom_policy_nodes),
                               (not state.plain, self._not_plain_nodes)):
            if flagged:
                nodes.add(name)
            else:
                nodes.discard(name)

    @property
    def all_plain(self) -> bool:
        """Whether every node is `NodeState.plain` (no device taints, the driver's own policies)."""
        return not self._not_plain_nodes

    @property
    def has_custom_policies(self) -> bool:
        """Whether any node publishes a memory requestPolicy other than the driver's own."""
        return bool(self._custom_policy_nodes)

    def remove_node(self, name: str) -> None:
        """Forget a node's GPUs (its booked consumption stays until released)."""
        self._custom_policy_nodes.discard(name)
        self._not_plain_nodes.discard(name)
        self._topology += 1
        state = self._nodes.pop(name, None)
        if state is not None:
            self._unindex(state)
            del self._names[bisect.bisect_left(self._names, name)]

    def nodes_selected_by(self, selector: Callable[[GpuDevice], bool]) -> frozenset[str]:
        """The nodes with at least one GPU ``selector`` accepts. Only for selectors that read the
        published device alone (compiled CEL): the answer is kept until a node's GPUs change."""
        cached = self._selected.get(id(selector))
        if cached is not None and cached[0] is selector and cached[1] == self._topology:
            return cached[2]
        nodes = frozenset(name for name, state in self._nodes.items() if any(selector(gpu) for gpu in state.gpus))
        if len(self._selected) > 1024:
            self._selected.clear()
        self._selected[id(selector)] = (selector, self._topology, nodes)
        return nodes

    def node(self, name: str) -> NodeState | None:
        """The node's state, or None when it publishes no GPUs."""
        return self._nodes.get(name)

    def node_count(self) -> int:
        """How many nodes publish GPUs."""
        return len(self._nodes)

    def node_names(self) -> list[str]:
        """All known nodes, sorted by name."""
        return list(self._names)

    def states(self) -> list[NodeState]:
        """All known nodes' states, sorted by name."""
        nodes = self._nodes
        return [nodes[name] for name in self._names]

    def count_with_free_memory(self, min_bytes: int) -> int:
        """How many nodes have a GPU with at least ``min_bytes`` free (O(log n))."""
        order = self._by_max_free_memory
        return len(order) - bisect.bisect_left(order, (min_bytes, ""))

    def count_with_free_fraction(self, min_fraction: float) -> int:
        """How many nodes have a GPU with at least ``min_fraction`` of its memory free (O(log n))."""
        order = self._by_max_free_fraction
        return len(order) - bisect.bisect_left(order, (min_fraction, ""))

    def count_with_free_cores(self, min_cores: int) -> int:
        """How many nodes have a GPU with at least ``min_cores`` free (O(log n))."""
        order = self._by_max_free_cores
        return len(order) - bisect.bisect_left(order, (min_cores, ""))

    def with_free_cores(self, min_cores: int) -> list[NodeState]:
        """The nodes `count_with_free_cores` counts, most free last."""
        order = self._by_max_free_cores
        return [self._nodes[name] for _, name in order[bisect.bisect_left(order, (min_cores, "")):]]

    def nodes_that_may_fit(self, min_memory: int, min_fraction: float, min_cores: int,
                           limit: int) -> list[NodeState] | None:
        """The nodes whose best GPUs pass the tightest of the three thresholds, when at most
        ``limit`` do (a superset of the nodes that can take the request); None when more do."""
        counts = ((self.count_with_free_memory(min_memory), self.with_free_memory, min_memory),
                  (self.count_with_free_fraction(min_fraction), self.with_free_fraction, min_fraction),
                  (self.count_with_free_cores(min_cores), self.with_free_cores, min_cores))
        count, nodes, threshold = min(counts, key=lambda entry: entry[0])
        return nodes(threshold) if count <= limit else None  # type: ignore[operator]

    def with_free_memory(self, min_bytes: int) -> list[NodeState]:
        """The nodes `count_with_free_memory` counts, most free last."""
        order = self._by_max_free_memory
        return [self._nodes[name] for _, name in order[bisect.bisect_left(order, (min_bytes, "")):]]

    def with_free_fraction(self, min_fraction: float) -> list[NodeState]:
        """The nodes `count_with_free_fraction` counts, most free last."""
        order = self._by_max_free_fraction
        return [self._nodes[name] for _, name in order[bisect.bisect_left(order, (min_fraction, "")):]]

    def most_free(self, *, fraction: bool) -> Iterator[NodeState]:
        """Nodes from the one whose best GPU has the most memory (or fraction of it) free, down."""
        order = self._by_max_free_fraction if fraction else self._by_max_free_memory
        nodes = self._nodes
        for _, name in reversed(order):
            yield nodes[name]

    def nodes_by_free(self, *, most_free_first: bool) -> Iterator[NodeState]:
        """Nodes ordered by how much of them is free (ties by name): the node policy's walk."""
        order = self._by_free_descending if most_free_first else self._by_free_ascending
        nodes = self._nodes
        for _, name in order:
            yield nodes[name]

    def candidates(self, node: str) -> list[GpuCandidate]:
        """Views of a node's GPUs with their current use (empty for an unknown node)."""
        state = self._nodes.get(node)
        return [] if state is None else [state.candidate(i) for i in range(len(state.gpus))]

    def gpu_count(self) -> int:
        return sum(len(state.gpus) for state in self._nodes.values())

    # --- consumption -----------------------------------------------------------------------

    def record(self, claim_key: str, consumptions: Iterable[Consumption]) -> None:
        """Book what a claim consumes, replacing anything booked under the same key before."""
        items = tuple(consumptions)
        for item in items:
            if item.memory_bytes < 0 or item.cores < 0:
                raise ValueError(f"claim {claim_key}: negative consumption on {item.node}/{item.device}")
        self.release(claim_key)
        if not items:
            return
        self._book[claim_key] = items
        touched: set[str] = set()
        for item in items:
            holders = self._holders.setdefault((item.node, item.device), {})
            memory, cores = holders.get(claim_key, (0, 0))
            holders[claim_key] = (memory + item.memory_bytes, cores + item.cores)
            self._adjust(item, +1, touched)
        self._refresh(touched)

    def release(self, claim_key: str) -> bool:
        """Give back everything booked under ``claim_key``; False when nothing was."""
        items = self._book.pop(claim_key, None)
        if items is None:
            return False
        touched: set[str] = set()
        for item in items:
            key = (item.node, item.device)
            holders = self._holders.get(key)
            if holders is not None and holders.pop(claim_key, None) is not None and not holders:
                del self._holders[key]
            self._adjust(item, -1, touched)
        self._refresh(touched)
        return True

    def apply(self, placement: HasConsumptions) -> None:
        """Book every claim of an allocator placement."""
        for claim_key, consumptions in placement.claim_consumptions():
            self.record(claim_key, consumptions)

    def booked(self, claim_key: str) -> tuple[Consumption, ...]:
        """What is booked under a claim key (empty when nothing)."""
        return self._book.get(claim_key, ())

    def claim_keys(self) -> list[str]:
        return list(self._book)

    def holders(self, node: str, device: str) -> dict[str, tuple[int, int]]:
        """Claim key → (memory bytes, cores) booked on one GPU."""
        return dict(self._holders.get((node, device), {}))

    def used(self, node: str, device: str) -> tuple[int, int]:
        """(memory bytes, cores) booked on one GPU, known or not."""
        memory = cores = 0
        for item_memory, item_cores in self._holders.get((node, device), {}).values():
            memory += item_memory
            cores += item_cores
        return memory, cores

    # --- internals -------------------------------------------------------------------------

    def _adjust(self, item: Consumption, sign: int, touched: set[str]) -> None:
        state = self._nodes.get(item.node)
        if state is None:
            return
        i = state.index.get(item.device)
        if i is None:
            return
        if item.node not in touched:
            self._unindex(state)
            touched.add(item.node)
        state.used_memory[i] += sign * item.memory_bytes
        state.used_cores[i] += sign * item.cores

    def _refresh(self, touched: set[str]) -> None:
        for name in touched:
            state = self._nodes[name]
            state.refresh()
            self._index(state)

    def _index_keys(self, state: NodeState) -> tuple[tuple[list, tuple], ...]:
        return ((self._by_free_ascending, (state.score, state.name)),
                (self._by_free_descending, (-state.score, state.name)),
                (self._by_max_free_memory, (state.max_free_memory, state.name)),
                (self._by_max_free_fraction, (state.max_free_fraction, state.name)),
                (self._by_max_free_cores, (state.max_free_cores, state.name)))

    def _index(self, state: NodeState) -> None:
        for order, key in self._index_keys(state):
            bisect.insort(order, key)

    def _unindex(self, state: NodeState) -> None:
        # Called before the state's used totals change, so its keys are the ones indexed.
        for order, key in self._index_keys(state):
            position = bisect.bisect_left(order, key)
            if position < len(order) and order[position] == key:
                del order[position]

"""Scoring many candidates with each shared prefix computed once per batch.

Candidates of a weight-sharing search often run the same first steps: pooling placements that
agree on the first ``k`` layers have identical activations up to layer ``k``, SN-Net
configurations that start in the same anchor share that anchor's blocks up to the stitch. A
:class:`PrefixTrie` holds the candidates' step sequences (``path``: hashable step keys, a step
being one deterministic function of the previous activation); :meth:`PrefixTrie.run` walks it
depth first on one batch, applying every trie node's step once to its parent's activation and
handing each candidate's last activation to ``finish``.

Memory. A node's activation is needed after its first child only when it has further children
(a branching node); those are kept while their subtree runs, at most one per depth of the
current path, up to ``budget`` bytes. A branching node that does not fit is not kept: each of
its later children recomputes it from the nearest kept ancestor (or the batch itself), so the
bound holds whatever the model and batch, at the cost of those recomputed steps (with
``budget=0`` the work is at most that of evaluating every candidate alone). :class:`PrefixStats`
records what ran, what was kept at the peak and what was recomputed.

The results are bit-identical to running each candidate's steps on the batch one candidate at
a time, as long as every step is a pure function of its input (a step with side effects, such
as BatchNorm statistics, must tell apart a recomputation: ``apply``'s ``replay`` argument).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

#: Default byte budget for the activations kept while a batch runs through the trie (1 GiB).
DEFAULT_PREFIX_BUDGET = 1 << 30

Apply = Callable[["PrefixNode", torch.Tensor, bool], torch.Tensor]
"""``apply(node, x, replay) -> y``: run ``node.step`` on its parent's activation ``x``;
``replay`` is True when the node's activation is recomputed (it ran before on this batch)."""


@dataclass(eq=False)
class PrefixNode:
    """One distinct prefix: the step that ends it, its depth (the root, the input, is 0), the
    candidates whose path ends here and the next steps."""

    id: int
    step: Hashable
    depth: int
    parent: PrefixNode | None
    children: dict[Hashable, PrefixNode] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)

    def path(self) -> list[PrefixNode]:
        """The nodes from depth 1 down to this one."""
        nodes: list[PrefixNode] = []
        node: PrefixNode | None = self
        while node is not None and node.parent is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]


@dataclass
class PrefixStats:
    """What :meth:`PrefixTrie.run` did, summed over the batches it ran.

    Attributes:
        applied: Images each node's step ran on (node id -> count), recomputations included.
        recomputed: Step applications that recomputed a node not kept (over the budget).
        peak_bytes: Most bytes of kept activations at any time (the batch itself not counted).
        budget: The byte budget of kept activations.
        batches: Batches run.
    """

    budget: int = DEFAULT_PREFIX_BUDGET
    applied: dict[int, int] = field(default_factory=dict)
    recomputed: int = 0
    peak_bytes: int = 0
    batches: int = 0

    def steps_run(self) -> int:
        """Step applications, counting one per image."""
        return sum(self.applied.values())


def tensor_bytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


class PrefixTrie:
    """The trie of candidates' step sequences.

    Args:
        paths: ``candidate -> steps``, each step a hashable key that names one deterministic
            function of the previous activation (equal keys after equal prefixes compute equal
            activations). A path may end where another continues.

    Raises:
        ValueError: An empty path.
    """

    def __init__(self, paths: Mapping[int, Sequence[Hashable]]) -> None:
        self.root = PrefixNode(0, None, 0, None)
        self.nodes: list[PrefixNode] = [self.root]
        self.leaf: dict[int, PrefixNode] = {}
        self.path_steps = 0  # steps of every path, as if each candidate ran alone
        for candidate, steps in paths.items():
            if not steps:
                raise ValueError(f"prefix trie: candidate {candidate} has an empty path")
            node = self.root
            for step in steps:
                child = node.children.get(step)
                if child is None:
                    child = PrefixNode(len(self.nodes), step, node.depth + 1, node)
                    node.children[step] = child
                    self.nodes.append(child)
                node = child
            node.ends.append(candidate)
            self.leaf[candidate] = node
            self.path_steps += len(steps)

    @property
    def num_steps(self) -> int:
        """Distinct prefixes (trie nodes without the root): steps run per image when shared."""
        return len(self.nodes) - 1

    def run(
        self, x: torch.Tensor, apply: Apply, finish: Callable[[int, torch.Tensor], None] | None = None,
        prune: Callable[[PrefixNode], bool] | None = None, stats: PrefixStats | None = None,
    ) -> PrefixStats:
        """Run one batch ``x`` through the trie, depth first, children in insertion order.

        Args:
            x: The batch, the root's activation (any shape ``apply`` accepts; dim 0 counts images).
            apply: Runs one node's step (see :data:`Apply`).
            finish: Called with ``(candidate, activation)`` where each candidate's path ends.
            prune: Nodes (and their subtrees) to leave out, e.g. a classifier head when only
                BatchNorm statistics are wanted.
            stats: Accumulates over calls (a new one with the default budget if None).

        Returns:
            ``stats``, updated.
        """
        stats = stats if stats is not None else PrefixStats()
        stats.batches += 1
        kept: dict[int, torch.Tensor] = {self.root.id: x}
        held = [0]  # bytes kept now
        images = int(x.shape[0]) if x.dim() else 1

        def step(node: PrefixNode, inp: torch.Tensor, replay: bool) -> torch.Tensor:
            stats.applied[node.id] = stats.applied.get(node.id, 0) + images
            if replay:
                stats.recomputed += 1
            return apply(node, inp, replay)

        def recompute(node: PrefixNode) -> torch.Tensor:
            chain = []
            at: PrefixNode | None = node
            while at is not None and at.id not in kept:
                chain.append(at)
                at = at.parent
            assert at is not None, "the root is always kept"
            act = kept[at.id]
            for n in reversed(chain):
                act = step(n, act, True)
            return act

        def visit(node: PrefixNode, given: list[torch.Tensor]) -> None:
            # the activation arrives in a list the caller no longer reads, so that dropping it
            # here frees it: no frame up the path holds a reference
            act: torch.Tensor | None = given.pop()
            assert act is not None
            for candidate in node.ends:
                if finish is not None:
                    finish(candidate, act)
            children = [c for c in node.children.values() if prune is None or not prune(c)]
            if not children:
                return
            keep = node.id in kept
            if not keep and len(children) > 1 and held[0] + tensor_bytes(act) <= stats.budget:
                kept[node.id] = act
                held[0] += tensor_bytes(act)
                stats.peak_bytes = max(stats.peak_bytes, held[0])
                keep = True
            for i, child in enumerate(children):
                inp = act if (i == 0 or keep) and act is not None else recompute(node)
                if not keep:
                    act = None  # dropped: a later child recomputes it
                out = [step(child, inp, False)]
                del inp
                visit(child, out)
            if node.id in kept and node is not self.root:
                held[0] -= tensor_bytes(kept.pop(node.id))

        visit(self.root, [x])
        return stats


@dataclass
class PrefixReport:
    """What one shared-prefix scoring call computed (pooling placements:
    :func:`supernet.shared_prefix.score_placements`; stitches: :func:`stitching.shared_prefix.score_routes`).

    Attributes:
        candidates: Configurations scored.
        steps_shared: Distinct prefixes (trie nodes), the steps run per image when shared.
        steps_alone: Steps of every configuration's own path, as if each ran alone.
        calib: The calibration passes (None without re-calibration).
        val: The validation passes.
        state_bytes: BatchNorm buffers kept per distinct prefix (bytes).
    """

    candidates: int
    steps_shared: int
    steps_alone: int
    val: PrefixStats
    calib: PrefixStats | None = None
    state_bytes: int = 0

    def describe(self) -> str:
        """One log line: steps run against per-candidate evaluation, peak memory kept."""
        passes = [p for p in (self.calib, self.val) if p is not None]
        recomputed = sum(p.recomputed for p in passes)
        peak = max(p.peak_bytes for p in passes)
        return (f"shared-prefix scoring of {self.candidates} candidates: {self.steps_shared} distinct prefix steps "
                f"for {self.steps_alone} path steps ({self.steps_alone - self.steps_shared} reused per image, "
                f"{recomputed} recomputed over the budget), peak {peak / 2**20:.1f} MiB of activations kept "
                f"(budget {passes[0].budget / 2**20:.0f} MiB), {self.state_bytes / 2**20:.2f} MiB of BatchNorm state")


__all__ = ["DEFAULT_PREFIX_BUDGET", "PrefixNode", "PrefixReport", "PrefixStats", "PrefixTrie", "tensor_bytes"]

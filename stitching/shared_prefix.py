"""Scoring many stitched configurations with each shared prefix computed once per batch.

A configuration's path (:meth:`stitching.snnet.SNNet.forward_route`) is its first anchor's
embedding, then block after block along its route with a stitching layer at every junction,
then the last anchor's norm and head. SN-Net configurations that start in the same anchor share
its blocks up to the stitch (every stitch out of anchor ``a`` reuses ``a``'s own path), and
SN-Netv2's three-segment routes share their first two segments with a two-segment route.
:func:`score_routes` runs the configurations' trie (:class:`~stitchnas.core.prefix.PrefixTrie`)
once per validation batch, in eval mode, bit-identical to
:func:`stitchnas.core.evaluation.accuracy` of each configuration (tested).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import cast

import torch
from torch import nn

from searchspace.stitch import StitchConfig
from stitching.snnet import SNNet
from stitchnas.core.evaluation import AccuracyTally
from stitchnas.core.prefix import DEFAULT_PREFIX_BUDGET, PrefixNode, PrefixReport, PrefixStats, PrefixTrie
from stitchnas.core.training import ImageSplit, autocast, batches_for, resolve_device


def route_steps(snnet: SNNet, config: StitchConfig) -> list[Hashable]:
    """The trie steps of one configuration: ``("embed", a)``, ``("block", a, i)`` per block,
    ``("stitch", a, j, layer)`` at a junction out of block ``j`` of anchor ``a`` (``layer``: the
    key in ``snnet.stitch_layers``, so positions sharing a layer share the step), ``("head", a)``."""
    names = {id(m): name for name, m in snnet.stitch_layers.items()}
    route = config.route
    steps: list[Hashable] = [("embed", route[0].anchor)]
    for i, seg in enumerate(route):
        if i > 0:
            prev = route[i - 1]
            layer = snnet.stitching_layer(prev.anchor, seg.anchor, config.windows[i - 1], (prev.last, seg.first))
            steps.append(("stitch", prev.anchor, prev.last, names[id(layer)]))
        steps += [("block", seg.anchor, b) for b in range(seg.first, seg.last + 1)]
    steps.append(("head", route[-1].anchor))
    return steps


@torch.no_grad()
def score_routes(
    snnet: SNNet, configs: Sequence[StitchConfig | int], val_data: ImageSplit, batch_size: int,
    device: str | torch.device = "cpu", budget: int = DEFAULT_PREFIX_BUDGET, amp: bool = True,
) -> tuple[list[float | None], PrefixReport]:
    """Top-1 accuracy (percent) on ``val_data`` of every configuration, as
    ``accuracy(snnet with that configuration active, val_data, batch_size, device)`` gives it,
    with every shared prefix computed once per batch.

    Args:
        snnet: The stitched network; moved to ``device`` and put in eval mode, as ``accuracy`` does.
        configs: Configurations or ids of ``snnet.space`` (repeats allowed).
        val_data: Images ``(N, C, H, W)`` and labels ``(N,)``.
        batch_size: Images per batch.
        device: Where to run.
        budget: Bytes of activations kept per batch (see :mod:`stitchnas.core.prefix`).
        amp: bf16 autocast on CUDA, as ``accuracy``.

    Returns:
        The accuracies in ``configs`` order (None where a logit was NaN or infinite: ``accuracy``
        raises :class:`~stitchnas.core.evaluation.NonFiniteOutput` there) and what was computed.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    snnet.to(device).eval()
    resolved = [snnet.resolve(c) for c in configs]
    trie = PrefixTrie({i: route_steps(snnet, c) for i, c in enumerate(resolved)})

    def forward(node: PrefixNode, x: torch.Tensor, replay: bool) -> torch.Tensor:
        step = cast(tuple, node.step)
        kind, anchor = step[0], step[1]
        if kind == "embed":
            return snnet.anchor(anchor).embed(x)
        if kind == "block":
            return cast(nn.Module, snnet.anchor(anchor).blocks[step[2]])(x)
        if kind == "stitch":
            return snnet.stitch_layers[step[3]](x)
        return snnet.anchor(anchor).forward_norm_head(x)

    n = len(resolved)
    tally = AccuracyTally(n, device)
    stats = PrefixStats(budget=budget)
    batches = batches_for(val_data, device)
    for x, y in batches.iterate(batch_size):
        tally.labels = y
        with autocast(device, amp):
            trie.run(x, forward, tally.add, stats=stats)
    return tally.percents(len(batches)), PrefixReport(n, trie.num_steps, trie.path_steps, stats)


__all__ = ["route_steps", "score_routes"]

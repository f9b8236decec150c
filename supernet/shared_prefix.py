"""Scoring many pooling placements of one supernet with each shared prefix computed once per batch.

:func:`supernet.evaluation.evaluate_path` scores one placement: reset every BatchNorm, re-estimate
its statistics over the calibration batches (train mode, cumulative average), then measure the
accuracy on ``search_val`` in eval mode. Two placements that agree on layers ``1..k`` (each
downsampled or not) compute identical activations up to layer ``k`` on every batch, in both
passes: in train mode a layer's output uses its batch's statistics only, and its re-calibrated
statistics depend only on its input over the calibration batches, so equal prefixes get equal
statistics and, in eval mode, equal activations. :func:`score_placements` runs the placements'
trie (:class:`~stitchnas.core.prefix.PrefixTrie`; steps: stem, layer ``i`` downsampled or not,
head) once per calibration batch, each trie node with its own BatchNorm buffers swapped into
the layer's modules, then once per validation batch with the node's final statistics. The
accuracies and the statistics are bit-identical to :func:`evaluate_path` per placement (tested).

Memory: one set of BatchNorm buffers per distinct prefix (:attr:`PrefixReport.state_bytes`) plus
the activations the trie keeps within its byte budget.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Hashable, Sequence
from contextlib import nullcontext
from typing import cast

import torch
from torch import nn

from searchspace.pooling import PoolingConfig, PoolingSpace
from stitchnas.core.evaluation import AccuracyTally, _batchnorms, batch_statistics
from stitchnas.core.prefix import (
    DEFAULT_PREFIX_BUDGET,
    PrefixNode,
    PrefixReport,
    PrefixStats,
    PrefixTrie,
    tensor_bytes,
)
from stitchnas.core.training import ImageSplit, autocast, batches_for, resolve_device
from supernet.evaluation import EvalConfig, calibration_batches
from supernet.networks import PoolingSuperNet, _SwitchablePoolingLayer, build_model
from supernet.slimmable import leading

log = logging.getLogger(__name__)

BNState = list[list[torch.Tensor]]  # per BatchNorm of a module: running mean, running var, batches tracked


def placement_steps(space: PoolingSpace, config: PoolingConfig) -> list[Hashable]:
    """The trie steps of one placement: ``("stem",)``, ``("layer", i, downsampled, width)`` for
    every layer ``1..num_layers - 1`` (its output channels: they vary with the placement in
    spaces with ``stage_widths``), ``("head",)``."""
    widths = space.layer_widths(config)
    layers: list[Hashable] = [("layer", i, i in config.positions, widths[i]) for i in range(1, space.num_layers)]
    return [("stem",), *layers, ("head",)]


def _fresh_state(bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> BNState:
    """What ``reset_running_stats`` leaves: mean 0, variance 1, no batch tracked."""
    state = []
    for bn in bns:
        assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
        state.append([torch.zeros_like(bn.running_mean), torch.ones_like(bn.running_var),
                      torch.zeros_like(bn.num_batches_tracked)])
    return state


def _bind(bns: Sequence[nn.modules.batchnorm._BatchNorm], state: BNState) -> None:
    """Make ``state``'s tensors the modules' buffers (no copy: updates land in ``state``)."""
    for bn, (mean, var, tracked) in zip(bns, state):
        bn.running_mean, bn.running_var, bn.num_batches_tracked = mean, var, tracked


@torch.no_grad()
def score_placements(
    supernet: PoolingSuperNet, configs: Sequence[PoolingConfig], calib_data: ImageSplit,
    val_data: ImageSplit, cfg: EvalConfig, budget: int = DEFAULT_PREFIX_BUDGET,
    states_out: dict[int, dict[str, torch.Tensor]] | None = None,
) -> tuple[list[float | None], PrefixReport]:
    """Validation accuracy (percent) of every placement in ``configs``, as
    :func:`supernet.evaluation.evaluate_path` scores each, with every shared prefix computed
    once per batch.

    Args:
        supernet: The trained supernet (not modified: a copy runs on ``cfg.device``).
        configs: Placements of ``supernet.space`` (repeats allowed).
        calib_data: Images ``(N, C, H, W)`` and labels of BatchNorm re-calibration (``"recalibrate"``).
        val_data: Images and labels ``(N,)`` of the accuracy.
        cfg: BatchNorm mode, calibration batches and sizes, batch size, device, seed.
        budget: Bytes of activations a pass may keep (see :mod:`stitchnas.core.prefix`).
        states_out: If given, filled with ``position in configs -> BatchNorm buffers`` after
            re-calibration, named as in the exported network's ``state_dict`` (for tests).

    Returns:
        The accuracies in ``configs`` order (None where a logit was NaN or infinite: the
        per-placement path raises :class:`~stitchnas.core.evaluation.NonFiniteOutput` there)
        and what was computed.
    """
    if cfg.finetune is not None:  # each placement trains its own copy: nothing is shared
        raise ValueError("score_placements: fine-tuned scoring (EvalConfig.finetune) shares no prefixes; "
                         "score each placement with evaluate_path")
    device = resolve_device(cfg.device)
    space = supernet.space
    work = copy.deepcopy(supernet).to(device).eval()  # its BatchNorm buffers are swapped per prefix
    trie = PrefixTrie({i: placement_steps(space, c) for i, c in enumerate(configs)})
    layers = [cast(_SwitchablePoolingLayer, layer) for layer in work.layers]  # built as such
    bns_of: dict[int, list[nn.modules.batchnorm._BatchNorm]] = {}

    def module(node: PrefixNode) -> tuple[nn.Module, list[nn.modules.batchnorm._BatchNorm]]:
        step = cast(tuple, node.step)
        if step[0] == "stem":
            m: nn.Module = work.stem
        else:
            layer = layers[step[1] - 1]
            layer.set_downsampled(step[2], space.downsample)
            layer.set_width(step[3])
            m = layer
        if id(m) not in bns_of:
            bns_of[id(m)] = _batchnorms(m)
        return m, bns_of[id(m)]

    def is_head(node: PrefixNode) -> bool:
        return cast(tuple, node.step)[0] == "head"

    states: dict[int, BNState] = {}
    calib_stats = None
    if cfg.bn_mode == "recalibrate":
        calib_stats = PrefixStats(budget=budget)
        all_bns = _batchnorms(work)
        momenta = [bn.momentum for bn in all_bns]
        for bn in all_bns:
            bn.momentum = None  # cumulative average, as recalibrate_batchnorm
        work.train()

        def calibrate(node: PrefixNode, x: torch.Tensor, replay: bool) -> torch.Tensor:
            m, bns = module(node)
            # a recomputed node must not count its batch twice: it runs on throwaway buffers
            _bind(bns, _fresh_state(bns) if replay else states.setdefault(node.id, _fresh_state(bns)))
            return m(x)

        for x in calibration_batches(calib_data, cfg.calib_batches, cfg.calib_batch_size, cfg.seed, device):
            trie.run(x, calibrate, prune=is_head, stats=calib_stats)
        for bn, momentum in zip(all_bns, momenta):
            bn.momentum = momentum
        work.eval()

    n = len(configs)
    tally = AccuracyTally(n, device)

    def forward(node: PrefixNode, x: torch.Tensor, replay: bool) -> torch.Tensor:
        if is_head(node):
            return work.forward_head(x)
        m, bns = module(node)
        if calib_stats is not None:
            _bind(bns, states[node.id])
        return m(x)

    val_stats = PrefixStats(budget=budget)
    batches = batches_for(val_data, device)
    with batch_statistics(work) if cfg.bn_mode == "batch" else nullcontext():
        for x, y in batches.iterate(cfg.batch_size):
            tally.labels = y
            with autocast(device, True):  # as accuracy() scores: bf16 on CUDA
                trie.run(x, forward, tally.add, stats=val_stats)
    if states_out is not None:
        for i, config in enumerate(configs):  # cut to the exported network's buffers and widths
            named = _named_state(work, trie.leaf[i], states)
            shapes = {k: v.shape for k, v in build_model(space, config, supernet.spec).state_dict().items()}
            states_out[i] = {k: leading(v, shapes[k]) for k, v in named.items() if k in shapes}
    accs = tally.percents(len(batches))
    state_bytes = sum(tensor_bytes(t) for s in states.values() for bn in s for t in bn)
    report = PrefixReport(n, trie.num_steps, trie.path_steps, val_stats, calib_stats, state_bytes)
    return accs, report


def _named_state(work: PoolingSuperNet, leaf: PrefixNode, states: dict[int, BNState]) -> dict[str, torch.Tensor]:
    """The re-calibrated BatchNorm buffers of the placement ending at ``leaf``, by state-dict name."""
    named: dict[str, torch.Tensor] = {}
    names = {id(m): name for name, m in work.named_modules()}
    layers = [cast(_SwitchablePoolingLayer, layer) for layer in work.layers]
    for node in leaf.path():
        step = cast(tuple, node.step)
        if step[0] == "head" or node.id not in states:
            continue
        m: nn.Module = work.stem if step[0] == "stem" else layers[step[1] - 1]
        for bn, (mean, var, tracked) in zip(_batchnorms(m), states[node.id]):
            prefix = names[id(bn)]
            named.update({f"{prefix}.running_mean": mean, f"{prefix}.running_var": var,
                          f"{prefix}.num_batches_tracked": tracked})
    return named


__all__ = ["placement_steps", "score_placements"]

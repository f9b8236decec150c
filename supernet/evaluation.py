"""Evaluating networks and supernet paths, with BatchNorm statistics handled per configuration.

A supernet's BatchNorm running statistics are a blend over every path it trained, so they fit
no single configuration. Two remedies:

* ``"recalibrate"``: reset the statistics of the exported path and re-estimate them over a few
  training batches (Once-for-All, BigNAS), then evaluate in eval mode;
* ``"batch"``: evaluate with each batch's own statistics, as the BMS code does
  (``track_running_stats=False``).

:func:`supernet.shared_prefix.score_placements` scores many placements with the same results,
computing each prefix they share once per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from searchspace.pooling import PoolingConfig
from stitchnas.core import records
from stitchnas.core.evaluation import _batchnorms, accuracy
from stitchnas.core.records import check_finite
from stitchnas.core.training import ImageSplit, batches_for, epoch_generator, resolve_device
from supernet.bms import MixtureOfSuperNets
from supernet.networks import PoolingSuperNet

BNMode = Literal["recalibrate", "batch"]
BN_MODES: tuple[str, ...] = ("recalibrate", "batch")


@dataclass(frozen=True)
class EvalConfig:
    bn_mode: BNMode = "recalibrate"
    calib_batches: int = 8
    calib_batch_size: int = 64
    batch_size: int = 256
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_finite(self, "eval config")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"eval config 'bn_mode': expected one of {BN_MODES}, got {self.bn_mode!r}")
        if self.calib_batches < 1 or self.batch_size < 1 or self.calib_batch_size < 1:
            raise ValueError("eval config: 'calib_batches', 'calib_batch_size' and 'batch_size' must be >= 1")

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "eval config") -> EvalConfig:
        return records.from_json(cls, data, where)


def calibration_batches(data: ImageSplit, num_batches: int, batch_size: int, seed: int,
                        device: torch.device) -> Iterator[torch.Tensor]:
    """The images of BatchNorm re-calibration: the first ``num_batches`` full batches of
    ``batch_size`` of ``data`` in the order seeded by ``seed`` (fewer when ``data`` has fewer),
    each ``(batch_size, C, H, W)`` on ``device``; the same batches for every configuration."""
    batches = batches_for(data, device)
    gen = epoch_generator(seed, 0, stream=1)
    for i, (x, _) in enumerate(batches.iterate(batch_size, gen, drop_last=True)):
        if i >= num_batches:
            break
        yield x


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: ImageSplit, num_batches: int,
                          batch_size: int, seed: int = 0, device: torch.device | None = None) -> None:
    """Replace running statistics by their exact average over ``num_batches`` random batches."""
    device = device or next(model.parameters()).device
    bns = _batchnorms(model)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average instead of an exponential one
    model.train()
    for x in calibration_batches(data, num_batches, batch_size, seed, device):
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


def prepare_path(supernet: PoolingSuperNet | MixtureOfSuperNets, config: PoolingConfig,
                 calib_data: ImageSplit, cfg: EvalConfig) -> nn.Module:
    """The standalone network of ``config`` with supernet weights and BatchNorm handled per ``cfg``.

    With ``"recalibrate"`` the returned model carries statistics fitted to this configuration,
    which is also what an exported model should carry.
    """
    supernet.set_active(config)
    model = supernet.export_active()
    if cfg.bn_mode == "recalibrate":
        recalibrate_batchnorm(model, calib_data, cfg.calib_batches, cfg.calib_batch_size, cfg.seed)
    return model


@torch.no_grad()
def evaluate_path(supernet: PoolingSuperNet | MixtureOfSuperNets, config: PoolingConfig,
                  calib_data: ImageSplit, val_data: ImageSplit,
                  cfg: EvalConfig) -> float:
    """Validation accuracy (percent) of one configuration under supernet weights."""
    device = resolve_device(cfg.device)
    supernet.to(device)
    model = prepare_path(supernet, config, calib_data, cfg)
    return accuracy(model, val_data, cfg.batch_size, device, batch_stats=cfg.bn_mode == "batch")

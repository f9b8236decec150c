"""Evaluating networks and supernet paths, with BatchNorm statistics handled per configuration.

A supernet's BatchNorm running statistics are a blend over every path it trained, so they fit
no single configuration. Two remedies:

* ``"recalibrate"``: reset the statistics of the exported path and re-estimate them over a few
  training batches (Once-for-All, BigNAS), then evaluate in eval mode;
* ``"batch"``: evaluate with each batch's own statistics, as the BMS code does
  (``track_running_stats=False``).

With ``EvalConfig.finetune`` a placement is scored after a few epochs of training its
standalone network from the supernet's weights (on the calibration split, after the BatchNorm
step above): inherited weights are a better start than a random one, and a short fine-tune
removes much of what weight sharing distorts (fine-tuning before the final ranking, as in
Once-for-All's and the BMS study's re-ranking of top candidates; measured on this project's
benchmarks in BENCHMARKS.md, "Search quality").

:func:`supernet.shared_prefix.score_placements` scores many placements with the same results,
computing each prefix they share once per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from searchspace.pooling import PoolingConfig
from stitchnas.core import records
from stitchnas.core.evaluation import _batchnorms, accuracy
from stitchnas.core.records import check_finite
from stitchnas.core.training import ImageSplit, TrainConfig, batches_for, epoch_generator, resolve_device
from supernet.bms import MixtureOfSuperNets
from supernet.networks import PoolingSuperNet

BNMode = Literal["recalibrate", "batch"]
BN_MODES: tuple[str, ...] = ("recalibrate", "batch")


@dataclass(frozen=True)
class EvalConfig:
    """How a placement is scored on supernet weights.

    Attributes:
        bn_mode: ``"recalibrate"`` or ``"batch"`` (module docstring).
        calib_batches, calib_batch_size: The re-calibration's batches (images per batch).
        batch_size: Images per evaluation forward pass.
        device: Where scoring runs (``"cpu"``, ``"cuda"``, ``"auto"``).
        seed: Orders the calibration batches (the same for every placement).
        finetune: None (default): score the supernet's weights as they are. Otherwise the
            recipe (epochs, learning rate, batch size, augmentation, seed) each placement's
            standalone network is trained with, from the supernet's weights, before it is
            scored; its BatchNorm statistics are then its own running averages. Scoring costs
            ``finetune.epochs`` epochs of the calibration split per placement and shares no
            prefixes. Files written before the field existed decode as None.
    """

    bn_mode: BNMode = "recalibrate"
    calib_batches: int = 8
    calib_batch_size: int = 64
    batch_size: int = 256
    device: str = "cpu"
    seed: int = 0
    finetune: TrainConfig | None = None

    json_absent: ClassVar[dict[str, Any]] = {"finetune": None}

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
    which is also what an exported model should carry. With ``cfg.finetune`` it is then
    fine-tuned on ``calib_data`` (:func:`finetune_path`): the network that was scored is the one
    exported.
    """
    supernet.set_active(config)
    model = supernet.export_active()
    if cfg.bn_mode == "recalibrate":
        recalibrate_batchnorm(model, calib_data, cfg.calib_batches, cfg.calib_batch_size, cfg.seed)
    if cfg.finetune is not None:
        finetune_path(model, calib_data, cfg.finetune)
    return model


def finetune_path(model: nn.Module, data: ImageSplit, recipe: TrainConfig) -> None:
    """Train a placement's standalone network in place with ``recipe`` (:func:`supernet.training.train`:
    SGD, cosine decay, the recipe's augmentation), seeded by ``recipe.seed`` alone, so every
    scoring of the placement (a resume, a Ray trial, the export) gives the same network; it
    is left in eval mode."""
    from supernet.training import train  # training imports evaluation's neighbours: imported late

    device = next(model.parameters()).device
    # torch's global RNG is seeded for this network alone (nothing draws from it today; a future
    # layer might) and restored after, so scoring leaves the caller's random state as it was
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(recipe.seed)
        train(model, data, replace(recipe, device=str(device)), progress=False)  # enable_grad: scoring runs no_grad
    model.eval()


@torch.no_grad()
def evaluate_path(supernet: PoolingSuperNet | MixtureOfSuperNets, config: PoolingConfig,
                  calib_data: ImageSplit, val_data: ImageSplit,
                  cfg: EvalConfig) -> float:
    """Validation accuracy (percent) of one configuration under supernet weights."""
    device = resolve_device(cfg.device)
    supernet.to(device)
    model = prepare_path(supernet, config, calib_data, cfg)
    return accuracy(model, val_data, cfg.batch_size, device, batch_stats=cfg.bn_mode == "batch")

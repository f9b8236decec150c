"""Balanced Mixture of SuperNets (Javan, Toews, Pedersoli; AutoML-Conf 2023, arXiv 2306.11982).

M supernets share nothing. A score matrix W (configurations x M) drives the assignment
``p(m|c) = softmax(T * W[c])``, balanced so every supernet carries the same share of
configuration mass. Each step samples a configuration c uniformly, a supernet m from the
balanced ``p(m|c)``, trains supernet m on c for one step, measures it on one validation batch
and updates ``W[c, m] <- 0.9 W[c, m] + 0.1 accuracy``. The temperature T rises linearly from 1
to ``t_max`` over training, so assignments harden from uniform to nearly one-hot.

Only one supernet runs per step, so a BMS step costs one supernet step; memory is M copies.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
from torch import nn

from searchspace.pooling import PoolingConfig, PoolingSpace
from stitchnas.core import records
from stitchnas.core.checkpoints import EpochCheckpoint
from stitchnas.core.evaluation import batch_statistics
from stitchnas.core.records import check_finite
from stitchnas.core.training import (
    AUGMENT_STREAM,
    Batches,
    Epoch,
    FitOptions,
    ImageSplit,
    TrainHistory,
    autocast,
    batches_for,
    epoch_generator,
    fit,
    resolve_device,
)
from supernet.networks import ModelSpec, PoolingSuperNet
from supernet.training import TrainConfig, build_optimizer, cosine_lr, sgd_step

log = logging.getLogger(__name__)

GroupingMode = Literal["bms", "gm"]


@dataclass(frozen=True)
class MixtureConfig:
    """Mixture settings.

    Args:
        num_supernets: M.
        t_max: final temperature of the linear schedule (BMS uses 100 for ResNet-20).
        ema: decay of the score update ``W <- ema * W + (1 - ema) * accuracy``.
        balance_tol: KL(p(m) || uniform) at which balancing stops.
        grouping: "bms" (learned, balanced soft assignment) or "gm" (GM-NAS-style: after a
            warm-up of one shared supernet, configurations are split into M balanced groups by
            the cosine similarity of their gradients on the shared weights; assignments are
            then fixed).
        gm_warmup_fraction: share of the epochs trained as one supernet before a "gm" split.
        gm_batches: minibatches averaged per configuration for the gradient similarity.
        score_batch_size: images of the validation minibatch scored after every step (None: the
            training batch size, as BMS does). Scoring costs one forward pass per step, about
            0.4x a training step at equal batch size; a smaller batch makes it cheaper and the
            EMA-smoothed score noisier.
    """

    num_supernets: int = 4
    t_max: float = 100.0
    ema: float = 0.9
    balance_tol: float = 1e-4
    grouping: GroupingMode = "bms"
    gm_warmup_fraction: float = 0.25
    gm_batches: int = 4
    score_batch_size: int | None = None

    json_keep_none: ClassVar[bool] = True  # "score_batch_size": null, as run configs always had it

    def __post_init__(self) -> None:
        check_finite(self, "mixture config")
        if not isinstance(self.num_supernets, int) or self.num_supernets < 1:
            raise ValueError(f"mixture 'num_supernets' (M): expected an integer >= 1, got {self.num_supernets!r}")
        if self.t_max < 1:
            raise ValueError(f"mixture 't_max': the temperature must not go below 1, got {self.t_max}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"mixture 'ema': expected 0 <= ema < 1, got {self.ema}")
        if self.balance_tol <= 0:
            raise ValueError(f"mixture 'balance_tol': expected > 0, got {self.balance_tol}")
        if self.grouping not in ("bms", "gm"):
            raise ValueError(f"mixture 'grouping': expected 'bms' or 'gm', got {self.grouping!r}")
        size = self.score_batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"mixture 'score_batch_size': expected an integer >= 1 or None, got {size!r}")
        if not 0 < self.gm_warmup_fraction < 1:
            raise ValueError(f"mixture 'gm_warmup_fraction': expected in (0, 1), got {self.gm_warmup_fraction}")

    def check_space(self, space: PoolingSpace) -> None:
        if self.num_supernets > len(space):
            raise ValueError(
                f"mixture 'num_supernets' (M): {self.num_supernets} supernets for {len(space)} configurations; "
                f"expected at most {len(space)}"
            )

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "mixture config") -> MixtureConfig:
        return records.from_json(cls, data, where)


# ----------------------------------------------------------------------------- pure maths
def softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def kl_to_uniform(marginal: np.ndarray) -> float:
    m = len(marginal)
    p = np.clip(marginal, 1e-300, None)
    return float(np.sum(p * np.log(p * m)))


def balance_factors(p: np.ndarray, tol: float = 1e-4, max_iter: int = 10_000) -> np.ndarray:
    """Per-supernet factors f such that rows of ``p * f`` (renormalised) have a uniform marginal.

    Iterative proportional fitting as the BMS code does it: divide every column by its share of
    the mass, renormalise the rows, repeat until KL(marginal || uniform) < ``tol``.
    """
    p = np.asarray(p, dtype=np.float64)
    factors = np.ones(p.shape[1])
    q = p.copy()
    for _ in range(max_iter):
        marginal = q.mean(axis=0)
        if kl_to_uniform(marginal) < tol:
            return factors
        factors = factors / marginal
        q = q / marginal
        q = q / q.sum(axis=1, keepdims=True)
    raise RuntimeError(f"balancing did not reach KL < {tol} in {max_iter} iterations")


def apply_factors(p: np.ndarray, factors: np.ndarray) -> np.ndarray:
    q = p * factors
    return q / q.sum(axis=1, keepdims=True)


def temperature_at(epoch: int, epochs: int, t_max: float) -> float:
    """Linear from 1 (first epoch) to ``t_max`` (last epoch)."""
    if epochs <= 1:
        return float(t_max)
    return 1.0 + (t_max - 1.0) * epoch / (epochs - 1)


def balanced_partition(similarity: np.ndarray, num_groups: int) -> list[int]:
    """Split items into ``num_groups`` groups of (near) equal size with high within-group
    similarity: seed each group with mutually dissimilar items, then assign greedily."""
    n = similarity.shape[0]
    capacity = [n // num_groups + (1 if g < n % num_groups else 0) for g in range(num_groups)]
    seeds = [int(np.argmin(similarity.sum(axis=1)))]
    while len(seeds) < num_groups:
        closeness = similarity[:, seeds].max(axis=1)
        closeness[seeds] = np.inf
        seeds.append(int(np.argmin(closeness)))
    group = [-1] * n
    members: list[list[int]] = [[s] for s in seeds]
    for g, s in enumerate(seeds):
        group[s] = g
    # Most decided items first: those whose best group beats their second best by the most.
    remaining = [i for i in range(n) if group[i] < 0]
    while remaining:
        best: tuple[float, int, int] | None = None  # (margin, item, group)
        for i in remaining:
            scores = sorted(
                ((float(np.mean(similarity[i, members[g]])), g)
                 for g in range(num_groups) if len(members[g]) < capacity[g]),
                reverse=True,
            )
            margin = scores[0][0] - (scores[1][0] if len(scores) > 1 else -np.inf)
            if best is None or margin > best[0]:
                best = (margin, i, scores[0][1])
        assert best is not None  # remaining is not empty
        _, i, g = best
        group[i] = g
        members[g].append(i)
        remaining.remove(i)
    return group


# ----------------------------------------------------------------------------- the mixture
class MixtureOfSuperNets(nn.Module):
    """M pooling supernets plus the score matrix that assigns configurations to them.

    ``set_active(config)`` picks the configuration's most likely supernet (or ``member``) and
    activates the path there; ``forward`` and ``export_active`` then act like a single
    supernet's, so evaluation and export code serve both.
    """

    # buffers, registered in __init__
    scores: torch.Tensor
    factors: torch.Tensor
    temperature: torch.Tensor
    fixed_group: torch.Tensor

    def __init__(self, space: PoolingSpace, spec: ModelSpec, cfg: MixtureConfig) -> None:
        super().__init__()
        cfg.check_space(space)
        self.space, self.spec, self.cfg = space, spec, cfg
        self.supernets = nn.ModuleList([PoolingSuperNet(space, spec) for _ in range(cfg.num_supernets)])
        self.register_buffer("scores", torch.ones(len(space), cfg.num_supernets, dtype=torch.float64))
        self.register_buffer("factors", torch.ones(cfg.num_supernets, dtype=torch.float64))
        self.register_buffer("temperature", torch.tensor(1.0, dtype=torch.float64))
        # -1 = learned (BMS); otherwise the fixed group of each configuration (GM split).
        self.register_buffer("fixed_group", torch.full((len(space),), -1, dtype=torch.long))
        self.active_member = 0
        # Supernet chosen per configuration index by evaluation (overrides the assignment).
        self.selected: dict[int, int] = {}

    @property
    def num_supernets(self) -> int:
        return len(self.supernets)

    def supernet(self, index: int) -> PoolingSuperNet:
        """Supernet ``index`` (``supernets[index]``), typed."""
        return cast(PoolingSuperNet, self.supernets[index])  # __init__ fills supernets with PoolingSuperNet

    @property
    def active(self) -> PoolingConfig | None:
        return self.supernet(self.active_member).active

    def raw_assignment(self) -> np.ndarray:
        return softmax_rows(self.temperature.item() * self.scores.cpu().numpy())

    def assignment(self) -> np.ndarray:
        """Balanced p(m|c), configurations x M (one-hot rows for fixed groups)."""
        if int(self.fixed_group[0]) >= 0:
            return np.eye(self.num_supernets)[self.fixed_group.cpu().numpy()]
        return apply_factors(self.raw_assignment(), self.factors.cpu().numpy())

    def rebalance(self, temperature: float) -> float:
        """Set the temperature and recompute the balancing factors; returns KL after balancing."""
        self.temperature.fill_(temperature)
        p = self.raw_assignment()
        factors = balance_factors(p, self.cfg.balance_tol)
        self.factors.copy_(torch.from_numpy(factors))
        return kl_to_uniform(apply_factors(p, factors).mean(axis=0))

    def member_of(self, config: PoolingConfig) -> int:
        index = self.space.index(config)
        if index in self.selected:
            return self.selected[index]
        return int(np.argmax(self.assignment()[index]))

    def set_active(self, config: PoolingConfig, member: int | None = None) -> None:
        self.active_member = self.member_of(config) if member is None else member
        self.supernet(self.active_member).set_active(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(self.active_member)(x)

    def export_active(self, preserve_weight: bool = True) -> nn.Module:
        return self.supernet(self.active_member).export_active(preserve_weight)

    def update_score(self, config: PoolingConfig, member: int, accuracy: float) -> None:
        i = self.space.index(config)
        self.scores[i, member] = self.cfg.ema * self.scores[i, member] + (1 - self.cfg.ema) * accuracy


# ----------------------------------------------------------------------------- training
def validation_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool) -> float:
    """Accuracy (fraction) of one validation batch, with batch statistics and no side effects."""
    model.eval()
    with torch.no_grad(), batch_statistics(model), autocast(x.device, amp):
        return float((model(x).argmax(1) == y).float().mean())


def _cycle(
    batches: Batches, batch_size: int, seed: int, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches.iterate(batch_size, epoch_generator(seed, epoch, stream=2), drop_last=True)
        epoch += 10_000  # a fresh order each pass, still a pure function of the seed


def gradient_similarity(supernet: PoolingSuperNet, space: PoolingSpace, batches: Batches,
                        batch_size: int, num_batches: int, seed: int) -> np.ndarray:
    """GM-NAS's criterion: cosine similarity of each configuration's loss gradient on the
    shared weights, averaged over ``num_batches`` minibatches (the same batches for all)."""
    params = [p for p in supernet.parameters() if p.requires_grad]
    data = list(itertools.islice(batches.iterate(batch_size, epoch_generator(seed, 0, stream=3), drop_last=True),
                                 num_batches))
    grads = []
    supernet.train()
    for config in space:
        supernet.set_active(config)
        total: torch.Tensor | None = None
        for x, y in data:
            loss = nn.functional.cross_entropy(supernet(x), y)
            # a weight this configuration does not use (in a sliced supernet, a projection
            # shortcut where it keeps the width) has a zero gradient
            grad = torch.autograd.grad(loss, params, allow_unused=True)
            g = torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for p, t in zip(params, grad)])
            total = g if total is None else total + g
        if total is None:
            raise ValueError("gradient similarity: no full training batch (check gm_batches and batch_size)")
        grads.append(total / len(data))
    g = torch.nn.functional.normalize(torch.stack(grads).double(), dim=1)
    return (g @ g.T).cpu().numpy()


def train_mixture(
    mixture: MixtureOfSuperNets,
    train_data: ImageSplit,
    val_data: ImageSplit,
    cfg: TrainConfig,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainHistory:
    """Train the mixture; with M = 1 the supernet's weights follow :func:`supernet.training.train`
    step for step (same sampled paths, batches and learning rates).

    The epochs run in :func:`stitchnas.core.training.fit` (checkpoint after every epoch at
    ``checkpoint_path``, resumed with ``resume``; ``on_step(global_step)`` after every step).

    Raises:
        TrainingDiverged: A step's loss is not finite (the last finite checkpoint is kept).
        ValueError: ``checkpoint_path`` holds a checkpoint of a different recipe (when resuming).
    """
    device = resolve_device(cfg.device)
    mixture.to(device)
    mcfg = mixture.cfg
    optimizers = [build_optimizer(s.parameters(), cfg) for s in mixture.supernets]
    train_batches, val_batches = batches_for(train_data, device), batches_for(val_data, device)
    steps_per_epoch = train_batches.num_batches(cfg.batch_size, drop_last=True)
    total_steps = cfg.epochs * steps_per_epoch
    gm_epoch = (max(1, round(cfg.epochs * mcfg.gm_warmup_fraction))
                if mcfg.grouping == "gm" and mixture.num_supernets > 1 else None)
    checkpoint = EpochCheckpoint(Path(checkpoint_path) if checkpoint_path is not None else None,
                                 {"train_config": cfg.to_json(), "mixture_config": mcfg.to_json()}, "mixture")

    def run_epoch(epoch: Epoch) -> dict[str, Any]:
        e = epoch.index
        if gm_epoch is not None and e == gm_epoch and int(mixture.fixed_group[0]) < 0:
            _split_by_gradients(mixture, train_batches, cfg)
            for opt in optimizers[1:]:
                opt.load_state_dict(optimizers[0].state_dict())
        warmup = gm_epoch is not None and e < gm_epoch
        kl = mixture.rebalance(temperature_at(e, cfg.epochs, mcfg.t_max)) if mcfg.grouping == "bms" else 0.0
        path_rng, member_rng = epoch.rng(), epoch.rng(stream=1)
        val_iter = _cycle(val_batches, mcfg.score_batch_size or cfg.batch_size, cfg.seed, e)
        assignment = mixture.assignment()
        loss_sum, seen, counts = 0.0, 0, np.zeros(mixture.num_supernets, dtype=int)
        # training batches are augmented (cfg.augment); the scoring batches (val_iter) never are
        batch_iter = train_batches.iterate(cfg.batch_size, epoch.generator(), drop_last=True, augment=cfg.augment,
                                           aug_generator=epoch.generator(AUGMENT_STREAM))
        for i, (x, y) in enumerate(batch_iter):
            config = mixture.space.sample(path_rng)
            row = assignment[mixture.space.index(config)]
            # With one supernet (or during a GM warm-up) no draw is made, so M = 1 consumes the
            # same random numbers as the single-supernet trainer.
            member = (0 if warmup or mixture.num_supernets == 1
                      else int(member_rng.choices(range(len(row)), weights=row)[0]))
            mixture.set_active(config, member)
            lr = cosine_lr(cfg, e * steps_per_epoch + i, total_steps)
            loss, _ = sgd_step(mixture.supernets[member], x, y, optimizers[member], lr, cfg.amp)
            if mcfg.grouping == "bms" and mixture.num_supernets > 1:
                vx, vy = next(val_iter)
                mixture.update_score(config, member, validation_accuracy(mixture.supernets[member], vx, vy, cfg.amp))
            loss_sum, seen = loss_sum + loss * len(y), seen + len(y)
            counts[member] += 1
            epoch.step(loss)
        return {"epoch": e + 1, "loss": loss_sum / max(1, seen), "temperature": float(mixture.temperature),
                "balance_kl": kl, "steps_per_supernet": counts.tolist()}

    options = FitOptions(cfg.epochs, steps_per_epoch, cfg.seed, desc=f"mixture M={mixture.num_supernets}",
                         progress=progress, resume=resume, postfix=_postfix)
    history = fit(run_epoch, mixture, optimizers, checkpoint, options, on_step)
    # Final balance at the last temperature: the assignment used for selection and export.
    if mcfg.grouping == "bms":
        mixture.rebalance(temperature_at(cfg.epochs - 1, cfg.epochs, mcfg.t_max))
    return history


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    return {"loss": f"{record['loss']:.3f}", "T": f"{record['temperature']:.0f}"}


def _split_by_gradients(mixture: MixtureOfSuperNets, batches: Batches, cfg: TrainConfig) -> None:
    """GM-style split: groups from gradient similarity; every supernet starts from the warm-up
    weights (Few-Shot NAS initialises sub-supernets from the one-shot supernet)."""
    shared = mixture.supernet(0)
    sim = gradient_similarity(shared, mixture.space, batches, cfg.batch_size, mixture.cfg.gm_batches, cfg.seed)
    groups = balanced_partition(sim, mixture.num_supernets)
    mixture.fixed_group.copy_(torch.tensor(groups, dtype=torch.long))
    for other in mixture.supernets[1:]:
        other.load_state_dict(shared.state_dict())
    log.info("GM split: group sizes %s", np.bincount(groups, minlength=mixture.num_supernets).tolist())


def grouping_entropy(p: np.ndarray) -> float:
    """Mean row entropy of an assignment in nats (0 = one-hot, log M = uniform)."""
    q = np.clip(p, 1e-300, None)
    return float(-(q * np.log(q)).sum(axis=1).mean()) if len(p) else math.nan

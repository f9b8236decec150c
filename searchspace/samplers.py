"""Configuration samplers for supernet training: draw one configuration id per step.

* :class:`UniformSampler`: every configuration equally likely (SN-Net).
* :class:`FlopsGroupedSampler`: SN-Netv2's resource-constrained sampling, ROS (He et al.,
  "Stitched ViTs are Flexible Vision Backbones", arXiv 2307.00154; ziplab/SN-Netv2
  ``group_subnets_by_flops``, ``sampling_stitch_config`` and ``--flops_sampling_k``): sort
  configurations by FLOPs, group those within ``gap`` of their group's first member, draw a
  group, then a member of it uniformly. With DeiT3-S/L and a 1 GFLOP gap that gives 13 groups,
  so each anchor is drawn with p = 1/13 instead of 1/134.

A sampler has one job (Optuna-style): ``sample(rng)`` returns a configuration id using the
caller's seeded :class:`random.Random`; ``probabilities()`` gives the exact distribution it
draws from. Pure Python: no torch here.
"""

from __future__ import annotations

import abc
import bisect
import math
import numbers
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

Weighting = Literal["uniform", "linear"]


class ConfigSampler(abc.ABC):
    """Draws configuration ids ``0..num_configs - 1`` (subclasses expose ``num_configs``)."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> int:
        """One configuration id, drawn with ``rng``."""

    @abc.abstractmethod
    def probabilities(self) -> tuple[float, ...]:
        """Exact probability of drawing each id (sums to 1)."""


@dataclass(frozen=True)
class UniformSampler(ConfigSampler):
    """Every id in ``0..num_configs - 1`` with probability ``1 / num_configs``."""

    num_configs: int

    def __post_init__(self) -> None:
        n = self.num_configs
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"uniform sampler 'num_configs': expected a positive int, got {n!r}")

    def sample(self, rng: random.Random) -> int:
        return rng.randrange(self.num_configs)

    def probabilities(self) -> tuple[float, ...]:
        return (1.0 / self.num_configs,) * self.num_configs


def _is_real(value: object) -> bool:
    """A real number (numpy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def group_by_flops(flops: Sequence[float], gap: float) -> tuple[tuple[int, ...], ...]:
    """Ids grouped by FLOPs: sort ascending (ties by id); a configuration opens a new group when
    its FLOPs exceed the current group's first member's by more than ``gap``. Groups come in
    ascending-FLOPs order, members in ascending-FLOPs order (ties by id).

    SN-Netv2 starts its first group at a virtual 0 FLOPs instead of at the cheapest
    configuration; the two agree whenever the cheapest configuration costs more than ``gap``.
    """
    if not _is_real(gap) or not 0 < gap < math.inf:
        raise ValueError(f"flops grouping 'gap': expected a finite number > 0, got {gap!r}")
    values = list(flops)
    if not values:
        raise ValueError("flops grouping 'flops': expected at least one configuration, got none")
    for i, v in enumerate(values):
        if not _is_real(v) or not 0 <= v < math.inf:
            raise ValueError(f"flops grouping 'flops[{i}]': expected a finite number >= 0, got {v!r}")
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and values[i] - values[groups[-1][0]] <= gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return tuple(tuple(g) for g in groups)


@dataclass(frozen=True)
class FlopsGroupedSampler(ConfigSampler):
    """Resource-constrained sampling (SN-Netv2's ROS).

    Args:
        flops: FLOPs of every configuration, indexed by id (any unit; ``gap`` uses the same).
        gap: grouping threshold (SN-Netv2: 1 GFLOP for ImageNet, 10 for segmentation).
        weighting: how groups are drawn. ``"uniform"``: ``p_g = 1 / G``. ``"linear"``
            (SN-Netv2's ``--flops_sampling_k``): group ``g = 0..G-1`` in ascending-FLOPs order
            gets weight ``w_g = g / k + 1 / G`` and ``p_g = w_g / sum(w)``, so heavier groups are
            drawn more often and a larger ``k`` flattens the tilt toward uniform.
        k: the linear weighting's ``flops_sampling_k`` (> 0); ignored by ``"uniform"``.

    A configuration ``c`` in group ``g`` is drawn with probability ``p_g / |group g|``.
    """

    flops: tuple[float, ...]
    gap: float
    weighting: Weighting = "uniform"
    k: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops", tuple(self.flops))
        if self.weighting not in ("uniform", "linear"):
            raise ValueError(
                f"flops sampler 'weighting': expected 'uniform' or 'linear', got {self.weighting!r}"
            )
        if not _is_real(self.k) or not 0 < self.k < math.inf:
            raise ValueError(f"flops sampler 'k': expected a finite number > 0, got {self.k!r}")
        _ = self._groups  # validates flops and gap now, not at the first draw

    @cached_property
    def _groups(self) -> tuple[tuple[int, ...], ...]:
        return group_by_flops(self.flops, self.gap)

    @property
    def num_configs(self) -> int:
        """How many configurations the sampler draws from."""
        return len(self.flops)

    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Configuration ids per group (see :func:`group_by_flops`)."""
        return self._groups

    def group_probabilities(self) -> tuple[float, ...]:
        """Probability of drawing each group."""
        num = len(self._groups)
        if self.weighting == "uniform":
            return (1.0 / num,) * num
        weights = [g / self.k + 1.0 / num for g in range(num)]
        total = sum(weights)
        return tuple(w / total for w in weights)

    @cached_property
    def _cumulative(self) -> tuple[float, ...]:
        sums, acc = [], 0.0
        for p in self.group_probabilities():
            acc += p
            sums.append(acc)
        return tuple(sums)

    def probabilities(self) -> tuple[float, ...]:
        probs = [0.0] * len(self.flops)
        for group, p in zip(self._groups, self.group_probabilities()):
            for i in group:
                probs[i] = p / len(group)
        return tuple(probs)

    def sample(self, rng: random.Random) -> int:
        if self.weighting == "uniform":
            group = self._groups[rng.randrange(len(self._groups))]
        else:
            cum = self._cumulative
            group = self._groups[min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(cum) - 1)]
        return group[rng.randrange(len(group))]


__all__ = ["ConfigSampler", "FlopsGroupedSampler", "UniformSampler", "Weighting", "group_by_flops"]

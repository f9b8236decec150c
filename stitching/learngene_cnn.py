"""Learngene Pool with a CNN teacher: the ResNet pieces of :mod:`stitching.learngene`.

Learngene Pool (AAAI 2024, arXiv 2312.05743; PyTorch code ZhenuYang/Yuanmou
``learngene_methods/learngene_pool``) distils a DeiT-B into ViT students. This module carries
the method over, piece by piece, to a ResNet teacher (any anchor of :mod:`stitching.cnn`, e.g.
timm's ``resnet18/34/50`` loaded from a timm checkpoint with a new head and adapted input
channels); :mod:`stitching.learngene` dispatches to it on the teacher's ``family``.

* **Students** (:class:`ResNetStudentSpec`): the teacher's ResNet (same stem, block type,
  input, classes) with other stage widths and fewer blocks per stage. Defaults
  (:func:`default_resnet_students`), as the ViT's: ``tiny`` at half the teacher's width in
  every stage, ``base`` at the teacher's widths; each stage keeps half its blocks rounded up,
  but at least ``min(2, teacher's)``. SN-Net stitches a CNN inside a stage only (its README:
  "stitch within a stage"; :mod:`searchspace.stitch`), and a one-block stage has no position
  past its first block, so with one block per stage a resnet18 pool would hold 3 descendants.
  resnet18 ``[2, 2, 2, 2]`` keeps ``[2, 2, 2, 2]`` (its students are narrower, not shallower);
  resnet34/50 ``[3, 4, 6, 3]`` become ``[2, 2, 3, 2]``: 9 blocks, the official 9-block count.
* **Matched blocks** (:func:`stitching.learngene.stage_matched_blocks`): pairs at the same
  spatial resolution. Teacher and student share the stem and the stride schedule, so two
  blocks of the same stage share it. The default rule ``stages`` matches the last block of
  every stage: the ViT's ``front_end`` takes evenly spaced blocks ending at the last one, and a
  ResNet's stage ends are the last point at each resolution, where CNN feature distillation
  usually places its losses (e.g. Heo et al., "A Comprehensive Overhaul of Feature
  Distillation", ICCV 2019, arXiv 1904.01866: one per stage).
* **Transformation matrices** (:class:`ConvTransformationMatrices`): ``P_m`` is a bias-free
  1x1 convolution ``teacher_channels -> student_channels`` at the pair's stage, started
  orthogonal (identity when the widths agree) as the ViT matrices; the MSE compares the
  ``(N, C, H, W)`` feature maps, averaged over every element.
* **Stitch init** (:func:`init_conv_stitches_from_matrices`): the ViT rule per stage. A
  stitching layer inside stage ``s`` from student ``a`` to student ``b`` gets, with ``A`` the
  mean of ``a``'s matrices at stage ``s`` (shape ``(C_a, C_t)``): weight ``A^T`` (a 1x1
  convolution ``C_a -> C_t``) when the layer's output width is the teacher's ``C_t``, else
  ``B A^T`` with ``B`` the mean of ``b``'s matrices at stage ``s``; bias 0. A layer with no such
  matrices (a stage without a matched pair, e.g. rule ``end``; or a bottleneck student's block
  0, entered at its stem's width, which no matrix maps to) is returned by name, and the pool
  gives it SN-Net's least-squares init instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from stitching.cnn import RESNET_FAMILY, ResNetAnchor
from stitching.snnet import SNNet
from stitchnas.core import records

_EXPANSION = {"basic": 1, "bottleneck": 4}


def _positive_ints(values: Any) -> bool:
    return isinstance(values, tuple) and bool(values) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)


@dataclass(frozen=True)
class ResNetStudentSpec:
    """An auxiliary student of a ResNet teacher: one width and one block count per stage.

    ``widths`` are the stages' base widths as :class:`~stitching.cnn.ResNetAnchor` takes them
    (a bottleneck stage outputs 4x its width).
    """

    name: str
    widths: tuple[int, ...]
    stage_depths: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"student 'name': expected a non-empty [A-Za-z0-9_] name, got {self.name!r}")
        for key in ("widths", "stage_depths"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, value := tuple(value))
            if not _positive_ints(value):
                raise ValueError(f"student {self.name!r} '{key}': expected positive ints, one per stage, got {value!r}")
        if len(self.widths) != len(self.stage_depths):
            raise ValueError(f"student {self.name!r}: {len(self.widths)} widths but {len(self.stage_depths)} "
                             "stage depths (expected one of each per stage)")

    @property
    def depth(self) -> int:
        """Blocks in all."""
        return sum(self.stage_depths)

    @property
    def width(self) -> int:
        """The last stage's width, what orders students narrow -> wide."""
        return self.widths[-1]

    @classmethod
    def parse(cls, text: str) -> ResNetStudentSpec:
        """``NAME:WIDTHS:STAGE_DEPTHS``, e.g. ``tiny:32,64,128,256:2,2,2,2``."""
        parts = text.split(":")
        lists = [p.split(",") for p in parts[1:]]
        if len(parts) != 3 or not all(v.strip().isdigit() for items in lists for v in items):
            raise ValueError(f"student {text!r}: expected NAME:WIDTHS:STAGE_DEPTHS for a ResNet teacher, "
                             "e.g. tiny:32,64,128,256:2,2,2,2")
        return cls(parts[0], tuple(int(v) for v in lists[0]), tuple(int(v) for v in lists[1]))

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "student") -> ResNetStudentSpec:
        return records.from_json(cls, data, where)


def resnet_block_dims(config: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per block of a ResNet ``config`` (without building it): its stage and output channels."""
    expansion = _EXPANSION[config.get("block", "basic")]
    stages = tuple(s for s, n in enumerate(config["stage_depths"]) for _ in range(n))
    return stages, tuple(config["widths"][s] * expansion for s in stages)


def resnet_student_config(teacher_config: dict[str, Any], spec: ResNetStudentSpec) -> dict[str, Any]:
    """The teacher's constructor config with the student's stage widths and depths.

    Raises:
        ValueError: Another stage count, a stage wider than the teacher's, or deeper.
    """
    t_widths, t_depths = list(teacher_config["widths"]), list(teacher_config["stage_depths"])
    if len(spec.widths) != len(t_widths):
        raise ValueError(f"student {spec.name!r} 'widths': {len(spec.widths)} stages, the teacher has "
                         f"{len(t_widths)} (expected one width and one depth per teacher stage)")
    for stage, (w, d, tw, td) in enumerate(zip(spec.widths, spec.stage_depths, t_widths, t_depths)):
        if w > tw:
            raise ValueError(
                f"student {spec.name!r} 'widths': stage {stage} width {w} is wider than the teacher's {tw} "
                f"(teacher features are projected down to the student, expected <= {tw})")
        if d > td:
            raise ValueError(f"student {spec.name!r} 'stage_depths': stage {stage} has {d} blocks, "
                             f"expected <= the teacher's {td}")
    return {**teacher_config, "widths": list(spec.widths), "stage_depths": list(spec.stage_depths)}


def default_resnet_students(
    teacher_config: dict[str, Any], stage_depths: Sequence[int] | None = None
) -> tuple[ResNetStudentSpec, ResNetStudentSpec]:
    """``tiny`` (every stage at half the teacher's width) and ``base`` (the teacher's widths),
    both with ``stage_depths`` or, by default, ``max(ceil(d / 2), min(d, 2))`` blocks for a
    teacher stage of ``d`` (module docstring)."""
    widths = tuple(teacher_config["widths"])
    depths = tuple(stage_depths) if stage_depths is not None else tuple(
        max((d + 1) // 2, min(d, 2)) for d in teacher_config["stage_depths"])
    return (ResNetStudentSpec("tiny", tuple(max(1, w // 2) for w in widths), depths),
            ResNetStudentSpec("base", widths, depths))


class ConvTransformationMatrices(nn.Module):
    """One learnable bias-free 1x1 convolution ``teacher_channels -> student_channels`` per
    matched pair (the CNN form of :class:`stitching.learngene.TransformationMatrices`).

    Args:
        dims: ``(teacher_channels, student_channels)`` of every matched pair.
        stages: The stage of every matched pair (the resolution it lives at).
    """

    def __init__(self, dims: Sequence[tuple[int, int]], stages: Sequence[int]) -> None:
        super().__init__()
        if not dims or len(dims) != len(stages):
            raise ValueError(f"transformation matrices: expected one stage per matched pair (>= 1), got "
                             f"{len(dims)} pairs and {len(stages)} stages")
        self.dims, self.stages = tuple(dims), tuple(stages)
        maps = [nn.Conv2d(t, s, 1, bias=False) for t, s in dims]
        self.maps = nn.ModuleList(maps)
        with torch.no_grad():
            for m, (t, s) in zip(maps, dims):
                if t == s:
                    m.weight.copy_(torch.eye(t).reshape(t, t, 1, 1))
                else:
                    nn.init.orthogonal_(m.weight)  # (s, t, 1, 1) viewed as (s, t): orthonormal rows

    def forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Map a teacher feature map ``(N, C_t, H, W)`` to ``(N, C_s, H, W)`` with pair ``index``'s matrix."""
        return self.maps[index](x)

    def weight(self, index: int) -> torch.Tensor:
        """Pair ``index``'s matrix as ``(student_channels, teacher_channels)``."""
        w = cast(nn.Conv2d, self.maps[index]).weight  # maps holds 1x1 nn.Conv2d only
        return w.reshape(w.shape[0], w.shape[1])

    def stage_mean(self, stage: int) -> torch.Tensor | None:
        """The mean matrix of the pairs at ``stage``, ``(student_channels, teacher_channels)``;
        None when no pair is there."""
        mats = [self.weight(i) for i, s in enumerate(self.stages) if s == stage]
        return torch.stack(mats).mean(0) if mats else None


def resnet_matrices(
    teacher_config: dict[str, Any], student: ResNetAnchor, pairs: Sequence[tuple[int, int]]
) -> ConvTransformationMatrices:
    """The matrices of ``student`` for its matched ``(teacher block, student block)`` pairs."""
    _, t_out = resnet_block_dims(teacher_config)
    dims = [(t_out[t], student.feature_dims[s + 1]) for t, s in pairs]
    return ConvTransformationMatrices(dims, [student.block_stages[s] for _, s in pairs])


def conv_matrix_stitch_weight(
    front: ConvTransformationMatrices, end: ConvTransformationMatrices, stage: int, in_dim: int, out_dim: int
) -> torch.Tensor | None:
    """The ``(out_dim, in_dim)`` weight of a stitching layer inside ``stage`` (module
    docstring), or None when the matrices do not define it."""
    a = front.stage_mean(stage)
    if a is None or a.shape[0] != in_dim:
        return None
    back_to_teacher = a.detach().T  # (C_t, C_a)
    if out_dim == back_to_teacher.shape[0]:
        return back_to_teacher.clone()
    b = end.stage_mean(stage)
    if b is None or tuple(b.shape) != (out_dim, back_to_teacher.shape[0]):
        return None
    return b.detach() @ back_to_teacher


@torch.no_grad()
def init_conv_stitches_from_matrices(pool: SNNet, matrices: Sequence[ConvTransformationMatrices]) -> list[str]:
    """Set every stitching layer of a pool of ResNet students from their matrices (same order
    as the pool's anchors), biases zeroed.

    Returns:
        The keys (in ``pool.stitch_layers``) of the layers the matrices do not define, left
        as they were (the caller fits them by least squares).
    """
    keys = {id(layer): key for key, layer in pool.stitch_layers.items()}
    block_stage = [tuple(s for s, n in enumerate(pool.anchor(i).stage_depths) for _ in range(n))
                   for i in range(pool.space.num_anchors)]
    weights: dict[str, torch.Tensor | None] = {}
    for spec in pool.space.stitching_layers():
        a, b = spec.in_anchor, spec.out_anchor
        for j, k in spec.positions:  # a window lies inside one stage (searchspace.stitch.staged_stitching)
            layer = pool.stitching_layer(a, b, spec.window, (j, k))
            key = keys[id(layer)]
            if key in weights:
                continue
            weights[key] = conv_matrix_stitch_weight(matrices[a], matrices[b], block_stage[a][j], layer.in_dim,
                                                     layer.out_dim)
            weight = weights[key]
            if weight is not None:
                layer.set_weight_bias(weight, torch.zeros(weight.shape[0]))
    return sorted(key for key, w in weights.items() if w is None)


__all__ = [
    "ConvTransformationMatrices", "RESNET_FAMILY", "ResNetStudentSpec", "conv_matrix_stitch_weight",
    "default_resnet_students", "init_conv_stitches_from_matrices", "resnet_block_dims", "resnet_matrices",
    "resnet_student_config",
]

"""Learngene Pool ("Building Variable-sized Models via Learngene Pool", AAAI 2024, arXiv
2312.05743; PyTorch code in ZhenuYang/Yuanmou ``learngene_methods/learngene_pool``).

One large ViT (the teacher) is distilled into *auxiliary students*: ViTs with fewer blocks
at two or more widths. Their blocks are the learngene instances; *descendants* are built by
SN-Net paired stitching between the narrow and the wide student (both students plus the
narrow -> wide stitches), so a pool can offer models smaller than any anchor of the
teacher's own family. This module holds the pieces; training lives in
:mod:`stitching.learngene_train`, the pipeline in :mod:`stitchnas.methods.learngene`.

Distillation loss of one student (official ``train_one_epoch_distill``, ``distill_loss='all'``
without the attention term)::

    loss = alpha * CE(student, labels)
         + (1 - alpha) * (softCE(student / T, teacher / T) + sum_m MSE(h_s[m], P_m h_t[m]))

``softCE`` is ``-sum_c softmax(teacher/T)_c * log_softmax(student/T)_c`` averaged over the
batch (the official code also averages over classes, i.e. divides ours by the class count,
and uses no ``T^2``). ``m`` runs over matched (teacher block, student block) pairs, ``h`` are
raw block outputs (before the final norm) and ``P_m`` is a learnable teacher_dim -> student_dim
*transformation matrix*, one per matched pair. Our matrices have no bias (the official
``nn.Linear`` has one that its stitch initialisation ignores) and start orthogonal (identity
for a student as wide as the teacher), so that ``P^T P`` is a projection and the transposed
map used below keeps feature scale. (In the official code the matrices never reach the
optimizer, which is built from the student alone, so they stay at their random init; here
they are trained, without weight decay.)

Stitch initialisation from the matrices (official ``initialize_stitching_weights(mode='ours')``):
for a stitching layer from student ``a`` (width ``d_a``) to student ``b`` (width ``d_b``) let
``A`` be the mean of ``a``'s matrices, shape ``(d_a, D)`` with ``D`` the teacher width. Since
``h_a ~ h_t A^T``, the transpose ``A^T`` (shape ``(D, d_a)``, as an ``nn.Linear`` weight: ``d_a``
in, ``D`` out) maps ``a``'s features back to teacher width. Then

* ``d_b == D`` (the official tiny -> base case, base as wide as DeiT-B): weight ``= A^T``
  exactly, bias ``= 0``. The wide student's own matrices are not used, as in the official
  code: it is taken to live in the teacher's feature space.
* ``d_b < D``: weight ``= B A^T`` with ``B`` the mean of ``b``'s matrices (teacher width ->
  ``d_b``), bias ``= 0`` -- the composition in the official code's commented-out tiny -> small
  branch.

Every window of the pair gets the same weights. The official code leaves the bias at
``nn.Linear``'s random init; we zero it so the init is deterministic. SN-Net's least-squares
init (:meth:`~stitching.snnet.SNNet.init_stitching_layers`) remains available as the ablation.

A ResNet teacher (any anchor of :mod:`stitching.cnn`, e.g. timm's ``resnet18/34/50``) gets the
same method with CNN students (:class:`~stitching.learngene_cnn.ResNetStudentSpec`), blocks
matched at the same resolution (rule ``stages``, :func:`stage_matched_blocks`), 1x1
convolutions as the matrices and the stitch init per stage: :mod:`stitching.learngene_cnn`.
The functions here dispatch on the teacher config's ``family``; the ViT path is as above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from searchspace.stitch import StitchSpace
from stitching.cnn import RESNET_FAMILY, ResNetAnchor
from stitching.learngene_cnn import (
    ConvTransformationMatrices,
    ResNetStudentSpec,
    default_resnet_students,
    init_conv_stitches_from_matrices,
    resnet_matrices,
    resnet_student_config,
)
from stitching.snnet import AnchorModel, SNNet, anchor_space, build_anchor
from stitching.vit import VIT_FAMILY
from stitchnas.core import records

POOL_SPACE_NAME = "learngene_pool"
MatchRule = Literal["end", "front_end", "stages"]
Matches = str | tuple[tuple[int, int], ...]
MATCH_RULES: tuple[str, ...] = ("end", "front_end", "stages")
#: Teacher kinds (the anchor config's ``family``) Learngene Pool distils.
TEACHER_FAMILIES: tuple[str, ...] = (RESNET_FAMILY, VIT_FAMILY)


# --------------------------------------------------------------------------- students
@dataclass(frozen=True)
class StudentSpec:
    """An auxiliary student: the teacher's architecture at another width and depth."""

    name: str
    embed_dim: int
    num_heads: int
    depth: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"student 'name': expected a non-empty [A-Za-z0-9_] name, got {self.name!r}")
        for key in ("embed_dim", "num_heads", "depth"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"student {self.name!r} '{key}': expected a positive int, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"student {self.name!r} 'num_heads': {self.num_heads} does not divide embed_dim {self.embed_dim}"
            )

    @property
    def width(self) -> int:
        """``embed_dim``, what orders students narrow -> wide."""
        return self.embed_dim

    @classmethod
    def parse(cls, text: str) -> StudentSpec:
        """``NAME:DIM:HEADS:DEPTH``, e.g. ``tiny:32:2:6``."""
        parts = text.split(":")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts[1:]):
            raise ValueError(f"student {text!r}: expected NAME:DIM:HEADS:DEPTH, e.g. tiny:32:2:6")
        return cls(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "student") -> StudentSpec:
        return records.from_json(cls, data, where)


#: A student of a ViT teacher or of a ResNet teacher.
AnyStudentSpec = StudentSpec | ResNetStudentSpec


def check_teacher_kind(teacher_config: Any, where: str = "") -> str:
    """The teacher's family, ``'vit'`` or ``'resnet'`` (:data:`TEACHER_FAMILIES`).

    Raises:
        ValueError: One line naming ``where`` (the teacher's file) and the unsupported kind.
    """
    family = teacher_config.get("family") if isinstance(teacher_config, dict) else type(teacher_config).__name__
    if family not in TEACHER_FAMILIES:
        at = f" {where}" if where else ""
        raise ValueError(f"learngene teacher{at}: kind {family!r} is not supported, expected one of "
                         f"{list(TEACHER_FAMILIES)} (a ViT or a ResNet anchor)")
    return str(family)


def _is_vit(teacher_config: dict[str, Any]) -> bool:
    return check_teacher_kind(teacher_config) == VIT_FAMILY


def _spec_kind_error(teacher_config: dict[str, Any], spec: Any) -> ValueError:
    want = "NAME:DIM:HEADS:DEPTH" if _is_vit(teacher_config) else "NAME:WIDTHS:STAGE_DEPTHS"
    return ValueError(f"student {getattr(spec, 'name', spec)!r}: a {type(spec).__name__} does not fit a "
                      f"{teacher_config['family']!r} teacher (expected {want})")


def student_config(teacher_config: dict[str, Any], spec: AnyStudentSpec) -> dict[str, Any]:
    """The teacher's constructor config with the student's width, heads and depth (a ResNet
    teacher: stage widths and depths, :func:`~stitching.learngene_cnn.resnet_student_config`)."""
    if not _is_vit(teacher_config):
        if not isinstance(spec, ResNetStudentSpec):
            raise _spec_kind_error(teacher_config, spec)
        return resnet_student_config(teacher_config, spec)
    if not isinstance(spec, StudentSpec):
        raise _spec_kind_error(teacher_config, spec)
    width, depth = teacher_config["embed_dim"], teacher_config["depth"]
    if spec.embed_dim > width:
        raise ValueError(
            f"student {spec.name!r} 'embed_dim': {spec.embed_dim} is wider than the teacher's {width} "
            f"(teacher features are projected down to the student, expected <= {width})"
        )
    if spec.depth > depth:
        raise ValueError(f"student {spec.name!r} 'depth': {spec.depth} blocks, expected <= the teacher's {depth}")
    return {**teacher_config, "embed_dim": spec.embed_dim, "num_heads": spec.num_heads, "depth": spec.depth}


def make_student(teacher_config: dict[str, Any], spec: AnyStudentSpec) -> AnchorModel:
    """A freshly initialised student (timm's ViT init; a ResNet's Kaiming init)."""
    return build_anchor(student_config(teacher_config, spec))


def default_students(
    teacher_config: dict[str, Any], depth: int | None = None, stage_depths: Sequence[int] | None = None
) -> tuple[AnyStudentSpec, ...]:
    """The official pair for a teacher: ``tiny`` at half the teacher's width (DeiT-B 768 ->
    384 would be 'small'; the digits family's tiny is half its base) and ``base`` at the
    teacher's width, both with half its depth unless ``depth`` is given.

    A ResNet teacher: ``tiny`` at half the width of every stage, ``base`` at the teacher's,
    with ``stage_depths`` or about half the blocks of every stage (at least 2 where the
    teacher has them; :func:`~stitching.learngene_cnn.default_resnet_students`).
    """
    if not _is_vit(teacher_config):
        if depth is not None:
            raise ValueError(f"default students 'depth': a ResNet teacher takes 'stage_depths', got depth={depth}")
        return default_resnet_students(teacher_config, stage_depths)
    width, heads = teacher_config["embed_dim"], teacher_config["num_heads"]
    depth = depth if depth is not None else max(1, teacher_config["depth"] // 2)
    tiny_heads = max(1, heads // 2)
    tiny_dim = max(tiny_heads, (width // 2) // tiny_heads * tiny_heads)
    return (StudentSpec("tiny", tiny_dim, tiny_heads, depth), StudentSpec("base", width, heads, depth))


def parse_student(text: str, teacher_config: dict[str, Any]) -> AnyStudentSpec:
    """A student for this teacher: ``NAME:DIM:HEADS:DEPTH`` (ViT, e.g. ``tiny:32:2:6``) or
    ``NAME:WIDTHS:STAGE_DEPTHS`` (ResNet, e.g. ``tiny:32,64,128,256:2,2,2,2``)."""
    if _is_vit(teacher_config):
        return StudentSpec.parse(text)
    return ResNetStudentSpec.parse(text)


# --------------------------------------------------------------------------- matched blocks
def parse_matches(text: str) -> Matches:
    """``end``, ``front_end``, ``stages`` or explicit ``TEACHER:STUDENT`` block pairs, e.g.
    ``3:1,7:3,11:5``."""
    if text in MATCH_RULES:
        return text
    pairs = []
    for item in text.split(","):
        t, sep, s = item.partition(":")
        if not sep or not t.strip().lstrip("-").isdigit() or not s.strip().lstrip("-").isdigit():
            raise ValueError(
                f"matches {text!r}: expected one of {list(MATCH_RULES)} or TEACHER:STUDENT block pairs "
                "like 3:1,7:3,11:5"
            )
        pairs.append((int(t), int(s)))
    return tuple(pairs)


def matched_blocks(matches: Matches, teacher_depth: int, student_depth: int) -> tuple[tuple[int, int], ...]:
    """(teacher block, student block) pairs whose outputs the MSE term compares.

    ``end``: the last blocks (``stages``, the last block of every stage, is the same for a
    ViT's one stage). ``front_end``: three evenly spaced points, block
    ``(i + 1) * depth // 3 - 1`` of each network for i = 0, 1, 2 (teacher 3/7/11 <-> student
    2/5/8 for 12 and 9 blocks, student 1/3/5 for 6 blocks, as the official code). Explicit
    pairs are checked against both depths.
    """
    if isinstance(matches, str):
        if matches in ("end", "stages"):
            return ((teacher_depth - 1, student_depth - 1),)
        if matches == "front_end":
            if min(teacher_depth, student_depth) < 3:
                raise ValueError(
                    f"matches 'front_end': needs >= 3 blocks in teacher and student, got {teacher_depth} and "
                    f"{student_depth} (use 'end' or explicit pairs)"
                )
            return tuple(((i + 1) * teacher_depth // 3 - 1, (i + 1) * student_depth // 3 - 1) for i in range(3))
        raise ValueError(f"matches {matches!r}: expected one of {list(MATCH_RULES)} or (teacher, student) pairs")
    pairs = tuple(tuple(p) for p in matches)
    if not pairs:
        raise ValueError("matches: expected at least one (teacher block, student block) pair, got none")
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
            raise ValueError(f"matches: expected (teacher block, student block) int pairs, got {pair!r}")
        t, s = pair
        if not (0 <= t < teacher_depth and 0 <= s < student_depth):
            raise ValueError(
                f"matches pair {t}:{s}: outside the networks (teacher blocks 0..{teacher_depth - 1}, "
                f"student blocks 0..{student_depth - 1})"
            )
    return pairs  # type: ignore[return-value]


def stage_matched_blocks(
    matches: Matches, teacher_stages: Sequence[int], student_stages: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """Matched (teacher block, student block) pairs of a ResNet teacher and student: blocks at
    the same resolution, i.e. in the same stage (:mod:`stitching.learngene_cnn`).

    ``stages``: the last block of every stage. ``end``: the last blocks. Explicit pairs must lie
    in the same stage. ``front_end`` (evenly spaced ViT blocks) is refused: its blocks need not
    share a resolution.

    Raises:
        ValueError: Another stage count, ``front_end``, or a pair outside the networks or across stages.
    """
    if len(teacher_stages) != len(student_stages):
        raise ValueError(f"matches: the teacher has {len(teacher_stages)} stages, the student "
                         f"{len(student_stages)} (expected the same)")
    t_ends = [sum(teacher_stages[:i + 1]) - 1 for i in range(len(teacher_stages))]
    s_ends = [sum(student_stages[:i + 1]) - 1 for i in range(len(student_stages))]
    if matches == "stages":
        return tuple(zip(t_ends, s_ends))
    if matches == "front_end":
        raise ValueError("matches 'front_end': evenly spaced ViT blocks, which need not share a resolution in a "
                         "ResNet; expected 'stages' (the last block of every stage), 'end' or TEACHER:STUDENT "
                         "pairs in one stage")
    pairs = matched_blocks(matches, t_ends[-1] + 1, s_ends[-1] + 1)
    t_stage = [s for s, n in enumerate(teacher_stages) for _ in range(n)]
    s_stage = [s for s, n in enumerate(student_stages) for _ in range(n)]
    for t, s in pairs:
        if t_stage[t] != s_stage[s]:
            raise ValueError(f"matches pair {t}:{s}: teacher block {t} is in stage {t_stage[t]}, student block {s} "
                             f"in stage {s_stage[s]} (matched blocks must share a resolution: the same stage)")
    return pairs


def student_matches(
    matches: Matches, teacher_config: dict[str, Any], spec: AnyStudentSpec
) -> tuple[tuple[int, int], ...]:
    """The matched blocks of one student: :func:`matched_blocks` for a ViT teacher,
    :func:`stage_matched_blocks` for a ResNet teacher."""
    if _is_vit(teacher_config):
        return matched_blocks(matches, teacher_config["depth"], spec.depth)
    if not isinstance(spec, ResNetStudentSpec):
        raise _spec_kind_error(teacher_config, spec)
    return stage_matched_blocks(matches, teacher_config["stage_depths"], spec.stage_depths)


# --------------------------------------------------------------------------- loss
class TransformationMatrices(nn.Module):
    """One learnable teacher_dim -> student_dim matrix per matched pair (no bias)."""

    def __init__(self, teacher_dim: int, student_dim: int, count: int) -> None:
        super().__init__()
        if count < 1:
            raise ValueError(f"transformation matrices 'count': expected >= 1, got {count}")
        self.teacher_dim, self.student_dim = teacher_dim, student_dim
        maps = [nn.Linear(teacher_dim, student_dim, bias=False) for _ in range(count)]
        self.maps = nn.ModuleList(maps)
        with torch.no_grad():
            for m in maps:
                # orthonormal rows: P^T P is a projection, so the transposed map keeps scale
                if student_dim == teacher_dim:
                    m.weight.copy_(torch.eye(teacher_dim))
                else:
                    nn.init.orthogonal_(m.weight)

    def forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.maps[index](x)

    def mean_weight(self) -> torch.Tensor:
        """The average matrix, shape (student_dim, teacher_dim)."""
        return torch.stack([cast(nn.Linear, m).weight for m in self.maps]).mean(0)  # maps holds nn.Linear only


#: A student's matrices: linear maps on ViT tokens, or 1x1 convolutions on ResNet feature maps.
AnyMatrices = TransformationMatrices | ConvTransformationMatrices


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``-sum_c softmax(teacher / T) log_softmax(student / T)``, averaged over the batch."""
    t = temperature
    target = F.softmax(teacher_logits.float() / t, dim=-1)
    return -(target * F.log_softmax(logits.float() / t, dim=-1)).sum(-1).mean()


class LearngeneLoss(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    soft: torch.Tensor
    mse: torch.Tensor


def learngene_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
    student_features: Sequence[torch.Tensor], projected_teacher_features: Sequence[torch.Tensor],
    alpha: float = 0.1, temperature: float = 1.0,
) -> LearngeneLoss:
    """``alpha * CE + (1 - alpha) * (softCE + sum of MSEs)`` (see the module docstring).

    ``projected_teacher_features[m]`` is the teacher's matched block output already mapped
    to the student's width; ``student_features[m]`` the student's matched block output.
    """
    if len(student_features) != len(projected_teacher_features) or not student_features:
        raise ValueError(
            f"learngene loss: expected as many student as teacher features (>= 1), got "
            f"{len(student_features)} and {len(projected_teacher_features)}"
        )
    ce = F.cross_entropy(logits.float(), labels)
    soft = soft_cross_entropy(logits, teacher_logits, temperature)
    mse = sum(F.mse_loss(s.float(), t.float()) for s, t in zip(student_features, projected_teacher_features))
    assert isinstance(mse, torch.Tensor)  # internal: at least one pair
    return LearngeneLoss(alpha * ce + (1 - alpha) * (soft + mse), ce, soft, mse)


class LearngeneDistiller(nn.Module):
    """The auxiliary students and their transformation matrices (the teacher stays outside:
    frozen, and not part of this state dict).

    A ViT teacher: :class:`StudentSpec` students, :class:`TransformationMatrices` on tokens
    ``(N, T, D)``. A ResNet teacher: :class:`~stitching.learngene_cnn.ResNetStudentSpec`
    students, :class:`~stitching.learngene_cnn.ConvTransformationMatrices` on feature maps
    ``(N, C, H, W)`` (use ``matches="stages"`` or ``"end"``; ``"front_end"`` is a ViT rule).
    """

    def __init__(
        self, teacher_config: dict[str, Any], students: Sequence[AnyStudentSpec], matches: Matches = "front_end",
        alpha: float = 0.1, temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if not students:
            raise ValueError("learngene 'students': expected at least one auxiliary student, got none")
        names = [s.name for s in students]
        if len(set(names)) != len(names):
            raise ValueError(f"learngene 'students': expected distinct names, got {names}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"learngene 'alpha': expected 0..1, got {alpha}")
        if not temperature > 0:
            raise ValueError(f"learngene 'temperature': expected > 0, got {temperature}")
        self.teacher_config = dict(teacher_config)
        if _is_vit(teacher_config):
            self.teacher_dim, self.teacher_depth = teacher_config["embed_dim"], teacher_config["depth"]
        else:  # the last stage's output channels, the blocks in all
            t_depths = teacher_config["stage_depths"]
            self.teacher_dim = teacher_config["widths"][-1] * (4 if teacher_config.get("block") == "bottleneck" else 1)
            self.teacher_depth = sum(t_depths)
        self.specs = tuple(students)
        self.alpha, self.temperature = alpha, temperature
        self.students = nn.ModuleList(make_student(teacher_config, s) for s in students)
        self.matches = tuple(student_matches(matches, teacher_config, s) for s in students)
        if _is_vit(teacher_config):
            self.matrices = nn.ModuleList(
                TransformationMatrices(self.teacher_dim, cast(StudentSpec, s).embed_dim, len(m))
                for s, m in zip(students, self.matches)  # student_config checked every spec is a StudentSpec
            )
        else:
            self.matrices = nn.ModuleList(
                resnet_matrices(teacher_config, cast(ResNetAnchor, student), m)
                for student, m in zip(self.students, self.matches)  # make_student built ResNets
            )

    def student(self, index: int) -> AnchorModel:
        """Student ``index`` (``students[index]``), typed."""
        return cast(AnchorModel, self.students[index])  # __init__ fills students with make_student's models

    def student_matrices(self, index: int) -> AnyMatrices:
        """Student ``index``'s transformation matrices (``matrices[index]``), typed."""
        return cast(AnyMatrices, self.matrices[index])  # as __init__ builds them

    def index(self, name: str) -> int:
        for i, spec in enumerate(self.specs):
            if spec.name == name:
                return i
        raise ValueError(f"learngene student {name!r}: unknown, expected one of {[s.name for s in self.specs]}")

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, teacher_features: Sequence[torch.Tensor],
        teacher_logits: torch.Tensor,
    ) -> list[LearngeneLoss]:
        """One loss per student; ``teacher_features`` is the teacher's ``block_features(x)``."""
        losses = []
        for i, pairs in enumerate(self.matches):
            student, mats = self.student(i), self.student_matrices(i)
            feats = student.block_features(x)  # index 0: embedding, i + 1: block i
            logits = student.forward_norm_head(feats[-1])
            ours = [feats[s + 1] for _, s in pairs]
            theirs = [mats(j, teacher_features[t + 1]) for j, (t, _) in enumerate(pairs)]
            losses.append(learngene_loss(logits, teacher_logits, labels, ours, theirs, self.alpha, self.temperature))
        return losses


# --------------------------------------------------------------------------- pool
def descendant_count(
    depths: Sequence[int], kernel_size: int = 2, stride: int = 1,
    stage_depths: Sequence[Sequence[int]] | None = None,
) -> int:
    """Descendants of a pool of students with these depths (ordered narrow -> wide).

    Two students of equal depth ``d`` with SN-Net's window (2, stride 1): ``2`` students plus
    ``3d - 2`` stitch positions (4 in the first window, 3 in each of the next ``d - 2``), so
    ``3d``: 18 for 6-block and 27 for 9-block students, as the official code's id lists.
    ResNet students give their ``stage_depths`` too (stitched inside a stage only): two
    ``[2, 2, 2, 2]`` students have 12.
    """
    if not depths:
        raise ValueError("learngene pool: expected at least one learngene instance (student), got none")
    stages = tuple(tuple(s) for s in stage_depths) if stage_depths is not None else None
    return len(StitchSpace(tuple(depths), stage_depths=stages, nearest=True, kernel_size=kernel_size, stride=stride))


def _model_width(model: AnchorModel) -> int:
    """A student's width: a ViT's ``embed_dim``, a ResNet's last stage width."""
    config = model.config
    return int(config["embed_dim"]) if config["family"] == VIT_FAMILY else int(config["widths"][-1])


def build_pool(
    students: Sequence[AnchorModel], names: Sequence[str] | None = None, kernel_size: int = 2, stride: int = 1
) -> SNNet:
    """The descendants of ``students`` (ordered narrow -> wide): each student alone plus the
    SN-Net paired stitches between neighbours (for two students: narrow -> wide only).
    ResNet students are stitched inside a stage (:mod:`searchspace.stitch`), by 1x1
    convolutions, one per window and width pair (:class:`~stitching.snnet.SNNet`)."""
    if not students:
        raise ValueError("learngene pool: expected at least one learngene instance (student), got none")
    widths = [_model_width(s) for s in students]
    if widths != sorted(widths):
        raise ValueError(f"learngene pool: students must be ordered narrow -> wide, got widths {widths}")
    space = anchor_space(students, names, nearest=True, kernel_size=kernel_size, stride=stride, name=POOL_SPACE_NAME)
    return SNNet(students, space)


def matrix_stitch_weight(front: TransformationMatrices, end: TransformationMatrices) -> torch.Tensor:
    """The (d_end, d_front) stitching weight from learned matrices (module docstring)."""
    if front.teacher_dim != end.teacher_dim:
        raise ValueError(
            f"transformation matrices: teacher widths differ ({front.teacher_dim} and {end.teacher_dim})"
        )
    back_to_teacher = front.mean_weight().detach().T  # (D, d_front)
    if end.student_dim == end.teacher_dim:
        return back_to_teacher.clone()
    return end.mean_weight().detach() @ back_to_teacher


@torch.no_grad()
def init_stitches_from_matrices(pool: SNNet, matrices: Sequence[AnyMatrices]) -> list[str]:
    """Set every stitching layer of ``pool`` from the pool students' matrices (same order as
    the pool's anchors); biases are zeroed.

    Returns:
        The keys of the layers the matrices leave undefined, for SN-Net's least-squares init
        (:meth:`~stitching.snnet.SNNet.init_stitching_layers` with ``only``): always none for
        ViT students; for ResNet students see :mod:`stitching.learngene_cnn`.

    Raises:
        ValueError: Not one matrix set per student, or ViT and ResNet matrices mixed.
    """
    if len(matrices) != pool.space.num_anchors:
        raise ValueError(
            f"init from matrices: the pool has {pool.space.num_anchors} students, got {len(matrices)} matrix sets"
        )
    if all(isinstance(m, ConvTransformationMatrices) for m in matrices):
        return init_conv_stitches_from_matrices(pool, cast(Sequence[ConvTransformationMatrices], matrices))
    if not all(isinstance(m, TransformationMatrices) for m in matrices):
        raise ValueError(f"init from matrices: expected the matrices of one kind, got "
                         f"{[type(m).__name__ for m in matrices]}")
    for spec in pool.space.stitching_layers():
        layer = pool.stitching_layer(spec.in_anchor, spec.out_anchor, spec.window)
        weight = matrix_stitch_weight(cast(TransformationMatrices, matrices[spec.in_anchor]),
                                      cast(TransformationMatrices, matrices[spec.out_anchor]))
        layer.set_weight_bias(weight, torch.zeros(weight.shape[0]))
    return []


__all__ = [
    "AnyMatrices", "AnyStudentSpec", "ConvTransformationMatrices", "LearngeneDistiller", "LearngeneLoss",
    "MATCH_RULES", "POOL_SPACE_NAME", "ResNetStudentSpec", "StudentSpec", "TEACHER_FAMILIES",
    "TransformationMatrices", "build_pool", "check_teacher_kind", "default_students", "descendant_count",
    "init_stitches_from_matrices", "learngene_loss", "make_student", "matched_blocks", "matrix_stitch_weight",
    "parse_matches", "parse_student", "soft_cross_entropy", "stage_matched_blocks", "student_config",
    "student_matches",
]

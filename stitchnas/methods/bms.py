"""The Balanced Mixture of SuperNets (BMS) as a pipeline method: a pooling search whose
candidates are scored on a mixture of M supernets.

Javan et al., "Balanced Mixture of SuperNets for Learning the CNN Pooling Architecture"
(arXiv 2306.11982), Sec. 3: configurations are softly assigned to M supernets, the assignment
balanced so every supernet trains on an equal share; the GM-NAS-style gradient-similarity split
is the ``grouping="gm"`` variant (:class:`supernet.bms.MixtureConfig`).

Small spaces are scored on every (configuration, supernet) pair, as the BMS paper does for
ResNet-20, and a configuration's score is its best supernet's; larger spaces are scored on each
configuration's most likely supernet only. Either way the chosen supernet is remembered (in
``accuracy_matrix.csv``), so the exported model carries the weights that earned the score.
This works with any evaluation backend: the per-supernet accuracies travel back to the driver
as a :class:`~stitchnas.search.candidates.Score`'s extras.

Extra files: ``assignment.csv`` / ``assignment.png`` (balanced p(m|c)), ``scores.csv`` (the
score matrix W) and, when all pairs are evaluated, ``accuracy_matrix.csv``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from searchspace.pooling import PoolingSpace
from stitchnas.core.io import ResultsTable, atomic_write_text
from stitchnas.core.prefix import DEFAULT_PREFIX_BUDGET
from stitchnas.data import DataSplits
from stitchnas.methods.pooling import PoolingMethod, PoolingSearchConfig, PoolingTask, SupernetTrainer, train_supernet
from stitchnas.search.candidates import (
    CandidateEvaluator,
    CandidateTask,
    PrefixScorer,
    Score,
    Scorer,
    ShippedSplit,
    ship_split,
    unship_split,
)
from supernet.bms import MixtureConfig, MixtureOfSuperNets
from supernet.evaluation import EvalConfig, evaluate_path
from supernet.networks import ModelSpec
from supernet.shared_prefix import score_placements

log = logging.getLogger(__name__)

EVAL_ALL_PAIRS_LIMIT = 512  # (configurations x M) pairs up to which every pair is evaluated
ACCURACY_MATRIX_FILE = "accuracy_matrix.csv"


def write_assignment_files(mixture: MixtureOfSuperNets, out_dir: Path) -> None:
    """``assignment.csv`` / ``.png`` (balanced p(m|c)) and ``scores.csv`` (W), configurations x M."""
    space, m = mixture.space, mixture.num_supernets
    labels = [space.describe(c) for c in space]
    header = "candidate,label," + ",".join(f"m{j}" for j in range(m))
    for name, matrix in (("assignment", mixture.assignment()), ("scores", mixture.scores.cpu().numpy())):
        lines = [header] + [f"{i},\"{labels[i]}\"," + ",".join(f"{v:.6g}" for v in row) for i, row in enumerate(matrix)]
        atomic_write_text(out_dir / f"{name}.csv", "\n".join(lines) + "\n")
    from stitchnas.search.plots import plot_matrix

    plot_matrix(out_dir / "assignment.png", mixture.assignment(), labels, [f"supernet {j}" for j in range(m)],
                title=f"p(m|c): {len(space)} configurations over M={m} supernets", xlabel="supernet",
                ylabel="configuration")
    log.info("assignment matrix: %s (and .png)", out_dir / "assignment.csv")


def scores_all_pairs(mixture: MixtureOfSuperNets) -> bool:
    """Whether every (configuration, supernet) pair is scored (small spaces, M > 1)."""
    return len(mixture.space) * mixture.num_supernets <= EVAL_ALL_PAIRS_LIMIT and mixture.num_supernets > 1


class MixtureTask(PoolingTask):
    """The placements of a mixture search: scored on their best (all pairs) or most likely
    supernet; the driver records the choice (:meth:`on_scored`) and the accuracy matrix."""

    def __init__(self, space: PoolingSpace, data: DataSplits, mixture: MixtureOfSuperNets, eval_cfg: EvalConfig,
                 matrix: ResultsTable | None = None) -> None:
        super().__init__(space, data, None, eval_cfg)
        self.mixture, self.matrix = mixture, matrix

    def evaluator(self) -> MixtureEvaluator:
        assert self.eval_cfg is not None
        mixture = self.mixture
        return MixtureEvaluator(
            key=uuid.uuid4().hex, space=self.space.to_json(), spec=(self.data.in_chans, self.data.num_classes),
            mixture_cfg=mixture.cfg.to_json(), eval_cfg=self.eval_cfg.to_json(),
            weights={k: v.detach().cpu().clone() for k, v in mixture.state_dict().items()},
            selected=dict(mixture.selected), all_pairs=scores_all_pairs(mixture),
            calib=ship_split(self.data.search_train), val=ship_split(self.data.search_val),
        )

    def on_scored(self, index: int, extra: dict[str, Any]) -> None:
        accs = [float(a) for a in extra["accs"]]
        self.mixture.selected[index] = int(np.argmax(accs))
        if self.matrix is not None:
            self.matrix.append({"candidate": str(index), "label": self.describe(index),
                                **{f"m{j}": a for j, a in enumerate(accs)}})


@dataclass(frozen=True)
class MixtureEvaluator(CandidateEvaluator):
    """Plain data that rebuilds the trained mixture and scores a placement on it; several
    placements are scored per supernet with each shared prefix computed once per batch."""

    key: str
    space: dict[str, Any]
    spec: tuple[int, int]  # (in_chans, num_classes)
    mixture_cfg: dict[str, Any]
    eval_cfg: dict[str, Any]
    weights: dict[str, torch.Tensor]
    selected: dict[int, int]
    all_pairs: bool
    calib: ShippedSplit  # tensors, or a split streamed from disk
    val: ShippedSplit
    prefix_budget: int = DEFAULT_PREFIX_BUDGET

    def prepare(self, device: str) -> Scorer:
        space = PoolingSpace.from_json(self.space)
        mixture_cfg = MixtureConfig.from_json(self.mixture_cfg, "mixture evaluator")
        mixture = MixtureOfSuperNets(space, ModelSpec(*self.spec), mixture_cfg)
        mixture.load_state_dict(self.weights)
        mixture.selected.update(self.selected)
        eval_cfg = EvalConfig.from_json({**self.eval_cfg, "device": device}, "mixture evaluator")
        calib, val = unship_split(self.calib), unship_split(self.val)

        def on_member(index: int, member: int) -> float:
            mixture.selected[index] = member  # set_active() follows the selection
            return evaluate_path(mixture, space.config(index), calib, val, eval_cfg)

        def score(index: int) -> float | Score:
            if not self.all_pairs:  # each configuration on its most likely supernet
                return on_member(index, mixture.member_of(space.config(index)))
            accs = [on_member(index, j) for j in range(mixture.num_supernets)]
            return Score(max(accs), {"accs": accs})

        if eval_cfg.finetune is not None:  # every placement trains its own network: one at a time
            return score

        def many(indices: Sequence[int]) -> dict[int, float | Score]:
            # the same (candidate, supernet) pairs as score(), each supernet's placements in one
            # shared-prefix pass (supernet.shared_prefix.score_placements)
            every = range(mixture.num_supernets)
            pairs = [(i, j) for i in dict.fromkeys(indices)
                     for j in (every if self.all_pairs else [mixture.member_of(space.config(i))])]
            accs: dict[tuple[int, int], float | None] = {}
            for member in sorted({j for _, j in pairs}):
                mine = [i for i, j in pairs if j == member]
                found, report = score_placements(mixture.supernet(member), [space.config(i) for i in mine], calib,
                                                 val, eval_cfg, self.prefix_budget)
                log.info("supernet %d: %s", member, report.describe())
                accs.update({(i, member): acc for i, acc in zip(mine, found)})
            for i, j in pairs:
                mixture.selected[i] = j  # as on_member() leaves it
            out: dict[int, float | Score] = {}
            for i in dict.fromkeys(indices):
                row = [accs[i, j] for j in (every if self.all_pairs else [mixture.member_of(space.config(i))])]
                if any(a is None for a in row):
                    continue  # scored alone by the caller, which reports the non-finite logits
                done = [a for a in row if a is not None]
                out[i] = Score(max(done), {"accs": done}) if self.all_pairs else done[0]
            return out

        return PrefixScorer(score, many)


class MixtureMethod(PoolingMethod):
    """The pooling search on a mixture of supernets (``cfg.mixture`` set)."""

    def __init__(self, cfg: PoolingSearchConfig, trainer: SupernetTrainer = train_supernet) -> None:
        if cfg.mixture is None:
            raise ValueError("mixture search: the config has no 'mixture' (use PoolingMethod for one supernet)")
        if trainer is not train_supernet:
            raise ValueError("mixture search: trains in process only (Ray Train trains one supernet)")
        super().__init__(cfg, trainer)

    def task(self, network: nn.Module, data: DataSplits) -> CandidateTask:
        assert isinstance(network, MixtureOfSuperNets)
        return MixtureTask(self.cfg.space, data, network, self.cfg.eval)

    def open_run(self, network: nn.Module, task: CandidateTask, out_dir: Path) -> None:
        """Write the assignment files, open the accuracy matrix and restore the supernets
        chosen before an interruption."""
        assert isinstance(network, MixtureOfSuperNets) and isinstance(task, MixtureTask)
        write_assignment_files(network, out_dir)
        if scores_all_pairs(network):
            m = network.num_supernets
            task.matrix = ResultsTable(out_dir / ACCURACY_MATRIX_FILE,
                                       ("candidate", "label", *[f"m{j}" for j in range(m)]))
            restore_selection(network, out_dir)

    def load_trained(self, run_dir: Path, data: DataSplits) -> nn.Module:
        network = super().load_trained(run_dir, data)
        assert isinstance(network, MixtureOfSuperNets)
        restore_selection(network, Path(run_dir))
        return network


def restore_selection(mixture: MixtureOfSuperNets, run_dir: Path) -> None:
    """Set each configuration's chosen supernet from the run's ``accuracy_matrix.csv``."""
    path = run_dir / ACCURACY_MATRIX_FILE
    if not path.exists():
        return
    m = mixture.num_supernets
    seen: set[int] = set()
    for line, row in enumerate(ResultsTable(path, ("candidate", "label", *[f"m{j}" for j in range(m)])).rows(), 2):
        index, accs = row["candidate"], [row[f"m{j}"] for j in range(m)]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(mixture.space) \
                or index in seen:
            raise ValueError(f"accuracy matrix {path}: line {line}: candidate {index!r} is not a new candidate "
                             f"of this run (expected an index in 0..{len(mixture.space) - 1}, once)")
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in accs):
            raise ValueError(f"accuracy matrix {path}: line {line}: expected {m} finite accuracies, got {accs}")
        seen.add(index)
        mixture.selected[index] = int(np.argmax(accs))


__all__ = [
    "ACCURACY_MATRIX_FILE", "EVAL_ALL_PAIRS_LIMIT", "MixtureEvaluator", "MixtureMethod", "MixtureTask",
    "restore_selection", "scores_all_pairs", "write_assignment_files",
]

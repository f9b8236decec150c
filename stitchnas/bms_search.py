"""Candidate evaluation for a mixture of supernets, and the files only a mixture has.

Small spaces are scored on every (configuration, supernet) pair, as the BMS paper does for
ResNet-20, and a configuration's score is its best supernet's; larger spaces are scored on each
configuration's most likely supernet only. Either way the chosen supernet is remembered, so the
exported model carries the weights that earned the score.

Extra files: ``assignment.csv`` / ``assignment.png`` (balanced p(m|c)), ``scores.csv`` (the
score matrix W) and, when all pairs are evaluated, ``accuracy_matrix.csv``.
"""

from __future__ import annotations

import logging

import numpy as np

from stitchnas.io import ResultsTable, atomic_write_text
from stitchnas.pooling_search import EvaluationContext, evaluate_candidates
from supernet.bms import MixtureOfSuperNets
from supernet.evaluation import evaluate_path

log = logging.getLogger(__name__)

EVAL_ALL_PAIRS_LIMIT = 512  # (configurations x M) pairs up to which every pair is evaluated


def write_assignment_files(mixture: MixtureOfSuperNets, out_dir) -> None:
    space, m = mixture.space, mixture.num_supernets
    labels = [space.describe(c) for c in space]
    header = "candidate,label," + ",".join(f"m{j}" for j in range(m))
    for name, matrix in (("assignment", mixture.assignment()), ("scores", mixture.scores.cpu().numpy())):
        lines = [header] + [f"{i},\"{labels[i]}\"," + ",".join(f"{v:.6g}" for v in row) for i, row in enumerate(matrix)]
        atomic_write_text(out_dir / f"{name}.csv", "\n".join(lines) + "\n")
    from stitchnas.plots import plot_matrix

    plot_matrix(out_dir / "assignment.png", mixture.assignment(), labels, [f"supernet {j}" for j in range(m)],
                title=f"p(m|c): {len(space)} configurations over M={m} supernets", xlabel="supernet", ylabel="configuration")
    log.info("assignment matrix: %s (and .png)", out_dir / "assignment.csv")


def mixture_stage(ctx: EvaluationContext) -> None:
    mixture: MixtureOfSuperNets = ctx.supernet  # type: ignore[assignment]
    write_assignment_files(mixture, ctx.out_dir)
    m = mixture.num_supernets
    all_pairs = len(ctx.space) * m <= EVAL_ALL_PAIRS_LIMIT and m > 1

    def on_member(config, member: int) -> float:
        mixture.selected[ctx.space.index(config)] = member  # set_active() follows the selection
        return evaluate_path(mixture, config, ctx.data.search_train, ctx.data.search_val, ctx.cfg.eval)

    if not all_pairs:
        # Each configuration on its most likely supernet.
        evaluate_candidates(ctx.table, ctx.candidates, ctx.space, ctx.data,
                            lambda c: on_member(c, mixture.member_of(c)), ctx.progress)
        return
    matrix = ResultsTable(ctx.out_dir / "accuracy_matrix.csv", ("candidate", "label", *[f"m{j}" for j in range(m)]))
    known = {str(r["candidate"]): [float(r[f"m{j}"]) for j in range(m)] for r in matrix.rows()}
    for key, accs in known.items():  # restore choices made before an interruption
        mixture.selected[int(key)] = int(np.nanargmax(accs))

    def best_member(config) -> float:
        accs = [on_member(config, j) for j in range(m)]
        index = ctx.space.index(config)
        matrix.append({"candidate": str(index), "label": ctx.space.describe(config), **{f"m{j}": a for j, a in enumerate(accs)}})
        mixture.selected[index] = int(np.argmax(accs))
        return max(accs)

    evaluate_candidates(ctx.table, ctx.candidates, ctx.space, ctx.data, best_member, ctx.progress)

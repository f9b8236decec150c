"""The front's ranking score (issue 15): the supernet score, or its rank blend with the
no-training FLOPs-and-parameters proxy; the arithmetic on a fixed table, the front it makes,
run configs and CLI options."""

from __future__ import annotations

import json

import pytest
from helpers import assert_bad_option

import stitchnas
from searchspace.pooling import create_space
from stitchnas.cli.options import print_front
from stitchnas.data import DataSpec
from stitchnas.methods.pooling import PoolingSearchConfig
from stitchnas.search.front import summarize_front
from stitchnas.search.rank_rule import RankRule
from supernet.evaluation import EvalConfig
from supernet.training import TrainConfig


def _rows() -> list[dict]:
    # FLOPs ranks 1..5, params all equal: the proxy orders as FLOPs; the supernet score disagrees
    table = [(100, 9, 70.0), (200, 9, 90.0), (300, 9, 60.0), (400, 9, 80.0), (500, 9, 50.0)]
    rows = [{"candidate": i, "label": f"c{i}", "flops": f, "params": p, "val_acc": a, "status": "ok", "error": ""}
            for i, (f, p, a) in enumerate(table)]
    rows.append({"candidate": 5, "label": "c5", "flops": 50, "params": 9, "val_acc": None, "status": "failed",
                 "error": "boom"})
    return rows


def test_blend_scores_on_a_fixed_table():
    rows = RankRule("blend", 0.5).annotate(_rows())
    # score ranks (1 = worst): 3, 5, 2, 4, 1; FLOPs ranks 1..5; blend = mean, scaled to [0, 1] over 5 rows
    expected = [(3 + 1) / 2, (5 + 2) / 2, (2 + 3) / 2, (4 + 4) / 2, (1 + 5) / 2]
    assert [r["rank_score"] for r in rows[:5]] == pytest.approx([(e - 1) / 4 for e in expected])
    assert rows[5]["rank_score"] != rows[5]["rank_score"]  # NaN: a failed candidate is not ranked
    assert RankRule("score").annotate(_rows()) == _rows()  # unchanged
    weighted = RankRule("blend", 0.25).annotate(_rows())
    assert weighted[1]["rank_score"] == pytest.approx((0.75 * 5 + 0.25 * 2 - 1) / 4)


def test_the_blend_front_is_the_blends_pick_at_every_budget(tmp_path):
    rank = RankRule("blend", 0.5)
    summary = summarize_front(_rows(), tmp_path, plot=False, rank=rank)
    scored = {r["candidate"]: r for r in rank.annotate(_rows()) if r["status"] == "ok"}
    picks = set()
    for budget in sorted({r["flops"] for r in scored.values()}):
        within = [r for r in scored.values() if r["flops"] <= budget]
        picks.add(max(within, key=lambda r: (r["rank_score"], -r["flops"]))["candidate"])
    assert {r["candidate"] for r in summary.front} == picks == {0, 1, 3}
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert pareto["objectives"] == {"flops": "minimize", "rank_score": "maximize"}
    assert pareto["rank"]["by"] == "blend" and pareto["rank"]["weight"] == 0.5
    assert all("rank_score" in r and "val_acc" in r for r in pareto["front"])
    (tmp_path / "s").mkdir()
    score_front = summarize_front(_rows(), tmp_path / "s", plot=False)
    assert {r["candidate"] for r in score_front.front} == {0, 1}  # accuracy alone: 90% at 200 dominates the rest


def test_rank_rule_checks_its_fields_and_old_run_configs_rank_by_score():
    with pytest.raises(ValueError, match="rank 'by'"):
        RankRule("median")
    with pytest.raises(ValueError, match="rank 'weight'"):
        RankRule("blend", 1.5)
    cfg = PoolingSearchConfig(space=create_space("resnet20", width_scale=0.25), rank=RankRule("blend", 0.3))
    data = cfg.to_json()
    assert data["rank"] == {"by": "blend", "weight": 0.3}
    assert PoolingSearchConfig.from_json(data).rank == RankRule("blend", 0.3)
    del data["rank"]  # a run written before the option
    assert PoolingSearchConfig.from_json(data).rank == RankRule("score")
    assert "rank" not in PoolingSearchConfig(space=cfg.space, rank=RankRule("score")).to_json()


def test_a_blend_search_writes_the_blend_front_and_resume_refuses_another_rule(tmp_path, capsys):
    cfg = PoolingSearchConfig(
        space=create_space("resnet20", width_scale=0.25),
        data=DataSpec(name="digits", input_size=8, seed=0, max_train_samples=300),
        train=TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0), eval=EvalConfig(calib_batches=2),
        max_candidates=8, rank=RankRule("blend"))
    out = tmp_path / "run"
    result = stitchnas.run_search(cfg, out, progress=False)
    rows = RankRule("blend").annotate(result.rows)
    front = {str(r["candidate"]) for r in json.loads((out / "pareto.json").read_text())["front"]}
    best = max(rows, key=lambda r: r["rank_score"])
    assert str(best["candidate"]) in front  # the blend's overall pick is on the front
    assert json.loads((out / "run_config.json").read_text())["rank"] == {"by": "blend", "weight": 0.5}
    for folder in result.exports:  # each export says how the front chose it
        record = json.loads((folder / "model.json").read_text())
        member = next(r for r in result.summary.front if folder.name.startswith(f"{int(r['candidate']):04d}_"))
        assert record["rank"] == {"by": "blend", "weight": 0.5, "rank_score": member["rank_score"]}
    assert len(result.exports) == len(front)
    print_front(result)
    printed = capsys.readouterr().out.splitlines()
    assert "ranked by the blend of val acc and FLOPs/params ranks (weight 0.5)" in printed[0]
    assert printed[1].split()[-3:] == ["rank", "score", "label"]
    assert [float(line.split()[-2]) for line in printed[2:2 + len(front)]] == sorted(
        round(r["rank_score"], 3) for r in result.summary.front)  # cheapest first: the score rises along the front
    with pytest.raises(ValueError, match=r"differing: \['rank'\]"):
        stitchnas.run_search(PoolingSearchConfig(**{**cfg.__dict__, "rank": RankRule("score")}), out, resume=True,
                             progress=False)


@pytest.mark.parametrize("argv, message", [
    (["search", "pooling", "--rank-by", "best"], "--rank-by: expected one of score, blend, got 'best'"),
    (["search", "pooling", "--rank-by", "score", "--blend-weight", "0.3"],
     "--blend-weight: applies to --rank-by blend"),
    (["search", "bms", "--rank-by", "blend", "--blend-weight", "2"], "--blend-weight: expected a number in [0, 1]"),
])
def test_bad_rank_options_get_one_line_naming_the_option(capsys, tmp_path, argv, message):
    assert_bad_option(capsys, [*argv], message, tmp_path / "run")

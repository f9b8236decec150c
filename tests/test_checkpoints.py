"""Epoch checkpoints shared by every trainer: round trip, recipe check, no resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stitchnas.core.checkpoints import EpochCheckpoint


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # momentum buffers exist: the optimizer state is not empty
    return model, optimizer


def test_round_trip_restores_model_optimizer_history_and_epoch(tmp_path):
    ckpt = EpochCheckpoint(tmp_path / "run.pt", {"kind": "test", "train_config": {"lr": 0.1}}, "test training")
    model, optimizer = _model_and_optimizer(0)
    ckpt.save(3, model, optimizer, [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # atomic: no temp file left
    fresh, fresh_opt = _model_and_optimizer(1)
    epoch, history = ckpt.restore(fresh, fresh_opt, resume=True)
    assert epoch == 3 and history == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    want = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"], want)


def test_several_optimizers_are_stored_as_a_list(tmp_path):
    ckpt = EpochCheckpoint(tmp_path / "mix.pt", {"mixture_config": {"m": 2}})
    model, optimizer = _model_and_optimizer(0)
    ckpt.save(1, model, [optimizer, optimizer], [])
    state = torch.load(tmp_path / "mix.pt", weights_only=True)
    assert "optimizer" not in state and len(state["optimizers"]) == 2 and state["mixture_config"] == {"m": 2}
    _, other = _model_and_optimizer(1)
    assert ckpt.restore(model, [other, other], resume=True)[0] == 1
    with pytest.raises(ValueError):  # a checkpoint of two optimizers does not load into three
        ckpt.restore(model, [other, other, other], resume=True)


def test_no_resume_or_no_file_starts_at_epoch_zero_untouched(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    EpochCheckpoint(tmp_path / "a.pt").save(5, *_model_and_optimizer(1), [{"epoch": 5}])
    assert EpochCheckpoint(tmp_path / "a.pt").restore(model, optimizer, resume=False) == (0, [])
    assert EpochCheckpoint(tmp_path / "missing.pt").restore(model, optimizer, resume=True) == (0, [])
    assert EpochCheckpoint(None).restore(model, optimizer, resume=True) == (0, [])
    EpochCheckpoint(None).save(1, model, optimizer, [])  # no path: nothing written
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_a_changed_recipe_is_refused_with_the_differing_keys(tmp_path):
    EpochCheckpoint(tmp_path / "r.pt", {"kind": "stitch_train", "version": 1, "train_config": {"lr": 0.1}}).save(
        2, *_model_and_optimizer(0), [])
    changed = EpochCheckpoint(tmp_path / "r.pt", {"kind": "stitch_train", "version": 1, "train_config": {"lr": 0.2}},
                              "stitch training")
    with pytest.raises(ValueError) as err:
        changed.restore(*_model_and_optimizer(0), resume=True)
    assert str(err.value) == (f"checkpoint {tmp_path / 'r.pt'}: written for a different stitch training recipe "
                              "(differing: ['train_config']); start a new run folder or rerun with the same options")
    other_kind = EpochCheckpoint(tmp_path / "r.pt", {"kind": "learngene_distill", "version": 1})
    with pytest.raises(ValueError, match=r"differing: \['kind'\]"):
        other_kind.restore(*_model_and_optimizer(0), resume=True)

"""The shared epoch loop :func:`stitchnas.core.training.fit` and the five trainers ported onto it
(supernet ``train``, ``train_mixture``, SN-Net ``train_network`` / ``finetune_pool``, Learngene
``distill_students`` and the Ray Train worker's epochs, run here without Ray): a non-finite
loss stops every one of them with one line naming the epoch and the step and keeps the last
finite checkpoint; a resume replays the straight run exactly; ``on_step`` sees consecutive
global steps. Tiny models on 64 random 8x8 images, 16 per batch: 4 steps per epoch."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from searchspace.pooling import PoolingSpace
from stitching.learngene import StudentSpec
from stitching.learngene_train import DistillConfig, build_distiller, distill_students, finetune_pool
from stitching.snnet import SNNet
from stitching.trainer import StitchTrainConfig, train_network
from stitching.vit import create_vit
from stitchnas.backends.ray_train import diverged_cause, worker_epochs
from stitchnas.core.checkpoints import EpochCheckpoint
from stitchnas.core.io import atomic_torch_save, load_checkpoint
from stitchnas.core.training import (
    Epoch, FitOptions, TensorBatches, TrainConfig, TrainHistory, TrainingDiverged, build_optimizer, fit,
)
from supernet.bms import MixtureConfig, MixtureOfSuperNets, train_mixture
from supernet.networks import ModelSpec, build_supernet
from supernet.training import supernet_checkpoint, train

TINY = PoolingSpace(name="tiny", widths=(4, 4, 8, 8, 8), num_downsamples=2)
STEPS = 4  # per epoch: 64 images, batches of 16
EPOCHS = 2
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=16, lr=0.05, seed=3, device="cpu")
STITCH = StitchTrainConfig(epochs=EPOCHS, batch_size=16, lr=1e-3, seed=2, warmup_epochs=1)
DISTILL = DistillConfig((StudentSpec("tiny", 32, 2, 2), StudentSpec("base", 64, 4, 2)), matches=((1, 0), (3, 1)),
                        train=StitchTrainConfig(epochs=EPOCHS, batch_size=16, seed=1, warmup_epochs=1))


def tiny_data(n: int = 64, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, :, :4].mean((1, 2)) > 0).long()
    return torch.utils.data.TensorDataset(x, y)


DATA, VAL = tiny_data(), tiny_data(32, seed=1)


def _teacher() -> nn.Module:
    torch.manual_seed(5)
    return create_vit("vit_digits_base", depth=4, img_size=8, num_classes=4)


TEACHER = _teacher()
Run = Callable[[nn.Module, Path, "Callable[[int], None] | None", bool], TrainHistory]


# --------------------------------------------------------------------------- the five loops
def _snnet() -> nn.Module:
    torch.manual_seed(0)
    return SNNet.from_anchors([create_vit(n, img_size=8, num_classes=4) for n in ("vit_digits_tiny", "vit_digits_small")])


def _supernet() -> nn.Module:
    torch.manual_seed(0)
    return build_supernet(TINY, ModelSpec(1, 4))


def _mixture() -> nn.Module:
    torch.manual_seed(0)
    return MixtureOfSuperNets(TINY, ModelSpec(1, 4), MixtureConfig(num_supernets=2, t_max=10.0))


def _distiller() -> nn.Module:
    torch.manual_seed(0)
    return build_distiller(TEACHER.config, DISTILL)


def _ray_worker(model: nn.Module, path: Path, on_step, resume: bool) -> TrainHistory:
    """What ``train_worker`` does on one worker, without Ray: the state comes from ``path`` and
    rank 0's reported state goes back there."""
    state: dict[str, Any] = {"epoch": 0, "history": [], "optimizer": None}
    if resume and path.exists():
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
    optimizer = build_optimizer(model.parameters(), TRAIN)
    if state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])

    def report(epoch: int, record: dict[str, Any], checkpoint_state: dict[str, Any] | None) -> None:
        assert record == checkpoint_state["history"][-1] and checkpoint_state["epoch"] == epoch
        atomic_torch_save(checkpoint_state, path)

    return worker_epochs(model, model, optimizer, TensorBatches(DATA, torch.device("cpu")), TRAIN, state, report,
                         storage=path, on_step=on_step)


@dataclass(frozen=True)
class Loop:
    name: str
    build: Callable[[], nn.Module]
    run: Run

    def __repr__(self) -> str:
        return self.name


LOOPS = [
    Loop("train", _supernet, lambda m, p, s, r: train(
        m, DATA, TRAIN, choose_path=m.sample_active, checkpoint_path=p, resume=r, progress=False, on_step=s)),
    Loop("train_mixture", _mixture, lambda m, p, s, r: train_mixture(
        m, DATA, VAL, TRAIN, checkpoint_path=p, resume=r, progress=False, on_step=s)),
    Loop("train_network", _snnet, lambda m, p, s, r: train_network(
        m, DATA, STITCH, choose=m.sample_active, checkpoint_path=p, resume=r, progress=False, on_step=s)),
    Loop("finetune_pool", _snnet, lambda m, p, s, r: finetune_pool(
        m, None, DATA, STITCH, checkpoint_path=p, resume=r, progress=False, on_step=s)),
    Loop("distill_students", _distiller, lambda m, p, s, r: distill_students(
        m, TEACHER, DATA, DISTILL, checkpoint_path=p, resume=r, progress=False, on_step=s)),
    Loop("ray_train_worker", _supernet, _ray_worker),
]


class Poison:
    """Makes every ``nn.Linear`` of a model output NaN from the step after global step ``after``
    on; records the steps ``on_step`` saw."""

    def __init__(self, model: nn.Module, after: int) -> None:
        self.after, self.armed, self.seen = after, False, []
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.register_forward_hook(lambda mod, inputs, out: out * math.nan if self.armed else None)

    def on_step(self, step: int) -> None:
        self.seen.append(step)
        self.armed = step >= self.after


class Interrupt(Exception):
    pass


def interrupt_at(step: int, seen: list[int]) -> Callable[[int], None]:
    def on_step(s: int) -> None:
        seen.append(s)
        if s == step:
            raise Interrupt
    return on_step


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --------------------------------------------------------------------------- (a) divergence
@pytest.mark.parametrize("loop", LOOPS, ids=repr)
def test_nan_loss_stops_with_one_line_and_keeps_the_last_finite_checkpoint(loop, tmp_path):
    model, path = loop.build(), tmp_path / "state.pt"
    poison = Poison(model, after=STEPS + 1)  # NaN from the 2nd step of epoch 2, global step STEPS + 2
    with pytest.raises(TrainingDiverged) as info:
        loop.run(model, path, poison.on_step, False)
    message = str(info.value)
    assert message == (f"training diverged: loss nan at epoch 2, step {STEPS + 2}; "
                       f"the last finite checkpoint (epoch 1) is kept at {path}")
    assert isinstance(info.value, FloatingPointError) and "\n" not in message
    assert (info.value.epoch, info.value.step, info.value.checkpoint_epoch) == (2, STEPS + 2, 1)
    assert poison.seen == list(range(1, STEPS + 2))  # on_step never saw the NaN step
    assert any(not torch.isfinite(p).all() for p in model.parameters())  # the NaN step did run

    state = load_checkpoint(path)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(math.isfinite(v) for v in state["history"][0].values() if isinstance(v, float))
    for name, tensor in state["model"].items():
        assert torch.isfinite(tensor).all(), name
    # ... and it is the state an undisturbed run saves after epoch 1
    clean, clean_path = loop.build(), tmp_path / "clean.pt"
    with pytest.raises(Interrupt):
        loop.run(clean, clean_path, interrupt_at(STEPS + 1, []), False)
    assert_same_weights(state["model"], load_checkpoint(clean_path)["model"])


@pytest.mark.parametrize("loop", LOOPS[:1] + LOOPS[4:5], ids=repr)
def test_nan_in_the_first_epoch_names_the_missing_checkpoint(loop, tmp_path):
    model, path = loop.build(), tmp_path / "state.pt"
    poison = Poison(model, after=2)
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss nan at epoch 1, step 3; ") as info:
        loop.run(model, path, poison.on_step, False)
    if loop.name == "distill_students":  # keeps its starting point (epoch 0) too
        assert str(info.value).endswith(f"the last finite checkpoint (epoch 0) is kept at {path}")
        assert load_checkpoint(path)["epoch"] == 0
    else:
        assert str(info.value).endswith(f"no checkpoint was written to {path}")
        assert not path.exists()


# --------------------------------------------------------------------------- (b), (c) resume, on_step
@pytest.mark.parametrize("loop", LOOPS, ids=repr)
def test_resume_replays_the_straight_run_and_on_step_counts_on(loop, tmp_path):
    straight, straight_steps = loop.build(), []
    history = loop.run(straight, tmp_path / "straight.pt", straight_steps.append, False)
    assert straight_steps == list(range(1, EPOCHS * STEPS + 1))
    assert [r["epoch"] for r in history.epochs] == [1, 2]

    resumed, path, first = loop.build(), tmp_path / "resumed.pt", []
    with pytest.raises(Interrupt):
        loop.run(resumed, path, interrupt_at(STEPS + 2, first), False)  # mid epoch 2
    assert load_checkpoint(path)["epoch"] == 1
    again, second = loop.build(), []  # a fresh process: the weights come from the checkpoint
    rest = loop.run(again, path, second.append, True)
    assert first == list(range(1, STEPS + 3)) and second == list(range(STEPS + 1, EPOCHS * STEPS + 1))
    assert_same_weights(straight.state_dict(), again.state_dict())
    assert rest.epochs == history.epochs
    saved = load_checkpoint(path)
    assert saved["epoch"] == EPOCHS and saved["history"] == history.epochs


# --------------------------------------------------------------------------- fit itself
def _linear_fit(path: Path | None, on_step=None, resume: bool = False, lr: float = 0.1,
                epochs: int = 3) -> tuple[nn.Module, TrainHistory]:
    torch.manual_seed(0)
    model = nn.Linear(64, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    batches = TensorBatches(DATA, torch.device("cpu"))

    def run_epoch(epoch: Epoch) -> dict[str, Any]:
        total = 0.0
        for x, y in batches.iterate(16, epoch.generator(), drop_last=True):
            loss = nn.functional.cross_entropy(model(x.flatten(1)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            epoch.step(float(loss.detach()))
        return {"epoch": epoch.index + 1, "loss": total / STEPS}

    store = EpochCheckpoint(path, {"kind": "linear", "lr": lr}, "linear")
    return model, fit(run_epoch, model, optimizer, store, FitOptions(epochs, STEPS, 7, resume=resume, progress=False),
                      on_step)


def test_fit_resume_replays_and_steps_are_consecutive(tmp_path):
    straight_steps: list[int] = []
    straight, history = _linear_fit(tmp_path / "a.pt", straight_steps.append)
    assert straight_steps == list(range(1, 3 * STEPS + 1))
    first: list[int] = []
    with pytest.raises(Interrupt):
        _linear_fit(tmp_path / "b.pt", interrupt_at(2 * STEPS, first))  # last step of epoch 2: not saved
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 1
    second: list[int] = []
    resumed, rest = _linear_fit(tmp_path / "b.pt", second.append, resume=True)
    assert second == list(range(STEPS + 1, 3 * STEPS + 1))
    assert_same_weights(straight.state_dict(), resumed.state_dict())
    assert rest.epochs == history.epochs
    with pytest.raises(ValueError, match=r"differing: \['lr'\]"):
        _linear_fit(tmp_path / "b.pt", resume=True, lr=0.2)


def test_fit_stops_at_an_exploding_loss(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss (nan|inf) at epoch \d+, step \d+; ") as info:
        _linear_fit(tmp_path / "x.pt", lr=1e30)
    if info.value.checkpoint_epoch is not None:
        state = load_checkpoint(tmp_path / "x.pt")
        assert state["epoch"] == info.value.checkpoint_epoch == info.value.epoch - 1
        assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_fit_without_a_checkpoint_says_so():
    with pytest.raises(TrainingDiverged, match=r"; this run keeps no checkpoint$"):
        _linear_fit(None, lr=1e30)


def test_fit_stops_at_non_finite_weights_after_finite_losses(tmp_path):
    model = nn.Linear(2, 2)
    store = EpochCheckpoint(tmp_path / "w.pt", {}, "w")

    def run_epoch(epoch: Epoch) -> dict[str, Any]:
        for _ in range(3):
            epoch.step(0.5)
        if epoch.index == 1:
            with torch.no_grad():
                model.bias[0] = math.inf
        return {"epoch": epoch.index + 1, "loss": 0.5}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged) as info:
        fit(run_epoch, model, optimizer, store, FitOptions(3, 3, 0, progress=False))
    assert str(info.value) == ("training diverged: non-finite weights ('bias') at epoch 2, step 6; "
                               f"the last finite checkpoint (epoch 1) is kept at {tmp_path / 'w.pt'}")
    assert load_checkpoint(tmp_path / "w.pt")["epoch"] == 1


def test_diverged_error_survives_pickling_and_ray_wrapping():
    error = TrainingDiverged("training diverged: loss nan at epoch 2, step 9; x", 2, 9, math.nan, 1)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and (copy.epoch, copy.step, copy.checkpoint_epoch) == (2, 9, 1)

    class Wrapped(RuntimeError):  # what Ray Train raises: the worker's error as a cause, or by rank
        def __init__(self, cause: BaseException | None = None, failures: dict | None = None) -> None:
            super().__init__("Training failed")
            self.cause, self.worker_failures = cause, failures or {}

    assert diverged_cause(Wrapped(copy)) is copy
    assert diverged_cause(Wrapped(failures={1: Wrapped(copy)})) is copy
    try:
        try:
            raise copy
        except TrainingDiverged as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as outer:
        assert diverged_cause(outer) is copy
    assert diverged_cause(Wrapped(ValueError("other"))) is None


def test_supernet_checkpoint_format_is_unchanged(tmp_path):
    """Old checkpoints must still resume: the keys and the recipe of ``train``'s format."""
    model = _supernet()
    train(model, DATA, TRAIN, choose_path=model.sample_active, checkpoint_path=tmp_path / "s.pt", progress=False)
    state = load_checkpoint(tmp_path / "s.pt")
    assert list(state) == ["version", "train_config", "epoch", "model", "optimizer", "history"]
    assert state["version"] == 1 and state["train_config"] == TRAIN.to_json()
    assert supernet_checkpoint(None, TRAIN).recipe == {"version": 1, "train_config": TRAIN.to_json()}

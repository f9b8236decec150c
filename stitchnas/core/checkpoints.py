"""Epoch-boundary checkpoints of a training run, one format for every trainer.

A trainer (supernet, mixture, SN-Net, Learngene distillation, Ray Train workers' final copy)
writes after every epoch, atomically: the model, its optimizer(s), the per-epoch history, the
epoch reached, and the *recipe*, the keys that must be equal for a resume to continue the same
run (format kind and version, the training config, ...). Resuming checks the recipe and names
the keys that differ, so a changed option never silently mixes two runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stitchnas.core.io import atomic_torch_save, load_checkpoint

log = logging.getLogger(__name__)

Optimizers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]


def _optimizer_entry(optimizers: Optimizers) -> dict[str, Any]:
    # One optimizer is stored under "optimizer", several (a mixture's) under "optimizers".
    if isinstance(optimizers, torch.optim.Optimizer):
        return {"optimizer": optimizers.state_dict()}
    return {"optimizers": [o.state_dict() for o in optimizers]}


@dataclass(frozen=True)
class EpochCheckpoint:
    """Where one run checkpoints and what identifies its recipe.

    Attributes:
        path: The checkpoint file (None: the run keeps no checkpoint).
        recipe: Keys written into every checkpoint and required equal on resume.
        what: Names the run in messages, e.g. ``"stitch training"``.
    """

    path: Path | None
    recipe: dict[str, Any] = field(default_factory=dict)
    what: str = "training"

    def save(self, epoch: int, model: nn.Module, optimizers: Optimizers, history: list[dict[str, Any]]) -> None:
        """Write the state after ``epoch`` epochs (a no-op without a path)."""
        if self.path is None:
            return
        atomic_torch_save({**self.recipe, "epoch": int(epoch), "model": model.state_dict(),
                           **_optimizer_entry(optimizers), "history": list(history)}, self.path)

    def check(self, state: dict[str, Any]) -> None:
        """Raise a one-line ValueError naming the recipe keys ``state`` does not share."""
        differing = sorted(k for k, v in self.recipe.items() if state.get(k) != v)
        if differing:
            raise ValueError(
                f"checkpoint {self.path}: written for a different {self.what} recipe (differing: {differing}); "
                "start a new run folder or rerun with the same options"
            )

    def restore(self, model: nn.Module, optimizers: Optimizers, resume: bool) -> tuple[int, list[dict[str, Any]]]:
        """Load the checkpoint into ``model`` and ``optimizers`` when resuming one that exists.

        Returns the number of epochs already done and their history (0 and [] otherwise).
        """
        if self.path is None or not resume or not self.path.exists():
            return 0, []
        state = load_checkpoint(self.path)
        self.check(state)
        where = f"checkpoint {self.path}"
        several = not isinstance(optimizers, torch.optim.Optimizer)
        optimizer_key = "optimizers" if several else "optimizer"
        expected = (("model", dict), ("epoch", int), ("history", list), (optimizer_key, list if several else dict))
        for key, kind in expected:
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                raise ValueError(f"{where}: key {key!r} missing or not a {kind.__name__} "
                                 "(not written by this trainer); start a new run folder")
        load_state_strict(model, state["model"], where)
        try:
            if isinstance(optimizers, torch.optim.Optimizer):
                optimizers.load_state_dict(state["optimizer"])
            else:
                if len(state["optimizers"]) != len(optimizers):
                    raise ValueError(f"{len(state['optimizers'])} optimizer states for {len(optimizers)} optimizers")
                for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
                    optimizer.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise ValueError(f"{where}: key {optimizer_key!r} does not fit this run's optimizer "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        epoch = state["epoch"]
        if not 0 <= epoch:
            raise ValueError(f"{where}: key 'epoch' is {epoch}, expected >= 0")
        log.info("resumed %s from %s at epoch %d", self.what, self.path, epoch)
        return epoch, list(state["history"])


def load_state_strict(module: nn.Module, state: dict[str, Any], where: str) -> None:
    """``load_state_dict`` with one ValueError line naming ``where`` and the first missing,
    extra or mis-shaped key (and both shapes)."""
    expected = module.state_dict()
    for key, value in expected.items():
        got = state.get(key)
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"{where}: missing key {key!r} (model expects shape {tuple(value.shape)})")
        if got.shape != value.shape:
            raise ValueError(f"{where}: key {key!r} has shape {tuple(got.shape)}, model expects {tuple(value.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(f"{where}: unexpected key {extra[0]!r} (model has no such key)")
    module.load_state_dict(state)


def load_checkpoint_weights(module: nn.Module, path: Path, what: str) -> dict[str, Any]:
    """Load the ``model`` state of the epoch checkpoint at ``path`` into ``module``, strictly.

    Returns the whole checkpoint. Raises ValueError naming the file when it is not ``what``
    (e.g. ``"an SN-Net"``) checkpoint, or the first wrong key."""
    state = load_checkpoint(path)
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"checkpoint {path}: not {what} checkpoint (no 'model' state dict)")
    load_state_strict(module, state["model"], f"checkpoint {path}")
    return state


__all__ = ["EpochCheckpoint", "load_checkpoint_weights", "load_state_strict"]

"""Named model presets: small registered functions that merge ``dict(preset, **overrides)``
(timm's ``register_model``, without touching ``__all__``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

M = TypeVar("M")


class Presets(dict[str, Callable[..., M]], Generic[M]):
    """``name -> constructor``; :meth:`register` is the decorator that adds one by its name."""

    def register(self, fn: Callable[..., M]) -> Callable[..., M]:
        self[fn.__name__] = fn
        return fn

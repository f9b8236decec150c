"""Stratified splits, index for index the ones scikit-learn's ``train_test_split`` makes.

Every run folder written so far was split by ``sklearn.model_selection.train_test_split(indices,
test_size=..., stratify=labels, random_state=seed)``. Importing ``sklearn.model_selection``
costs about 2 s, a twentieth of the README's main job, so the same algorithm is written here
in numpy (scikit-learn 1.9's ``StratifiedShuffleSplit._iter_indices`` with
``_approximate_mode`` and ``_validate_shuffle_split``, one split, the same
``numpy.random.RandomState`` draws in the same order): the same seed gives the same indices,
and ``tests/test_data.py`` checks that against scikit-learn itself.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

__all__ = ["stratified_split"]


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class draw counts closest to ``class_counts``' proportions of ``n_draws``; ties in the
    remainders broken at random (scikit-learn's ``utils.extmath._approximate_mode``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _held_out_count(n_samples: int, held_out: float | int, what: str) -> int:
    if isinstance(held_out, Integral) and not isinstance(held_out, bool):
        if not 0 < held_out < n_samples:
            raise ValueError(f"{what}={held_out}: cannot split {n_samples} samples stratified by class "
                             f"(expected a count between 1 and {n_samples - 1})")
        return int(held_out)
    if isinstance(held_out, Real) and not isinstance(held_out, bool) and 0 < held_out < 1:
        return math.ceil(float(held_out) * n_samples)
    raise ValueError(f"{what}={held_out!r}: expected a fraction in (0, 1) or a count of samples")


def stratified_split(
    labels: np.ndarray, held_out: float | int, seed: int, what: str = "held_out"
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of ``range(len(labels))`` into (kept, held-out).

    Args:
        labels: ``(N,)`` class labels.
        held_out: Fraction in (0, 1) (rounded up to a count, as scikit-learn) or count of
            samples to hold out.
        seed: Seed of the split (``RandomState(seed % 2**32)``).
        what: The setting being applied, for the error message.

    Returns:
        Two sorted, disjoint ``int64`` index arrays that together cover ``range(N)``.

    Raises:
        ValueError: One line starting ``{what}={held_out}: cannot split N samples stratified by
            class`` when a class has one sample, or either side would get fewer samples than
            there are classes.
    """
    y = np.asarray(labels)
    n_samples = len(y)
    n_test = _held_out_count(n_samples, held_out, what)
    n_train = n_samples - n_test
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    prefix = f"{what}={held_out}: cannot split {n_samples} samples stratified by class"
    if class_counts.min() < 2:
        raise ValueError(f"{prefix} (classes {classes[class_counts < 2].tolist()} have a single sample)")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(f"{prefix} (both sides need at least one sample of each of the {len(classes)} "
                         f"classes; they would get {n_train} and {n_test})")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed % (2**32))
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    kept, held = [], []
    for i in range(len(classes)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        kept.append(members[: n_i[i]])
        held.append(members[n_i[i]: n_i[i] + t_i[i]])
    # scikit-learn shuffles both sides next; the sorted result does not depend on that.
    return np.sort(np.concatenate(kept)).astype(np.int64), np.sort(np.concatenate(held)).astype(np.int64)

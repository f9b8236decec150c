"""Ground truth for ranking studies: train configurations standalone with one fixed recipe.

Each (configuration, seed) pair is trained from scratch on the full training split and tested
on the test split. Its row is written to ``truth.csv`` as soon as it finishes, so an
interrupted run resumes without redoing or losing finished rows. The data split is the same
for every seed (``DataSpec.seed``); only initialisation and batch order change with the seed.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tqdm.auto import tqdm

from searchspace.pooling import PoolingConfig, PoolingSpace
from stitchnas.core.evaluation import accuracy
from stitchnas.core.io import ResultsTable, atomic_write_text, read_json
from stitchnas.core.records import OWN_JSON, from_json, to_json
from stitchnas.core.runs import prepare_run_dir
from stitchnas.data import DataSpec, load_data
from supernet.flops import pooling_flops
from supernet.networks import ModelSpec, build_model
from supernet.training import TrainConfig, train

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TRUTH_FILE = "truth.csv"
TRUTH_COLUMNS = ("key", "candidate", "label", "seed", "flops", "test_acc", "train_acc", "seconds")
# What each column of truth.csv must hold when it is read back (the writer's ResultsTable
# stores text): "int" an integer, "number" any float (nan/inf too: a diverged run), "number?" a
# number or empty (NaN; columns nothing ranks by), "text" anything.
_TRUTH_CELLS = {"key": "text", "candidate": "int", "label": "text", "seed": "int", "flops": "number",
                "test_acc": "number", "train_acc": "number?", "seconds": "number?"}


@dataclass(frozen=True)
class TruthConfig:
    space: PoolingSpace = field(metadata=OWN_JSON)
    data: DataSpec
    train: TrainConfig
    seeds: tuple[int, ...] = (0, 1)
    candidates: tuple[int, ...] | None = None  # configuration indices; None = all

    json_kind: ClassVar[str] = "pooling_truth"
    json_keep_none: ClassVar[bool] = True  # "candidates": null

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("ground truth 'seeds': expected at least one seed")
        if self.candidates is not None:
            for i in self.candidates:
                self.space.config(i)  # validates the index

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "ground-truth run config") -> TruthConfig:
        """Strict decoding (:func:`stitchnas.core.records.from_json`): one line naming ``where``
        and the first missing, unknown or mistyped field."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        return from_json(cls, data, where)

    def configurations(self) -> list[PoolingConfig]:
        if self.candidates is None:
            return self.space.configurations()
        return [self.space.config(i) for i in self.candidates]


def run_ground_truth(cfg: TruthConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train every (configuration, seed) pair not yet in ``truth.csv``; returns the folder."""
    out = prepare_run_dir(out_dir, cfg.to_json(), resume)
    data = load_data(cfg.data)
    cfg.space.check_input_size(data.input_size)
    spec = ModelSpec(data.in_chans, data.num_classes)
    table = ResultsTable(out / TRUTH_FILE, TRUTH_COLUMNS)
    done = table.done_keys("key")
    jobs = [(c, s) for c in cfg.configurations() for s in cfg.seeds if f"{cfg.space.index(c)}:{s}" not in done]
    log.info("ground truth: %d runs to do, %d already done (%s)", len(jobs), len(done), out / TRUTH_FILE)
    for config, seed in tqdm(jobs, desc="ground truth", unit="run", disable=not progress):
        start = time.perf_counter()
        train_cfg = replace(cfg.train, seed=seed)
        torch.manual_seed(seed)
        model = build_model(cfg.space, config, spec)
        history = train(model, data.train, train_cfg, progress=False)
        index = cfg.space.index(config)
        table.append({
            "key": f"{index}:{seed}", "candidate": str(index), "label": cfg.space.describe(config), "seed": seed,
            "flops": pooling_flops(cfg.space, config, data.input_size, data.in_chans, data.num_classes),
            "test_acc": accuracy(model, data.test, device=train_cfg.device),
            "train_acc": history.epochs[-1]["train_acc"],
            "seconds": round(time.perf_counter() - start, 2),
        })
    write_summary(out)
    return out


def write_summary(out: Path) -> Path:
    """``truth_summary.csv``: mean and standard deviation over seeds per configuration."""
    rows = read_truth_table(out / TRUTH_FILE)
    summary = (rows.groupby(["candidate", "label", "flops"], as_index=False)["test_acc"]
               .agg(test_acc="mean", test_std="std", seeds="count")
               .sort_values("candidate"))
    path = out / "truth_summary.csv"
    atomic_write_text(path, summary.to_csv(index=False))
    return path


def _cell(text: str, kind: str) -> Any:
    """One ``truth.csv`` cell as its column's type; ValueError (bare) when it is not one."""
    if kind == "int":
        return int(text)
    if kind == "number" or (kind == "number?" and text.strip()):
        return float(text)
    return float("nan") if kind == "number?" else text


def read_truth_table(path: str | Path) -> pd.DataFrame:
    """One ``truth.csv`` as a DataFrame with typed columns (``candidate`` and ``seed`` integers,
    ``flops``, ``test_acc``, ``train_acc`` and ``seconds`` floats).

    Raises:
        ValueError: One line naming the file, the line and the column: a missing file, a
            header without one of :data:`TRUTH_COLUMNS`, a row with the wrong number of cells
            or a cell that is not of its column's type (``line 3, column 'test_acc': expected a
            number, got 'high'``).
    """
    import pandas as pd

    path = Path(path)
    where = f"ground truth {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found (expected a 'stitchnas truth' folder)") from None
    except IsADirectoryError:
        raise ValueError(f"{where}: is a folder, expected a CSV file") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: not a text CSV file ({err.reason} at byte {err.start})") from None
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise ValueError(f"{where}: not a valid CSV file ({err})") from None
    if not records:
        raise ValueError(f"{where}: empty file, expected the header {','.join(TRUTH_COLUMNS)}")
    header = records[0]
    for column in TRUTH_COLUMNS:
        if column not in header:
            raise ValueError(f"{where}: line 1 (the header): no column {column!r} "
                             f"(expected the header {','.join(TRUTH_COLUMNS)})")
    positions = {column: header.index(column) for column in TRUTH_COLUMNS}
    rows: dict[str, list[Any]] = {column: [] for column in TRUTH_COLUMNS}
    for line, record in enumerate(records[1:], start=2):
        if not record:
            continue  # a blank line
        if len(record) != len(header):
            raise ValueError(f"{where}: line {line} has {len(record)} cells, expected {len(header)} (one per column "
                             "of the header)")
        for column, kind in _TRUTH_CELLS.items():
            cell = record[positions[column]]
            try:
                rows[column].append(_cell(cell, kind))
            except ValueError:
                expected = "an integer" if kind == "int" else "a number"
                raise ValueError(f"{where}: line {line}, column {column!r}: expected {expected}, "
                                 f"got {cell!r:.40}") from None
    frame = pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))
    dtypes = {"int": "int64", "number": "float64", "number?": "float64", "text": "object"}
    return frame.astype({column: dtypes[kind] for column, kind in _TRUTH_CELLS.items()})


def read_truth_rows(paths: str | Path | Sequence[str | Path], space: PoolingSpace | None = None) -> pd.DataFrame:
    """All rows of one or more ground-truth folders (e.g. one per seed) as a DataFrame.

    With ``space``, every folder must have been made for that space.
    """
    import pandas as pd

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("ground truth: expected at least one folder")
    frames = []
    for path in map(Path, paths):
        folder = path if path.is_dir() else path.parent
        table_path = folder / TRUTH_FILE
        if not table_path.exists():
            raise ValueError(f"ground truth {table_path}: file not found (expected a 'stitchnas truth' folder)")
        run_path = folder / "run_config.json"
        run = TruthConfig.from_json(read_json(run_path, "ground-truth run config"),
                                    f"ground-truth run config {run_path}")
        if space is not None:
            truth_space = run.space
            if truth_space != space:
                raise ValueError(
                    f"ground truth {folder}: made for space {truth_space.name!r} ({truth_space.dumps()}), "
                    f"not for the search's space {space.name!r}"
                )
        frames.append(read_truth_table(table_path))
    rows = pd.concat(frames, ignore_index=True)
    # Folders may overlap (two workers meeting in the middle of one list): training is
    # deterministic, so a repeated (configuration, seed) must repeat its accuracy exactly.
    repeated = rows[rows["key"].duplicated(keep=False)]
    if not repeated.groupby("key")["test_acc"].nunique().le(1).all():
        raise ValueError(f"ground truth {', '.join(map(str, paths))}: "
                         "one (configuration, seed) has different accuracies")
    return rows.drop_duplicates("key").reset_index(drop=True)


def load_truth(paths: str | Path | Sequence[str | Path], space: PoolingSpace | None = None,
               complete: bool = True) -> dict[str, float]:
    """Mean test accuracy per candidate over one or more ground-truth folders.

    With ``space``, the tables must come from that space and (unless ``complete`` is False)
    cover all of its configurations.
    """
    rows = read_truth_rows(paths, space)
    folder = ", ".join(map(str, [paths] if isinstance(paths, (str, Path)) else paths))
    means = rows.groupby("candidate")["test_acc"].mean()
    truth = {str(k): float(v) for k, v in means.items() if math.isfinite(v)}
    if space is not None and complete:
        missing = [str(i) for i in range(len(space)) if str(i) not in truth]
        if missing:
            shown = ", ".join(space.describe(space.config(int(m))) for m in missing[:5])
            raise ValueError(
                f"ground truth {folder}: {len(missing)} of {len(space)} configurations missing ({shown}"
                f"{', ...' if len(missing) > 5 else ''}); finish it with --resume or pass a complete table"
            )
    return truth


def seed_noise(paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """Spread across configurations against noise across seeds, in accuracy points, and how
    well the truth agrees with itself: ``seed_kendall_tau`` (:func:`seed_agreement`, one seed
    against another), ``half_kendall_tau`` (:func:`half_agreement`, the mean of half the seeds
    against the mean of the other half) and ``agreement_by_seeds`` (``{k: tau}``,
    :func:`mean_agreement` for k = 1 .. seeds // 2: a k-seed mean against another)."""
    rows = read_truth_rows(paths)
    means = rows.groupby("candidate")["test_acc"].mean()
    # Seed noise only from configurations trained with more than one seed.
    repeated = rows.groupby("candidate").filter(lambda g: len(g) > 1).groupby("candidate")["test_acc"]
    ranges = repeated.max() - repeated.min()
    by_seed = rows.pivot_table(index="candidate", columns="seed", values="test_acc")
    n = int(by_seed.shape[1])
    # each k once: one seed a side is seed_agreement, half the seeds a side half_agreement
    agreement = {k: seed_agreement(by_seed) if k == 1 else mean_agreement(by_seed, k) for k in range(1, n // 2 + 1)}
    return {
        "configs": int(len(means)),
        "configs_with_seeds": int(repeated.ngroups),
        "spread": float(means.max() - means.min()),
        "mean_seed_std": float(repeated.std().mean()) if repeated.ngroups else float("nan"),
        "max_seed_range": float(ranges.max()) if repeated.ngroups else float("nan"),
        "mean_seed_range": float(ranges.mean()) if repeated.ngroups else float("nan"),
        "seed_kendall_tau": agreement.get(1, float("nan")),
        "seeds": n,
        "half_kendall_tau": agreement.get(n // 2, float("nan")),
        "agreement_by_seeds": agreement,
    }


def seed_agreement(by_seed: pd.DataFrame) -> float:
    """Mean Kendall tau between the rankings two seeds give (over every pair of seeds and the
    configurations both trained; NaN with fewer than two seeds). How well the ground truth
    agrees with itself: a search's tau against it can hardly exceed this by much."""
    return mean_agreement(by_seed, 1, max_pairs=max(1, math.comb(by_seed.shape[1], 2)))  # every pair


def half_agreement(by_seed: pd.DataFrame) -> float:
    """Kendall tau between the mean accuracy over one half of the seeds and over the other,
    averaged over every way to split the seeds into two halves (the odd one out, with an odd
    count, goes unused): :func:`mean_agreement` with ``n // 2`` seeds a side. NaN with fewer than
    two seeds. With two seeds it is the seed-to-seed tau; with 2k, how well a k-seed mean ranks
    like another k-seed mean: the agreement of a truth averaged over half the seeds (a truth of
    all of them agrees better still)."""
    return mean_agreement(by_seed, len(by_seed.columns) // 2)


def mean_agreement(by_seed: pd.DataFrame, k: int, max_pairs: int = 2000) -> float:
    """Mean Kendall tau between the mean accuracies of two disjoint sets of ``k`` seeds each
    (configurations every seed of both sets trained), over every such pair of sets, or over
    ``max_pairs`` of them drawn with a fixed seed when there are more. NaN when ``2 k`` exceeds
    the seeds or ``k < 1``. ``k = 1`` is :func:`seed_agreement`; the curve over ``k`` says how
    many seeds a truth needs to agree with itself to a given tau."""
    import random
    from itertools import combinations

    import numpy as np

    from stitchnas.studies.ranking import kendall_tau

    values = by_seed.to_numpy(dtype=float)
    n = values.shape[1]
    if k < 1 or 2 * k > n:
        return float("nan")
    pairs = [(a, b) for a in combinations(range(n), k)
             for b in combinations([c for c in range(n) if c not in a], k) if a < b]
    if len(pairs) > max_pairs:
        pairs = random.Random(0).sample(pairs, max_pairs)
    taus = []
    for a, b in pairs:
        mean_a, mean_b = values[:, list(a)].mean(axis=1), values[:, list(b)].mean(axis=1)  # NaN if a seed lacks it
        both = np.isfinite(mean_a) & np.isfinite(mean_b)
        if both.sum() >= 3:
            taus.append(kendall_tau(mean_a[both].tolist(), mean_b[both].tolist()))
    return float(sum(taus) / len(taus)) if taus else float("nan")

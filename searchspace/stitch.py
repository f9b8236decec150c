"""Stitch configuration spaces for Stitchable Neural Networks (Pan et al., "Stitchable Neural
Networks", CVPR 2023, arXiv 2302.06586; official code ziplab/SN-Net).

Every configuration is a *route*: a tuple of segments ``(anchor, first_block, last_block)``
(inclusive block ranges) with one stitching layer between consecutive segments. An anchor on
its own is the single segment ``(a, 0, depth_a - 1)``; an SN-Net stitch at position ``(j, k)``
between anchors ``a`` and ``b`` is ``((a, 0, j), (b, k, depth_b - 1))``. Routes with more
segments (SN-Net's three-anchor chains, SN-Netv2's FSF/SFS) use the same representation.

A stitching layer is identified by ``(in_anchor, out_anchor, window)``; every position inside
one sliding window of a pair shares it (SN-Net ``paired_stitching``).

Unequal depths (our rule). SN-Net's ``unpaired_stitching`` (Swin/ResNet stages) keeps the
positions ``(m(k), k)``, k >= 1, with ``m`` the nearest-interpolation map below, and zips them
with the per-block map as layer ids, so positions and layers fall out of step. Here instead the
shallower anchor's blocks are put on the deeper anchor's index scale by nearest interpolation
(deep block ``i`` <-> shallow block ``m(i) = floor(i * d / D)``, what
``torch.nn.functional.interpolate(mode="nearest")`` computes). A shallow block's *output*
stands for the output of the last deep block mapped to it, a shallow block's *input* for the
input of the first. SN-Net's paired rule (the sliding window over the deeper anchor's ``D``
blocks) is then applied to those mapped indices; windows left without positions are dropped
and the rest renumbered from 0. With equal depths the map is the identity and this is exactly
``paired_stitching``; 6 -> 18 blocks gives 17 positions and 11 layers.

Anchors with stages (CNNs) are stitched inside a stage only (SN-Net README: "stitch within a
stage"), and never into the first block of a later stage, whose input has the previous
stage's resolution and width.

Pure Python: no torch here.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

STITCH_FORMAT_VERSION = 1


class Segment(NamedTuple):
    """Blocks ``first..last`` (inclusive) of anchor ``anchor``."""

    anchor: int
    first: int
    last: int


@dataclass(frozen=True)
class PairStitching:
    """Stitch positions between two anchors (SN-Net's ``stitch_cfgs`` / ``stitching_layers_mappings``).

    ``positions[i] = (j, k)``: front blocks ``0..j``, stitching layer ``windows[i]``, end blocks
    ``k..end``.
    """

    positions: tuple[tuple[int, int], ...]
    windows: tuple[int, ...]
    num_windows: int


@dataclass(frozen=True)
class StitchConfig:
    """One configuration: its id in the space, its route and the window of each junction."""

    id: int
    route: tuple[Segment, ...]
    windows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if any(not isinstance(seg, (tuple, list)) or len(seg) != 3 for seg in self.route):
            raise ValueError(f"stitch config 'route': expected (anchor, first, last) segments, got {self.route!r}")
        route = tuple(Segment(*(int(v) for v in seg)) for seg in self.route)
        object.__setattr__(self, "route", route)
        object.__setattr__(self, "windows", tuple(int(w) for w in self.windows))
        if not route:
            raise ValueError("stitch config 'route': expected at least one segment, got none")
        if len(self.windows) != len(route) - 1:
            raise ValueError(
                f"stitch config 'windows': expected {len(route) - 1} (one per junction), got {len(self.windows)}"
            )
        for seg in route:
            if seg.first < 0 or seg.last < seg.first:
                raise ValueError(f"stitch config 'route': segment {tuple(seg)} is empty or negative")

    @property
    def anchors(self) -> tuple[int, ...]:
        return tuple(seg.anchor for seg in self.route)

    @property
    def is_anchor(self) -> bool:
        return len(self.route) == 1

    def junctions(self) -> list[tuple[int, int, int, int, int]]:
        """``(in_anchor, out_anchor, j, k, window)`` for every stitching layer on the route."""
        return [
            (a.anchor, b.anchor, a.last, b.first, w)
            for a, b, w in zip(self.route[:-1], self.route[1:], self.windows)
        ]

    def num_blocks(self) -> int:
        return sum(seg.last - seg.first + 1 for seg in self.route)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "route": [list(seg) for seg in self.route], "windows": list(self.windows)}

    @classmethod
    def from_json(cls, data: Any) -> StitchConfig:
        if not isinstance(data, dict) or not {"id", "route"} <= set(data):
            raise ValueError(f"stitch config: expected an object with 'id' and 'route', got {data!r}")
        route = data["route"]
        if not isinstance(route, list) or not all(
            isinstance(s, (list, tuple)) and len(s) == 3 and all(isinstance(v, int) for v in s) for s in route
        ):
            raise ValueError(f"stitch config 'route': expected a list of [anchor, first, last] ints, got {route!r}")
        return cls(int(data["id"]), tuple(Segment(*s) for s in route), tuple(data.get("windows", ())))


@dataclass(frozen=True)
class StitchLayerSpec:
    """One stitching layer shared by the ``positions`` of one window of one anchor pair."""

    pair: tuple[int, int]  # (smaller index, larger index), whatever the direction
    window: int
    in_anchor: int
    out_anchor: int
    positions: tuple[tuple[int, int], ...]

    @property
    def key(self) -> str:
        """A module-dict-safe name, e.g. ``"0_1_6"``."""
        return f"{self.in_anchor}_{self.out_anchor}_{self.window}"


# --------------------------------------------------------------------------- position rules
def _sliding_windows(depth: int, kernel_size: int, stride: int) -> tuple[list[tuple[int, int]], list[int], int]:
    """SN-Net's ``paired_stitching`` loop: every (j, k) inside a window, first window wins."""
    positions: list[tuple[int, int]] = []
    windows: list[int] = []
    seen: set[tuple[int, int]] = set()
    window = -1
    for start in range(0, depth, stride):
        ids = range(start, min(start + kernel_size, depth))
        new = [(j, k) for j in ids for k in ids if (j, k) not in seen]
        if new:
            window += 1
            for pos in new:
                seen.add(pos)
                positions.append(pos)
                windows.append(window)
    return positions, windows, window + 1


def _check_depths(front_depth: int, end_depth: int, kernel_size: int, stride: int) -> None:
    values = {"front_depth": front_depth, "end_depth": end_depth, "kernel_size": kernel_size, "stride": stride}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"stitching '{name}': expected a positive int, got {value!r}")


def unpaired_stitching(front_depth: int, end_depth: int, kernel_size: int = 2, stride: int = 1) -> PairStitching:
    """Positions between anchors of different depths (the module docstring gives the rule)."""
    _check_depths(front_depth, end_depth, kernel_size, stride)
    deep, shallow = max(front_depth, end_depth), min(front_depth, end_depth)
    to_shallow = [i * shallow // deep for i in range(deep)]  # nearest interpolation
    last_deep = {s: max(i for i, m in enumerate(to_shallow) if m == s) for s in range(shallow)}
    first_deep = {s: min(i for i, m in enumerate(to_shallow) if m == s) for s in range(shallow)}
    # deep-scale coordinate of each front exit / end entry (both maps are one-to-one)
    exit_of = {(last_deep[j] if front_depth < deep else j): j for j in range(front_depth)}
    entry_of = {(first_deep[k] if end_depth < deep else k): k for k in range(end_depth)}
    deep_pos, deep_win, _ = _sliding_windows(deep, kernel_size, stride)
    found = [
        (w, exit_of[dj], entry_of[dk])
        for (dj, dk), w in zip(deep_pos, deep_win)
        if dj in exit_of and dk in entry_of
    ]
    renumber = {w: i for i, w in enumerate(dict.fromkeys(w for w, _, _ in found))}
    return PairStitching(
        positions=tuple((j, k) for _, j, k in found),
        windows=tuple(renumber[w] for w, _, _ in found),
        num_windows=len(renumber),
    )


def paired_stitching(front_depth: int, end_depth: int, kernel_size: int = 2, stride: int = 1) -> PairStitching:
    """SN-Net's ``paired_stitching``: a ``kernel_size`` window slides over the blocks with
    ``stride``; every (j, k) inside a window is a position and uses that window's layer.

    Depth 12 / 12 gives 34 positions and 11 windows. Unequal depths go through
    :func:`unpaired_stitching`.
    """
    _check_depths(front_depth, end_depth, kernel_size, stride)
    if front_depth != end_depth:
        return unpaired_stitching(front_depth, end_depth, kernel_size, stride)
    positions, windows, num = _sliding_windows(front_depth, kernel_size, stride)
    return PairStitching(tuple(positions), tuple(windows), num)


def staged_stitching(
    front_stages: Sequence[int], end_stages: Sequence[int], kernel_size: int = 2, stride: int = 1
) -> PairStitching:
    """Positions stage by stage (global block indices), skipping entries into the first block of
    a later stage; windows are numbered across stages."""
    if len(front_stages) != len(end_stages):
        raise ValueError(
            f"stitching stages: expected equal stage counts, got {list(front_stages)} and {list(end_stages)}"
        )
    positions: list[tuple[int, int]] = []
    windows: list[int] = []
    f_off = e_off = next_window = 0
    for stage, (fd, ed) in enumerate(zip(front_stages, end_stages)):
        local = paired_stitching(fd, ed, kernel_size, stride)
        kept = [(p, w) for p, w in zip(local.positions, local.windows) if stage == 0 or p[1] > 0]
        renumber = {w: next_window + i for i, w in enumerate(dict.fromkeys(w for _, w in kept))}
        for (j, k), w in kept:
            positions.append((j + f_off, k + e_off))
            windows.append(renumber[w])
        next_window += len(renumber)
        f_off += fd
        e_off += ed
    return PairStitching(tuple(positions), tuple(windows), next_window)


# --------------------------------------------------------------------------- the space
class RouteTable:
    """Sequence behaviour shared by the stitch spaces (SN-Net's and SN-Netv2's).

    A subclass provides ``_configs`` (every configuration, id order), ``names`` (one per anchor),
    ``validate`` and ``to_json``.
    """

    names: tuple[str, ...]

    @property
    def _configs(self) -> tuple[StitchConfig, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self, config: StitchConfig | int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._configs)

    def __iter__(self) -> Iterator[StitchConfig]:
        return iter(self._configs)

    def configurations(self) -> list[StitchConfig]:
        return list(self._configs)

    def config(self, config_id: int) -> StitchConfig:
        self.validate(config_id)
        return self._configs[config_id]

    def anchor_config(self, anchor: int) -> StitchConfig:
        return self._configs[anchor]

    def _resolve(self, config: StitchConfig | int) -> StitchConfig:
        if isinstance(config, StitchConfig):
            self.validate(config)
            return config
        return self.config(config)

    def sample(self, rng: random.Random) -> StitchConfig:
        """A uniformly random configuration drawn with the caller's seeded generator (see
        :mod:`searchspace.samplers` for FLOPs-grouped sampling)."""
        return self._configs[rng.randrange(len(self))]

    def stitching_layers(self) -> list[StitchLayerSpec]:
        """Every distinct stitching layer the configurations use, with the positions sharing it,
        in first-use order."""
        return list(self._layers)

    @cached_property
    def _layers(self) -> tuple[StitchLayerSpec, ...]:
        shared: dict[tuple[int, int, int], dict[tuple[int, int], None]] = {}
        for config in self._configs:
            for a, b, j, k, w in config.junctions():
                shared.setdefault((a, b, w), {})[(j, k)] = None
        return tuple(
            StitchLayerSpec((min(a, b), max(a, b)), w, a, b, tuple(positions))
            for (a, b, w), positions in shared.items()
        )

    def describe(self, config: StitchConfig | int) -> str:
        """E.g. ``"deit_tiny[0-7] -> deit_small[7-11]"``."""
        config = self._resolve(config)
        return " -> ".join(f"{self.names[s.anchor]}[{s.first}-{s.last}]" for s in config.route)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


@dataclass(frozen=True)
class StitchSpace(RouteTable):
    """SN-Net configurations for a family of anchors ordered small -> large.

    Args:
        depths: number of blocks of every anchor.
        names: anchor names (default ``anchor0``, ``anchor1``, ...).
        stage_depths: blocks per stage for every anchor (CNNs); ``None`` = one stage each.
        nearest: stitch only neighbouring anchors (SN-Net's ``nearest_stitching``). With
            ``False`` every increasing anchor sequence is a route, chaining pair positions as
            SN-Net's code does for three anchors (3 DeiTs -> 732 configurations).
        kernel_size, stride: the sliding window of ``paired_stitching``.
        name: identifier stored in exported configs.

    Configuration ids: anchors first (0..A-1), then each anchor sequence in
    ``itertools.combinations`` order, positions in enumeration order -- SN-Net's order, so
    three DeiTs give its 71 ids.
    """

    depths: tuple[int, ...]
    names: tuple[str, ...] = ()
    stage_depths: tuple[tuple[int, ...], ...] | None = None
    nearest: bool = True
    kernel_size: int = 2
    stride: int = 1
    name: str = "snnet"

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(self.depths))
        if not self.depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.depths):
            raise ValueError(f"stitch space 'depths': expected positive ints, got {self.depths!r}")
        names = tuple(self.names) or tuple(f"anchor{i}" for i in range(len(self.depths)))
        object.__setattr__(self, "names", names)
        if len(names) != len(self.depths) or len(set(names)) != len(names):
            raise ValueError(f"stitch space 'names': expected {len(self.depths)} distinct names, got {list(names)}")
        if self.stage_depths is not None:
            stages = tuple(tuple(s) for s in self.stage_depths)
            object.__setattr__(self, "stage_depths", stages)
            if len(stages) != len(self.depths) or any(sum(s) != d for s, d in zip(stages, self.depths)):
                raise ValueError(
                    f"stitch space 'stage_depths': expected one tuple per anchor summing to its depth "
                    f"{list(self.depths)}, got {[list(s) for s in stages]}"
                )
            if len({len(s) for s in stages}) != 1 or any(n < 1 for s in stages for n in s):
                raise ValueError(
                    "stitch space 'stage_depths': expected equal stage counts of positive depths, "
                    f"got {[list(s) for s in stages]}"
                )
        for key in ("kernel_size", "stride"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"stitch space '{key}': expected a positive int, got {value!r}")

    # ----------------------------------------------------------------- structure
    @property
    def num_anchors(self) -> int:
        return len(self.depths)

    def stages_of(self, anchor: int) -> tuple[int, ...]:
        return self.stage_depths[anchor] if self.stage_depths is not None else (self.depths[anchor],)

    def pair_stitching(self, front: int, end: int) -> PairStitching:
        """Positions and windows between anchors ``front`` and ``end``."""
        if (front, end) not in self._pairs:
            self._pairs[(front, end)] = staged_stitching(
                self.stages_of(front), self.stages_of(end), self.kernel_size, self.stride
            )
        return self._pairs[(front, end)]

    @cached_property
    def _pairs(self) -> dict[tuple[int, int], PairStitching]:
        return {}  # filled lazily by pair_stitching (cached_property writes __dict__, frozen or not)

    def anchor_sequences(self) -> list[tuple[int, ...]]:
        """Anchor sequences with at least one stitch, in id order."""
        n = self.num_anchors
        if self.nearest:
            return [(i, i + 1) for i in range(n - 1)]
        return [c for r in range(2, n + 1) for c in itertools.combinations(range(n), r)]

    @cached_property
    def _configs(self) -> tuple[StitchConfig, ...]:
        configs = [StitchConfig(i, (Segment(i, 0, d - 1),)) for i, d in enumerate(self.depths)]
        for seq in self.anchor_sequences():
            for route, windows in self._chains(seq):
                configs.append(StitchConfig(len(configs), route, windows))
        return tuple(configs)

    def _chains(self, seq: tuple[int, ...]) -> Iterator[tuple[tuple[Segment, ...], tuple[int, ...]]]:
        """Routes through ``seq``; a middle segment must keep at least one block (SN-Net's
        ``middle_id >= last_out_id``)."""

        def extend(
            i: int, start: int, route: tuple[Segment, ...], windows: tuple[int, ...]
        ) -> Iterator[tuple[tuple[Segment, ...], tuple[int, ...]]]:
            a, b = seq[i], seq[i + 1]
            pair = self.pair_stitching(a, b)
            for (j, k), w in zip(pair.positions, pair.windows):
                if j < start:
                    continue
                head = route + (Segment(a, start, j),)
                if i + 2 == len(seq):
                    yield head + (Segment(b, k, self.depths[b] - 1),), windows + (w,)
                else:
                    yield from extend(i + 1, k, head, windows + (w,))

        yield from extend(0, 0, (), ())

    @cached_property
    def _index(self) -> dict[tuple[tuple[Segment, ...], tuple[int, ...]], int]:
        return {(c.route, c.windows): c.id for c in self._configs}

    def index(self, config: StitchConfig) -> int:
        self.validate(config)
        return self._index[(config.route, config.windows)]

    def validate(self, config: StitchConfig | int) -> None:
        """Raise ``ValueError`` if ``config`` (an id or a config) is not in this space."""
        if isinstance(config, StitchConfig):
            found = self._index.get((config.route, config.windows))
            if found is None:
                raise ValueError(
                    f"stitch config route {[tuple(s) for s in config.route]} windows {list(config.windows)}: "
                    f"not in space {self.name!r}"
                )
            if found != config.id:
                raise ValueError(
                    f"stitch config 'id': route belongs to id {found} in space {self.name!r}, got {config.id}"
                )
            return
        if isinstance(config, bool) or not isinstance(config, int) or not 0 <= config < len(self):
            raise ValueError(f"stitch config id {config!r}: unknown, expected an int in 0..{len(self) - 1}")

    # ----------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "stitch",
            "format_version": STITCH_FORMAT_VERSION,
            "name": self.name,
            "depths": list(self.depths),
            "names": list(self.names),
            "stage_depths": [list(s) for s in self.stage_depths] if self.stage_depths is not None else None,
            "nearest": self.nearest,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
        }

    @classmethod
    def from_json(cls, data: Any) -> StitchSpace:
        if not isinstance(data, dict):
            raise ValueError(f"stitch space: expected a JSON object, got {type(data).__name__}")
        if data.get("kind") != "stitch":
            raise ValueError(f"stitch space 'kind': expected 'stitch', got {data.get('kind')!r}")
        if data.get("format_version") != STITCH_FORMAT_VERSION:
            raise ValueError(
                f"stitch space 'format_version': expected {STITCH_FORMAT_VERSION}, got {data.get('format_version')!r}"
            )
        known = {"name", "depths", "names", "stage_depths", "nearest", "kernel_size", "stride"}
        unknown = set(data) - known - {"kind", "format_version"}
        if unknown:
            raise ValueError(f"stitch space: unknown fields {sorted(unknown)}")
        if "depths" not in data or not isinstance(data["depths"], list):
            raise ValueError(f"stitch space 'depths': expected a list of ints, got {data.get('depths')!r}")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["depths"] = tuple(kwargs["depths"])
        kwargs["names"] = tuple(kwargs.get("names") or ())
        if kwargs.get("stage_depths") is not None:
            kwargs["stage_depths"] = tuple(tuple(s) for s in kwargs["stage_depths"])
        return cls(**kwargs)


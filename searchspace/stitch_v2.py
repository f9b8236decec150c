"""Two-way stitch space of SN-Netv2 (He et al., "Stitched ViTs are Flexible Vision Backbones",
arXiv 2307.00154, ECCV 2024; official code ziplab/SN-Netv2, ``get_stitch_configs_bidirection``).

Two anchors: anchor 0 is the small / fast one, anchor 1 the large / slow one. Configurations
reuse :class:`~searchspace.stitch.StitchConfig` routes of inclusive block ranges:

* the two anchors alone;
* **FS** (Fast-to-Slow, SN-Netv2 ``sl``): small blocks ``0..`` then large blocks;
* **SF** (Slow-to-Fast, ``ls``): large blocks ``0..`` then small blocks;
* **SFS** (``lsl``): large, small, large -- one SF stitch, then one FS stitch further on;
* **FSF** (``sls``): small, large, small -- one FS stitch, then one SF stitch further on.

Stitch boundaries (our rule for any depths). Let ``c = min(d0, d1)`` (the shallower anchor)
and ``D = max(d0, d1)``. The deeper anchor's block ``i`` maps to the shallower anchor's block
``floor(i * c / D)`` -- nearest-index interpolation, exactly the
``torch.nn.functional.interpolate(mode="nearest")`` map SN-Netv2 uses. Stitches happen only at
the ``b = c - 1`` interior block boundaries ``s = 0..c-2`` of the shallower anchor, which lie

* after ``split(shallow, s) = s + 1`` blocks of the shallower anchor, and
* after ``split(deep, s) = ceil((s + 1) * D / c)`` blocks of the deeper anchor (the first deep
  block mapped to shallow block ``s + 1``; equivalently one past the last deep block mapped to
  shallow block ``s``).

(With ``d0 == d1`` both splits are ``s + 1``.) Boundary ``s`` carries one S->L layer, used
by the FS position ``(split(0, s) - 1, split(1, s))``, and one L->S layer, used by the SF
position ``(split(1, s) - 1, split(0, s))``; three-segment routes reuse them at two
boundaries ``s1 < s2``, so every segment keeps at least one block:

* FS at ``s``:  small ``[0, split0(s))``, large ``[split1(s), d1)``;
* SF at ``s``:  large ``[0, split1(s))``, small ``[split0(s), d0)``;
* SFS at ``s1 < s2``: large ``[0, split1(s1))``, small ``[split0(s1), split0(s2))``,
  large ``[split1(s2), d1)``;
* FSF at ``s1 < s2``: small ``[0, split0(s1))``, large ``[split1(s1), split1(s2))``,
  small ``[split0(s2), d0)``.

Hence ``2 + b + b + C(b, 2) + C(b, 2) = 2 + b * (b + 1)`` configurations, which depend only on
the shallower depth: 12 & 24 (DeiT3-S/L) -> b = 11 -> 2 + 11 + 11 + 55 + 55 = 134, as in
SN-Netv2; 12 & 12 and 12 & 18 also give 134; 6 & 12 -> b = 5 -> 2 + 5 + 5 + 10 + 10 = 32.
For ``d1 in {d0, 2 * d0}`` (the only ratios SN-Netv2's code supports: its ``(i + 1) * d1 // d0``
and odd-``i`` rules) this is exactly SN-Netv2's set: FS small ``0..i`` then large from
``(i + 1) * d1 / d0``; SF large ``0..i`` for odd ``i`` then small from ``floor(i * d0 / d1) + 1``.
SN-Netv2 also enumerates an FS entry with the whole small anchor and no large block (its id 13,
left out of its ``sl_ids``); a route here always ends with at least one block, so it is not a
configuration, and no layer exists for the small anchor's last block.

Ids: anchors (0 small, 1 large), then FS by ``s``, SF by ``s``, SFS (outer ``s1``, inner
``s2``), FSF (outer ``s1``, inner ``s2``) -- SN-Netv2's order. For the full 12/24 space our id
equals SN-Netv2's for ids 0..12 and is SN-Netv2's id minus 1 from 13 on. ``route_types``
filters (SN-Netv2's ``include_sl/ls/lsl/sls``) drop types and renumber the rest contiguously
in the same order; layer windows are the boundary ``s``, so layer keys do not depend on filters.

Pure Python: no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from searchspace.stitch import RouteTable, Segment, StitchConfig

STITCH_V2_FORMAT_VERSION = 1

RouteType = Literal["fs", "sf", "sfs", "fsf"]
#: Stitched route types in id order (SN-Netv2's ``sl``, ``ls``, ``lsl``, ``sls``).
ROUTE_TYPES: tuple[RouteType, ...] = ("fs", "sf", "sfs", "fsf")
SMALL, LARGE = 0, 1
_TYPE_ANCHORS: dict[str, tuple[int, ...]] = {
    "fs": (SMALL, LARGE),
    "sf": (LARGE, SMALL),
    "sfs": (LARGE, SMALL, LARGE),
    "fsf": (SMALL, LARGE, SMALL),
}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _fmt_route(route: Sequence[Sequence[int]]) -> str:
    try:
        return str([tuple(int(v) for v in seg) for seg in route])
    except (TypeError, ValueError):
        return repr(route)


def boundary_splits(d0: int, d1: int) -> tuple[tuple[int, int], ...]:
    """``(split0(s), split1(s))`` for every stitch boundary ``s``: how many blocks of anchor 0
    and of anchor 1 lie before it (see the module docstring)."""
    for name, value in (("d0", d0), ("d1", d1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"stitch_v2 depth '{name}': expected a positive int, got {value!r}")
    c, deep = min(d0, d1), max(d0, d1)
    splits = []
    for s in range(c - 1):
        shallow_split, deep_split = s + 1, _ceil_div((s + 1) * deep, c)
        splits.append((shallow_split, deep_split) if d0 <= d1 else (deep_split, shallow_split))
    return tuple(splits)


def check_covering(route: Sequence[Sequence[int]], depths: Sequence[int]) -> None:
    """Raise ``ValueError`` (naming the route) unless ``route`` runs through the network once:
    it starts at block 0, ends at its anchor's last block, alternates anchors, and every junction
    leaves one anchor exactly where it enters the other (no gap, no overlap) on the deeper
    anchor's block scale (a shallow-anchor boundary ``t`` sits at deep block ``ceil(t * D / c)``)."""
    name = _fmt_route(route)
    if not route:
        raise ValueError(f"stitch_v2 route {name}: expected at least one segment")
    c, deep = min(depths), max(depths)

    def scale(anchor: int, count: int) -> int:  # blocks of `anchor` done -> deep-anchor blocks done
        return count if depths[anchor] == deep else _ceil_div(count * deep, c)

    for seg in route:
        if not isinstance(seg, (tuple, list)) or len(seg) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in seg
        ):
            raise ValueError(f"stitch_v2 route {name}: expected (anchor, first, last) int segments")
        anchor, first, last = (int(v) for v in seg)
        if anchor not in range(len(depths)):
            raise ValueError(f"stitch_v2 route {name}: anchor {anchor} unknown, expected 0..{len(depths) - 1}")
        if not 0 <= first <= last < depths[anchor]:
            raise ValueError(
                f"stitch_v2 route {name}: segment {tuple(seg)} is not a block range within 0..{depths[anchor] - 1}"
            )
    if int(route[0][1]) != 0:
        raise ValueError(f"stitch_v2 route {name}: does not start at block 0")
    end_anchor = int(route[-1][0])
    if int(route[-1][2]) != depths[end_anchor] - 1:
        raise ValueError(f"stitch_v2 route {name}: does not end at the last block {depths[end_anchor] - 1}")
    for i, (a, b) in enumerate(zip(route[:-1], route[1:]), start=1):
        if int(a[0]) == int(b[0]):
            raise ValueError(f"stitch_v2 route {name}: junction {i} stays on anchor {int(a[0])} (no stitch)")
        leave, enter = scale(int(a[0]), int(a[2]) + 1), scale(int(b[0]), int(b[1]))
        if leave != enter:
            kind = "gap" if enter > leave else "overlap"
            raise ValueError(
                f"stitch_v2 route {name}: junction {i} leaves anchor {int(a[0])} after block {int(a[2])} but enters "
                f"anchor {int(b[0])} at block {int(b[1])} ({kind})"
            )


@dataclass(frozen=True)
class StitchSpaceV2(RouteTable):
    """SN-Netv2 configurations of two anchors (0 small / fast, 1 large / slow) of any depths.

    Args:
        depths: blocks of the small and the large anchor.
        names: anchor names (default ``anchor0``, ``anchor1``).
        route_types: stitched route types to keep, any of ``"fs"``, ``"sf"``, ``"sfs"``,
            ``"fsf"`` (order ignored); the two anchors are always kept.
        name: identifier stored in exported configs.
    """

    depths: tuple[int, int]
    names: tuple[str, ...] = ()
    route_types: tuple[RouteType, ...] = ROUTE_TYPES
    name: str = "snnetv2"

    def __post_init__(self) -> None:
        depths = tuple(self.depths)
        if len(depths) != 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"stitch_v2 space 'depths': expected two positive ints, got {self.depths!r}")
        object.__setattr__(self, "depths", depths)
        names = tuple(self.names) or ("anchor0", "anchor1")
        if len(names) != 2 or len(set(names)) != 2 or not all(isinstance(n, str) for n in names):
            raise ValueError(f"stitch_v2 space 'names': expected 2 distinct strings, got {list(names)}")
        object.__setattr__(self, "names", names)
        types = tuple(self.route_types) if not isinstance(self.route_types, str) else (self.route_types,)
        if any(t not in ROUTE_TYPES for t in types) or len(set(types)) != len(types):
            raise ValueError(
                f"stitch_v2 space 'route_types': expected distinct values from {list(ROUTE_TYPES)}, got {list(types)}"
            )
        object.__setattr__(self, "route_types", tuple(t for t in ROUTE_TYPES if t in types))

    # ----------------------------------------------------------------- structure
    @property
    def num_anchors(self) -> int:
        return 2

    def stages_of(self, anchor: int) -> tuple[int, ...]:
        """One stage per anchor (SN-Netv2 stitches plain ViTs)."""
        return (self.depths[anchor],)

    @property
    def num_boundaries(self) -> int:
        """Stitch boundaries ``b = min(depths) - 1``."""
        return min(self.depths) - 1

    @cached_property
    def splits(self) -> tuple[tuple[int, int], ...]:
        """``splits[s] = (small blocks, large blocks)`` before boundary ``s``."""
        return boundary_splits(*self.depths)

    def _route(self, kind: str, bounds: tuple[int, ...]) -> tuple[tuple[Segment, ...], tuple[int, ...]]:
        anchors = _TYPE_ANCHORS[kind]
        segments, start = [], {SMALL: 0, LARGE: 0}
        for i, anchor in enumerate(anchors):
            stop = self.splits[bounds[i]][anchor] if i < len(bounds) else self.depths[anchor]
            segments.append(Segment(anchor, start[anchor], stop - 1))
            if i < len(bounds):
                start[anchors[i + 1]] = self.splits[bounds[i]][anchors[i + 1]]
        return tuple(segments), bounds

    def _bounds(self, kind: str) -> list[tuple[int, ...]]:
        b = self.num_boundaries
        if kind in ("fs", "sf"):
            return [(s,) for s in range(b)]
        return [(s1, s2) for s1 in range(b) for s2 in range(s1 + 1, b)]

    @cached_property
    def _configs(self) -> tuple[StitchConfig, ...]:
        configs = [StitchConfig(a, (Segment(a, 0, d - 1),)) for a, d in enumerate(self.depths)]
        for kind in self.route_types:
            for bounds in self._bounds(kind):
                route, windows = self._route(kind, bounds)
                configs.append(StitchConfig(len(configs), route, windows))
        return tuple(configs)

    @cached_property
    def _index(self) -> dict[tuple[Segment, ...], int]:
        return {c.route: c.id for c in self._configs}

    @cached_property
    def _types(self) -> tuple[str, ...]:
        by_anchors = {anchors: kind for kind, anchors in _TYPE_ANCHORS.items()}
        return tuple("anchor" if c.is_anchor else by_anchors[c.anchors] for c in self._configs)

    def route_type(self, config: StitchConfig | int) -> str:
        """``"anchor"``, ``"fs"``, ``"sf"``, ``"sfs"`` or ``"fsf"``."""
        return self._types[self._resolve(config).id]

    def ids(self, route_type: str) -> list[int]:
        """Ids of one route type (``"anchor"`` or one of :data:`ROUTE_TYPES`), ascending."""
        if route_type != "anchor" and route_type not in _TYPE_ANCHORS:
            raise ValueError(
                f"stitch_v2 'route_type': expected 'anchor' or one of {list(ROUTE_TYPES)}, got {route_type!r}"
            )
        return [i for i, kind in enumerate(self._types) if kind == route_type]

    def find(self, route: Sequence[Sequence[int]]) -> StitchConfig:
        """The configuration running ``route`` (a sequence of ``(anchor, first, last)``)."""
        check_covering(route, self.depths)
        key = tuple(Segment(*(int(v) for v in seg)) for seg in route)
        if key not in self._index:
            raise ValueError(
                f"stitch_v2 route {_fmt_route(route)}: covers the network but is not in space {self.name!r} "
                f"(route types {list(self.route_types)})"
            )
        return self._configs[self._index[key]]

    def index(self, config: StitchConfig) -> int:
        self.validate(config)
        return self._index[config.route]

    def validate(self, config: StitchConfig | int) -> None:
        """Raise ``ValueError`` if ``config`` (an id or a config) is not in this space; a route that
        does not cover the network is named with what is wrong with it."""
        if isinstance(config, StitchConfig):
            found = self.find(config.route)
            if found.windows != config.windows:
                raise ValueError(
                    f"stitch_v2 route {_fmt_route(config.route)} 'windows': expected {list(found.windows)}, "
                    f"got {list(config.windows)}"
                )
            if found.id != config.id:
                raise ValueError(
                    f"stitch config 'id': route belongs to id {found.id} in space {self.name!r}, got {config.id}"
                )
            return
        if isinstance(config, bool) or not isinstance(config, int) or not 0 <= config < len(self):
            raise ValueError(f"stitch config id {config!r}: unknown, expected an int in 0..{len(self) - 1}")

    # ----------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "stitch_v2",
            "format_version": STITCH_V2_FORMAT_VERSION,
            "name": self.name,
            "depths": list(self.depths),
            "names": list(self.names),
            "route_types": list(self.route_types),
        }

    @classmethod
    def from_json(cls, data: Any) -> StitchSpaceV2:
        if not isinstance(data, dict):
            raise ValueError(f"stitch_v2 space: expected a JSON object, got {type(data).__name__}")
        if data.get("kind") != "stitch_v2":
            raise ValueError(f"stitch_v2 space 'kind': expected 'stitch_v2', got {data.get('kind')!r}")
        if data.get("format_version") != STITCH_V2_FORMAT_VERSION:
            raise ValueError(
                f"stitch_v2 space 'format_version': expected {STITCH_V2_FORMAT_VERSION}, "
                f"got {data.get('format_version')!r}"
            )
        known = {"name", "depths", "names", "route_types"}
        unknown = set(data) - known - {"kind", "format_version"}
        if unknown:
            raise ValueError(f"stitch_v2 space: unknown fields {sorted(unknown)}")
        for key in ("depths", "names", "route_types"):
            if key in data and not isinstance(data[key], list):
                raise ValueError(f"stitch_v2 space '{key}': expected a list, got {data[key]!r}")
        if "depths" not in data:
            raise ValueError("stitch_v2 space 'depths': expected a list of two ints, got nothing")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**kwargs)



def count_configs(d0: int, d1: int, route_types: Sequence[str] = ROUTE_TYPES) -> int:
    """Closed form of ``len(StitchSpaceV2((d0, d1), route_types=...))``:
    ``2 + b * [fs] + b * [sf] + C(b, 2) * ([sfs] + [fsf])`` with ``b = min(d0, d1) - 1``."""
    if isinstance(route_types, str) or any(t not in ROUTE_TYPES for t in route_types):
        raise ValueError(f"stitch_v2 'route_types': expected values from {list(ROUTE_TYPES)}, got {route_types!r}")
    b = len(boundary_splits(d0, d1))
    per_type = {"fs": b, "sf": b, "sfs": b * (b - 1) // 2, "fsf": b * (b - 1) // 2}
    return 2 + sum(per_type[t] for t in set(route_types) if t in per_type)


__all__ = [
    "ROUTE_TYPES", "STITCH_V2_FORMAT_VERSION", "RouteType", "StitchSpaceV2", "boundary_splits",
    "check_covering", "count_configs",
]

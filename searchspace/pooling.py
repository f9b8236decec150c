"""Pooling / downsampling placement spaces (Javan et al., "Balanced Mixture of SuperNets for
Learning the CNN Pooling Architecture", AutoML-Conf 2023, arXiv 2306.11982).

A network is a stem (layer 0) followed by ``num_layers - 1`` blocks. A configuration places
``num_downsamples`` downsampling operations, each *before* one of the allowed layers. For the
ResNet-20 space (stem + 9 basic blocks, 2 downsamplings before any block) that gives
C(9, 2) = 36 configurations, written in the paper's notation ``[a, b, c]`` = number of layers
at each resolution (the default ResNet-20 is ``[4, 3, 3]``).

Everything here is pure Python: no torch, so spaces can be enumerated, sampled and stored
anywhere (a Ray driver, a notebook, a config file).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DownsampleOp = Literal["maxpool", "avgpool", "conv"]
BlockType = Literal["basic", "bottleneck"]

DOWNSAMPLE_OPS: tuple[str, ...] = ("maxpool", "avgpool", "conv")
BLOCK_TYPES: tuple[str, ...] = ("basic", "bottleneck")
SPACE_FORMAT_VERSION = 1


@dataclass(frozen=True, order=True)
class PoolingConfig:
    """One placement: the (sorted) layer indices that get a downsampling right before them."""

    positions: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"positions": list(self.positions)}

    @classmethod
    def from_json(cls, data: Any) -> PoolingConfig:
        if not isinstance(data, dict) or "positions" not in data:
            raise ValueError(f"pooling config: expected an object with 'positions', got {data!r}")
        positions = data["positions"]
        if not isinstance(positions, list) or not all(isinstance(p, int) for p in positions):
            raise ValueError(f"pooling config 'positions': expected a list of ints, got {positions!r}")
        return cls(tuple(positions))


@dataclass(frozen=True)
class PoolingSpace:
    """All placements of ``num_downsamples`` downsamplings in a CNN of ``len(widths)`` layers.

    Args:
        name: identifier stored in exported configs.
        widths: output channels of every layer, stem first. As in the BMS ResNet-20 space, a
            layer keeps its width wherever the pooling goes, so every configuration shares every
            weight tensor exactly and only the spatial resolution changes.
        num_downsamples: k, the number of downsampling operations.
        downsample: "maxpool" (2x2, the BMS paper's), "avgpool" (2x2) or "conv" (the first
            convolution of the block runs with stride 2).
        block: "basic" (two 3x3 convs) or "bottleneck" (1x1-3x3-1x1, expansion 4).
        first_position: the first layer that may receive a downsampling; layers before it form
            the non-empty first stage. 1 means "any block after the stem".
        default: the conventional placement (e.g. ResNet-20's [4, 3, 3]); marked on plots.
        stage_widths: if given, channels per resolution stage (``num_downsamples + 1`` values):
            a layer takes the width of the stage the placement puts it in, instead of its fixed
            ``widths`` entry. With widths doubling per stage (a standard ResNet's rule) every
            layer costs the same FLOPs at any resolution, so all placements cost the same up to
            the small BatchNorm and transition terms (the equal-FLOPs benchmark space,
            :func:`resnet20_equal_flops_space`); parameters then differ per placement, and the
            supernet shares weights by channel slicing (Once-for-All's first-k channels).
            ``widths`` must then equal the default placement's layer widths. ``block="basic"``.
    """

    name: str
    widths: tuple[int, ...]
    num_downsamples: int
    downsample: DownsampleOp = "maxpool"
    block: BlockType = "basic"
    first_position: int = 1
    default: tuple[int, ...] | None = field(default=None, compare=False)
    stage_widths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.downsample not in DOWNSAMPLE_OPS:
            raise ValueError(f"space 'downsample': expected one of {DOWNSAMPLE_OPS}, got {self.downsample!r}")
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"space 'block': expected one of {BLOCK_TYPES}, got {self.block!r}")
        if any((not isinstance(w, int)) or w < 1 for w in self.widths):
            raise ValueError(f"space 'widths': expected positive ints, got {self.widths!r}")
        if self.num_downsamples < 0:
            raise ValueError(f"space 'num_downsamples': expected >= 0, got {self.num_downsamples}")
        if len(self.widths) < 2:
            raise ValueError(f"space 'widths': need a stem and at least one block, got {self.widths!r}")
        if not 1 <= self.first_position <= self.num_layers - 1:
            raise ValueError(
                f"space 'first_position': expected 1..{self.num_layers - 1}, got {self.first_position}"
            )
        if self.num_downsamples > self.num_positions:
            raise ValueError(
                f"space 'num_downsamples': {self.num_downsamples} downsamplings do not fit in "
                f"{self.num_positions} positions (layers {self.first_position}..{self.num_layers - 1})"
            )
        if self.default is not None:
            self.validate(PoolingConfig(tuple(self.default)))
        if self.stage_widths is not None:
            self._check_stage_widths()

    def _check_stage_widths(self) -> None:
        sw = self.stage_widths
        assert sw is not None
        if len(sw) != self.num_downsamples + 1 or any((not isinstance(w, int)) or w < 1 for w in sw):
            raise ValueError(f"space 'stage_widths': expected {self.num_downsamples + 1} positive ints "
                             f"(one per resolution stage), got {list(sw)!r}")
        if self.block != "basic":
            raise ValueError(f"space 'stage_widths': supported with block 'basic', got {self.block!r}")
        expected = self.layer_widths(self.default_config())
        if tuple(self.widths) != expected:
            raise ValueError(f"space 'widths': with stage_widths they must be the default placement's "
                             f"layer widths {list(expected)}, got {list(self.widths)}")

    # ----------------------------------------------------------------- structure
    @property
    def num_layers(self) -> int:
        """Stem plus blocks."""
        return len(self.widths)

    @property
    def candidate_positions(self) -> tuple[int, ...]:
        return tuple(range(self.first_position, self.num_layers))

    @property
    def num_positions(self) -> int:
        return self.num_layers - self.first_position

    def __len__(self) -> int:
        return math.comb(self.num_positions, self.num_downsamples)

    def layer_stages(self, config: PoolingConfig) -> tuple[int, ...]:
        """Resolution stage (0 = full resolution) of every layer under ``config``."""
        self.validate(config)
        stage, stages = 0, []
        for layer in range(self.num_layers):
            if layer in config.positions:
                stage += 1
            stages.append(stage)
        return tuple(stages)

    def layer_widths(self, config: PoolingConfig) -> tuple[int, ...]:
        """Output channels of every layer (stem first) under ``config``: ``widths``, or each
        layer's stage width when the space has ``stage_widths``."""
        if self.stage_widths is None:
            self.validate(config)
            return tuple(self.widths)
        return tuple(self.stage_widths[s] for s in self.layer_stages(config))

    def max_layer_widths(self) -> tuple[int, ...]:
        """The widest each layer gets over all placements (the supernet's weight shapes)."""
        if self.stage_widths is None:
            return tuple(self.widths)
        return tuple(max(column) for column in zip(*(self.layer_widths(c) for c in self)))

    @property
    def params_vary(self) -> bool:
        """Whether placements differ in parameter count (only with ``stage_widths``)."""
        return self.stage_widths is not None

    def min_input_size(self) -> int:
        """Smallest square input side that survives every downsampling (at least 1 pixel left)."""
        return 2 ** self.num_downsamples

    def check_input_size(self, input_size: int) -> None:
        if input_size < self.min_input_size():
            raise ValueError(
                f"input_size {input_size} is too small for {self.num_downsamples} downsamplings: "
                f"expected at least {self.min_input_size()}"
            )

    # ----------------------------------------------------------------- enumerate / index
    def configurations(self) -> list[PoolingConfig]:
        """All configurations, in index order (lexicographic order of the positions)."""
        return list(self)

    def __iter__(self) -> Iterator[PoolingConfig]:
        for combo in itertools.combinations(self.candidate_positions, self.num_downsamples):
            yield PoolingConfig(combo)

    def index(self, config: PoolingConfig) -> int:
        """Lexicographic rank of ``config`` among all configurations (combinatorial number system)."""
        self.validate(config)
        n, k = self.num_positions, self.num_downsamples
        offsets = [p - self.first_position for p in config.positions]
        rank, prev = 0, -1
        for i, off in enumerate(offsets):
            for skipped in range(prev + 1, off):
                rank += math.comb(n - 1 - skipped, k - 1 - i)
            prev = off
        return rank

    def config(self, index: int) -> PoolingConfig:
        """Inverse of :meth:`index`."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self):
            raise ValueError(f"configuration index: expected an int in 0..{len(self) - 1}, got {index!r}")
        n, k = self.num_positions, self.num_downsamples
        positions, start, remaining = [], 0, index
        for i in range(k):
            for off in range(start, n):
                block = math.comb(n - 1 - off, k - 1 - i)
                if remaining < block:
                    positions.append(off + self.first_position)
                    start = off + 1
                    break
                remaining -= block
        return PoolingConfig(tuple(positions))

    def sample(self, rng: random.Random) -> PoolingConfig:
        """A uniformly random configuration drawn with the caller's seeded generator."""
        return PoolingConfig(tuple(sorted(rng.sample(self.candidate_positions, self.num_downsamples))))

    def default_config(self) -> PoolingConfig:
        if self.default is not None:
            return PoolingConfig(tuple(self.default))
        return self.from_notation(_balanced_split(self.num_layers, self.num_downsamples + 1))

    # ----------------------------------------------------------------- validate / notation
    def validate(self, config: PoolingConfig) -> None:
        """Raise ``ValueError`` naming the problem if ``config`` is not in this space."""
        pos = config.positions
        if len(pos) != self.num_downsamples:
            raise ValueError(
                f"pooling config 'positions': expected {self.num_downsamples} positions, got {len(pos)} ({list(pos)})"
            )
        if list(pos) != sorted(set(pos)):
            raise ValueError(f"pooling config 'positions': expected strictly increasing, got {list(pos)}")
        bad = [p for p in pos if not self.first_position <= p < self.num_layers]
        if bad:
            raise ValueError(
                f"pooling config 'positions': {bad} outside {self.first_position}..{self.num_layers - 1}"
            )

    def notation(self, config: PoolingConfig) -> tuple[int, ...]:
        """The paper's ``[a, b, c]``: layers per resolution, stem included in the first."""
        self.validate(config)
        bounds = (0, *config.positions, self.num_layers)
        return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))

    def from_notation(self, counts: Sequence[int]) -> PoolingConfig:
        counts = list(counts)
        if len(counts) != self.num_downsamples + 1 or any(c < 1 for c in counts) or sum(counts) != self.num_layers:
            raise ValueError(
                f"notation: expected {self.num_downsamples + 1} positive layer counts summing to "
                f"{self.num_layers}, got {counts}"
            )
        config = PoolingConfig(tuple(itertools.accumulate(counts[:-1])))
        self.validate(config)
        return config

    def parse_config(self, text: str) -> PoolingConfig:
        """Parse a user's configuration: an index ("7"), notation ("4,3,3" or "[4,3,3]") or
        positions ("p:4,7")."""
        text = text.strip()
        if text.startswith("p:"):
            config = PoolingConfig(tuple(int(t) for t in text[2:].split(",") if t.strip()))
            self.validate(config)
            return config
        stripped = text.strip("[]() ")
        if "," in stripped:
            try:
                counts = [int(t) for t in stripped.split(",")]
            except ValueError:
                raise ValueError(f"configuration {text!r}: expected an index, 'a,b,c' or 'p:i,j'") from None
            return self.from_notation(counts)
        try:
            return self.config(int(stripped))
        except ValueError as err:
            if stripped.lstrip("-").isdigit():
                raise
            raise ValueError(f"configuration {text!r}: expected an index, 'a,b,c' or 'p:i,j'") from err

    def describe(self, config: PoolingConfig) -> str:
        return "[" + ",".join(str(c) for c in self.notation(config)) + "]"

    # ----------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["default"] = list(self.default) if self.default is not None else None
        if self.stage_widths is None:
            del data["stage_widths"]  # fixed-width spaces keep the JSON they always had
        else:
            data["stage_widths"] = list(self.stage_widths)
        data["kind"] = "pooling"
        data["format_version"] = SPACE_FORMAT_VERSION
        return data

    @classmethod
    def from_json(cls, data: Any) -> PoolingSpace:
        if not isinstance(data, dict):
            raise ValueError(f"pooling space: expected a JSON object, got {type(data).__name__}")
        if data.get("kind", "pooling") != "pooling":
            raise ValueError(f"pooling space 'kind': expected 'pooling', got {data.get('kind')!r}")
        version = data.get("format_version", SPACE_FORMAT_VERSION)
        if version != SPACE_FORMAT_VERSION:
            raise ValueError(f"pooling space 'format_version': expected {SPACE_FORMAT_VERSION}, got {version!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known - {"kind", "format_version"}
        if unknown:
            raise ValueError(f"pooling space: unknown fields {sorted(unknown)}")
        missing = {"name", "widths", "num_downsamples"} - set(data)
        if missing:
            raise ValueError(f"pooling space: missing fields {sorted(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["widths"] = tuple(kwargs["widths"])
        for key in ("default", "stage_widths"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    def with_options(self, **changes: Any) -> PoolingSpace:
        """A copy with some fields replaced (validated again)."""
        data = asdict(self)
        data.update(changes)
        return PoolingSpace(**data)


def _balanced_split(total: int, parts: int) -> list[int]:
    """``total`` layers over ``parts`` stages, the remainder going to the first stages."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --------------------------------------------------------------------------- presets
def resnet20_space(downsample: DownsampleOp = "maxpool", num_downsamples: int = 2,
                   width_scale: float = 1.0) -> PoolingSpace:
    """BMS's ResNet-20 space: stem + 9 basic blocks, widths fixed per layer, k = 2 -> 36 configs.

    ``width_scale`` shrinks the widths (16/32/64 at 1.0) for CPU-sized benchmarks.
    """
    return PoolingSpace(
        name="resnet20" if width_scale == 1.0 else f"resnet20_w{width_scale:g}",
        widths=tuple(max(1, int(round(w * width_scale))) for w in (16, 16, 16, 16, 32, 32, 32, 64, 64, 64)),
        num_downsamples=num_downsamples,
        downsample=downsample,
        default=(4, 7) if num_downsamples == 2 else None,
    )


def resnet20_equal_flops_space(downsample: DownsampleOp = "maxpool", num_downsamples: int = 2,
                               width_scale: float = 1.0) -> PoolingSpace:
    """ResNet-20's 36 placements with equal FLOPs: channels double at every downsampling,
    wherever it is placed (16/32/64 per stage at 1.0), instead of being fixed per layer.

    A layer at stage s has ``2^s`` times the channels on a ``2^-s`` times smaller side, so its
    FLOPs do not depend on s; placements differ only in the BatchNorm, transition and pooling
    terms (within 1.7% from cheapest to most expensive at 24 px; tested within 2%). What
    differs is where capacity sits: early downsampling gives many wide, low-resolution layers
    (5.5x the parameters of the latest placement at width 0.5). A benchmark on which FLOPs
    cannot rank the placements (issue 15), unlike :func:`resnet20_space` where compute
    dominates the ranking.
    """
    stage = tuple(max(1, int(round(16 * width_scale))) * 2 ** s for s in range(num_downsamples + 1))
    base = PoolingSpace(
        name="resnet20eq" if width_scale == 1.0 else f"resnet20eq_w{width_scale:g}",
        widths=(stage[0],) * 10, num_downsamples=num_downsamples, downsample=downsample,
        default=(4, 7) if num_downsamples == 2 else None,
    )
    widths = tuple(stage[s] for s in base.layer_stages(base.default_config()))
    return base.with_options(widths=widths, stage_widths=stage)


def resnet18_space(downsample: DownsampleOp = "conv", width_scale: float = 0.25) -> PoolingSpace:
    """BMS's ResNet-18-like space: stem + 8 basic blocks, k = 3 strided convs -> C(8,3) = 56.

    Widths are fixed per layer (64, 64, 64, 128, 128, 256, 256, 512, 512 at full width);
    ``width_scale`` shrinks them for CPU runs.
    """
    full = (64, 64, 64, 128, 128, 256, 256, 512, 512)
    return PoolingSpace(
        name="resnet18",
        widths=tuple(max(1, int(round(w * width_scale))) for w in full),
        num_downsamples=3,
        downsample=downsample,
        default=(3, 5, 7),
    )


def resnet50_space(downsample: DownsampleOp = "conv", width_scale: float = 0.125) -> PoolingSpace:
    """BMS's ResNet-50-like space: 16 bottleneck blocks in 4 non-empty stages -> C(15,3) = 455.

    The first block always sits in stage 1, so downsamplings go before blocks 2..16. Widths are
    fixed per layer as the default ResNet-50 has them (stem 64, then 3 x 256, 4 x 512, 6 x 1024,
    3 x 2048 bottleneck outputs, expansion 4), scaled by ``width_scale`` for CPU runs.
    """
    full = (64,) + (256,) * 3 + (512,) * 4 + (1024,) * 6 + (2048,) * 3
    return PoolingSpace(
        name="resnet50",
        widths=tuple(max(4, int(round(w * width_scale))) for w in full),
        num_downsamples=3,
        downsample=downsample,
        block="bottleneck",
        first_position=2,
        default=(4, 8, 14),  # [3, 4, 6, 3] blocks, stem counted in the first stage
    )


SPACE_PRESETS: dict[str, Callable[..., PoolingSpace]] = {
    "resnet20": resnet20_space, "resnet20_equal_flops": resnet20_equal_flops_space,
    "resnet18": resnet18_space, "resnet50": resnet50_space,
}


def create_space(name: str, **overrides: Any) -> PoolingSpace:
    """Build a preset space by name; unknown names list the known ones."""
    if name not in SPACE_PRESETS:
        raise ValueError(f"space {name!r}: unknown, expected one of {sorted(SPACE_PRESETS)}")
    scale = overrides.get("width_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"space {name!r} 'width_scale': expected a finite number > 0, got {scale!r}")
    return SPACE_PRESETS[name](**overrides)

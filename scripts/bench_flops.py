"""Analytic FLOPs against fvcore's FlopCountAnalysis: equality on every configuration and the
speed ratio (issue target: analytic at least 1000x faster).

    python scripts/bench_flops.py [--space resnet20] [--input-size 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from searchspace.pooling import create_space
from stitchnas.core.flops import fvcore_flops
from supernet.flops import pooling_flops
from supernet.networks import ModelSpec, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="resnet20")
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=200, help="analytic repetitions per configuration")
    args = parser.parse_args()
    space = create_space(args.space)
    configs = space.configurations()
    x = torch.zeros(1, 1, args.input_size, args.input_size)
    models = [build_model(space, c, ModelSpec(1, 10)) for c in configs]
    fvcore_flops(models[0], x)  # fvcore's first call pays a one-off warm-up
    # Interleaved, configuration by configuration (fvcore once, then the analytic count
    # `repeats` times), so a change in machine load hits both sides alike.
    fv_time = an_time = 0.0
    traced, analytic = [], []
    for model, config in zip(models, configs):
        start = time.perf_counter()
        traced.append(fvcore_flops(model, x))
        fv_time += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.repeats):
            count = pooling_flops(space, config, args.input_size, 1, 10)
        an_time += time.perf_counter() - start
        analytic.append(count)
    fv_time /= len(configs)
    an_time /= args.repeats * len(configs)
    equal = sum(a == t for a, t in zip(analytic, traced))
    print(f"{space.name}: {len(configs)} configurations at {args.input_size}x{args.input_size}, "
          f"{torch.get_num_threads()} threads, load average {open('/proc/loadavg').read().split()[0]}")
    print(f"  equal counts: {equal}/{len(configs)}")
    print(f"  fvcore   {fv_time * 1e3:9.3f} ms per configuration")
    print(f"  analytic {an_time * 1e6:9.3f} us per configuration")
    print(f"analytic speed over fvcore: {fv_time / an_time:,.0f}x  (target >= 1000x)")


if __name__ == "__main__":
    main()

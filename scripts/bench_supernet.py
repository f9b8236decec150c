"""Supernet training-step time over the standalone model's step time (issue target <= 1.10),
and the BMS mixture's step over the single supernet's (target <= 1.05).

Steps alternate between the models being compared (A B A B ...), so drifts in machine load hit
both alike; the ratio of medians is reported.

    python scripts/bench_supernet.py [--steps 200] [--batch-size 64] [--input-size 16]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch

from searchspace.pooling import resnet20_space
from supernet.bms import MixtureConfig, MixtureOfSuperNets
from supernet.networks import ModelSpec, build_model, build_supernet
from supernet.training import TrainConfig, build_optimizer, sgd_step


def timed_step(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = resnet20_space()
    config = space.default_config()
    spec = ModelSpec(1, 10)
    x = torch.randn(args.batch_size, 1, args.input_size, args.input_size)
    y = torch.randint(0, 10, (args.batch_size,))
    cfg = TrainConfig()

    standalone = build_model(space, config, spec)
    supernet = build_supernet(space, spec)
    mixture = MixtureOfSuperNets(space, spec, MixtureConfig(num_supernets=4))
    opts = {name: build_optimizer(m.parameters(), cfg) for name, m in
            (("standalone", standalone), ("supernet", supernet), ("mixture", mixture))}
    rng = random.Random(0)

    def step_standalone():
        sgd_step(standalone, x, y, opts["standalone"], 0.01)

    def step_supernet():  # a real SPOS step: activate a path (here the same one), then train it
        supernet.set_active(config)
        sgd_step(supernet, x, y, opts["supernet"], 0.01)

    def step_mixture():  # a BMS step: pick a supernet, activate, train, score one batch
        member = rng.randrange(mixture.num_supernets)
        mixture.set_active(config, member)
        sgd_step(mixture.supernets[member], x, y, opts["mixture"], 0.01)
        mixture.update_score(config, member, 0.5)

    for fn in (step_standalone, step_supernet, step_mixture):  # warm-up
        for _ in range(10):
            fn()
    times = {"standalone": [], "supernet": [], "mixture": []}
    for _ in range(args.steps):
        times["standalone"].append(timed_step(step_standalone))
        times["supernet"].append(timed_step(step_supernet))
        times["mixture"].append(timed_step(step_mixture))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"resnet20 {space.describe(config)}, batch {args.batch_size}, input {args.input_size}x{args.input_size}, "
          f"{args.steps} interleaved steps each")
    for k in ("standalone", "supernet", "mixture"):
        print(f"  {k:<11} median step {med[k] * 1e3:7.2f} ms")
    print(f"supernet / standalone step time: {med['supernet'] / med['standalone']:.3f}  (target <= 1.10)")
    print(f"BMS mixture (M=4) / supernet step time: {med['mixture'] / med['supernet']:.3f}  (target <= 1.05)")
    params = sum(p.numel() for p in supernet.parameters())
    mparams = sum(p.numel() for p in mixture.parameters())
    print(f"weights: supernet {params} parameters, mixture M=4 {mparams} ({mparams / params:.2f}x)")


if __name__ == "__main__":
    main()

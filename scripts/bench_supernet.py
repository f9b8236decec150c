"""Supernet training-step time over the standalone model's step time (issue target <= 1.10),
and the BMS mixture's step over the single supernet's (target <= 1.05), with and without the
validation batch BMS scores after every step.

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
from supernet.bms import MixtureConfig, MixtureOfSuperNets, validation_accuracy
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

    def step_mixture():  # the mixture's training step: pick a supernet, activate, train it
        member = rng.randrange(mixture.num_supernets)
        mixture.set_active(config, member)
        sgd_step(mixture.supernets[member], x, y, opts["mixture"], 0.01)
        return member

    def step_bms():  # a full BMS step: the training step plus scoring one validation batch
        member = step_mixture()
        mixture.update_score(config, member, validation_accuracy(mixture.supernets[member], x, y, amp=False))

    small = max(1, args.batch_size // 8)

    def step_bms_small():  # the same with --score-batch-size = batch / 8
        member = step_mixture()
        mixture.update_score(config, member,
                             validation_accuracy(mixture.supernets[member], x[:small], y[:small], amp=False))

    steps = {"standalone": step_standalone, "supernet": step_supernet, "mixture": step_mixture, "bms": step_bms,
             "bms_small": step_bms_small}
    for fn in steps.values():  # warm-up
        for _ in range(10):
            fn()
    times = {k: [] for k in steps}
    for _ in range(args.steps):
        for name, fn in steps.items():
            times[name].append(timed_step(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"resnet20 {space.describe(config)}, batch {args.batch_size}, input {args.input_size}x{args.input_size}, "
          f"{args.steps} interleaved steps each")
    for k in steps:
        print(f"  {k:<11} median step {med[k] * 1e3:7.2f} ms")
    print(f"supernet / standalone step time: {med['supernet'] / med['standalone']:.3f}  (target <= 1.10)")
    print(f"mixture (M=4) training step / supernet step: {med['mixture'] / med['supernet']:.3f}  (target <= 1.05)")
    print(f"full BMS step (training + one validation batch) / supernet step: {med['bms'] / med['supernet']:.3f}")
    print(f"full BMS step, scoring batch {small} (--score-batch-size) / supernet step: "
          f"{med['bms_small'] / med['supernet']:.3f}")
    params = sum(p.numel() for p in supernet.parameters())
    mparams = sum(p.numel() for p in mixture.parameters())
    print(f"weights: supernet {params} parameters, mixture M=4 {mparams} ({mparams / params:.2f}x)")


if __name__ == "__main__":
    main()

"""GPU figures for issue 14: supernet step over standalone step, training and scoring images/s,
peak memory, with and without bf16 autocast and ``channels_last``.

ResNet-20 ``[4,3,3]`` at CIFAR's 32x32, 3 channels, 10 classes, synthetic batches resident on
the device (as the engine keeps in-memory data), batch 256 for training and 1,024 for scoring.
Steps alternate between the variants compared (A B A B ...) after a warm-up, each timed with
CUDA events; medians are printed.

    python scripts/bench_gpu.py [--steps 100] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from searchspace.pooling import resnet20_space
from supernet.networks import ModelSpec, build_model, build_supernet
from supernet.training import TrainConfig, build_optimizer, sgd_step


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type != "cuda":
        import time

        start = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - start)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# device {name}, torch {torch.__version__}")
    torch.manual_seed(0)
    space = resnet20_space()
    config = space.default_config()
    spec = ModelSpec(3, 10)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    xv = torch.randn(args.eval_batch_size, 3, 32, 32, device=device)
    cfg = TrainConfig()

    variants: dict[str, Callable[[], object]] = {}
    for amp in (False, True):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            tag = f"{'bf16' if amp else 'fp32'}{' channels_last' if memory_format is torch.channels_last else ''}"
            standalone = build_model(space, config, spec).to(device, memory_format=memory_format)
            supernet = build_supernet(space, spec).to(device, memory_format=memory_format)
            supernet.set_active(config)
            opt_a, opt_b = build_optimizer(standalone.parameters(), cfg), build_optimizer(supernet.parameters(), cfg)
            xb = x.contiguous(memory_format=memory_format)
            xe = xv.contiguous(memory_format=memory_format)

            def score(model=supernet, xe=xe, amp=amp):
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    model.eval()(xe).argmax(1)
                model.train()

            variants[f"standalone step {tag}"] = lambda m=standalone, o=opt_a, xb=xb, amp=amp: sgd_step(
                m, xb, y, o, 0.01, amp)
            variants[f"supernet step {tag}"] = lambda m=supernet, o=opt_b, xb=xb, amp=amp: sgd_step(
                m, xb, y, o, 0.01, amp)
            variants[f"scoring forward {tag}"] = score
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for fn in variants.values():  # warm-up: cuDNN autotuning, allocator
        for _ in range(5):
            time_ms(fn, device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.steps):
        for key, fn in variants.items():
            times[key].append(time_ms(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'variant':<36} {'median ms':>10} {'images/s':>10}")
    for key, ms in med.items():
        n = args.eval_batch_size if key.startswith("scoring") else args.batch_size
        print(f"{key:<36} {ms:>10.2f} {1000 * n / ms:>10.0f}")
    for tag in ("fp32", "fp32 channels_last", "bf16", "bf16 channels_last"):
        print(f"supernet / standalone step, {tag}: {med[f'supernet step {tag}'] / med[f'standalone step {tag}']:.3f}")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

"""Seconds per slice of the whole two-stage model and of each stage, per preset.

Random weights and random inputs: the cost of a forward pass does not depend on them.
Run on an otherwise idle machine; ``--threads`` sets torch's intra-op threads (CI has 2).

    .venv/bin/python benchmarks/model_speed.py --presets lite full --size 384 320 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from RegisterByGenerationLib.networks import ModelConfig, build_model, count_parameters


def time_call(function, repeats: int) -> float:
    function()  # warm-up: allocations, kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["lite", "full"], choices=["tiny", "lite", "full"])
    parser.add_argument("--size", nargs=2, type=int, default=[384, 320], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, {args.threads} threads, "
          f"batch {args.batch}, slice {args.size[0]}x{args.size[1]}")
    print(f"{'preset':8} {'params':>11} {'stage1 s':>9} {'registr. s':>10} {'stage2 s':>9} {'total s/slice':>14}")
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, 1, *args.size, generator=generator) * 2 - 1).to(device)
    y = (torch.rand(args.batch, 1, *args.size, generator=generator) * 2 - 1).to(device)
    for preset in args.presets:
        model = build_model(getattr(ModelConfig, preset)()).to(device).eval()
        with torch.inference_mode():
            y_hat = model.stage1(x, y)
            flow = model.registration(y_hat, y)
            times = {
                "stage1": time_call(lambda: model.stage1(x, y), args.repeats),
                "registration": time_call(lambda: model.registration(y_hat, y), args.repeats),
                "stage2": time_call(lambda: model.stage2(x, y_hat, y, flow), args.repeats),
                "total": time_call(lambda: model(x, y), args.repeats),
            }
        per_slice = {name: seconds / args.batch for name, seconds in times.items()}
        print(f"{preset:8} {count_parameters(model):>11,} {per_slice['stage1']:>9.2f} {per_slice['registration']:>10.2f} "
              f"{per_slice['stage2']:>9.2f} {per_slice['total']:>14.2f}")


if __name__ == "__main__":
    main()

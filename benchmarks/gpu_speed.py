"""Seconds per volume of the whole model on a GPU, peak memory, and the largest batch that fits.

For each preset (random weights: cost does not depend on them) and each volume size,
with and without mixed precision (bfloat16 autocast, as ``rbg run --precision auto``
does on CUDA): the slices run through Stage 1 → registration → Stage 2 in batches, as
:class:`~RegisterByGenerationLib.pipeline.Pipeline` runs them. The largest batch is found
by doubling until the GPU runs out of memory. One command, for a machine with CUDA:

    .venv/bin/python benchmarks/gpu_speed.py --device cuda

``--device cpu --presets tiny --volumes 64x64x4`` runs the same code on a CPU (a check
that the script works, not a speed figure).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from RegisterByGenerationLib.networks import ModelConfig, build_model

VOLUMES = ("384x320x100", "512x512x200")


def run_volume(model, shape: tuple[int, int, int], batch: int, dtype: torch.dtype | None, device: torch.device) -> float:
    """Seconds to push ``shape`` = (H, W, slices) through ``model`` in batches of ``batch``."""
    height, width, slices = shape
    x = torch.rand(batch, 1, height, width, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for done in range(0, slices, batch):
            n = min(batch, slices - done)
            model(x[:n], x[:n].flip(-1))["output"].float().cpu()  # the copy back is part of the cost
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def largest_batch(model, shape, dtype, device, limit: int = 256) -> int:
    batch, best = 1, 0
    while batch <= limit:
        try:
            run_volume(model, (shape[0], shape[1], batch), batch, dtype, device)
            best = batch
            batch *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--presets", nargs="+", default=["lite", "full"], choices=["tiny", "lite", "full"])
    parser.add_argument("--volumes", nargs="+", default=list(VOLUMES), metavar="HxWxZ")
    parser.add_argument("--batch", type=int, default=16, help="slices per batch for the timing (default: 16)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}")
    print(f"{'preset':6} {'volume':>12} {'precision':>9} {'s/volume':>9} {'peak GiB':>9} {'max batch':>9}")
    for preset in args.presets:
        model = build_model(getattr(ModelConfig, preset)()).to(device).eval()
        for volume in args.volumes:
            shape = tuple(int(v) for v in volume.lower().split("x"))
            for label, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                run_volume(model, (shape[0], shape[1], args.batch), args.batch, dtype, device)  # warm-up
                seconds = run_volume(model, shape, args.batch, dtype, device)
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                biggest = largest_batch(model, shape, dtype, device) if device.type == "cuda" else args.batch
                print(f"{preset:6} {volume:>12} {label:>9} {seconds:9.2f} {peak:9.2f} {biggest:9d}", flush=True)


if __name__ == "__main__":
    main()

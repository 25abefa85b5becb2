"""Time and peak memory of DACA's window attention: ours (streaming) vs the naive formula.

The naive version is the published approach: it materialises all ``P²`` bilinearly
sampled keys and values (``grid_sample`` once per window offset) and takes a softmax over
them. Ours is :func:`RegisterByGenerationLib.networks.window_attention.deformable_window_attention`.

Every configuration runs in a fresh subprocess so that peak memory is its own: on the CPU
the peak resident set size (``ru_maxrss``) minus the value after imports and input
creation; on CUDA ``torch.cuda.max_memory_allocated`` minus the memory held before the call.
The naive version is skipped (with its estimate) when it would need more than
``--naive-limit-gib``.

Usage::

    python benchmarks/daca.py --threads 2 --repeats 3
    python benchmarks/daca.py --sizes 96x80 --backward --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SIZES = "48x40,96x80,192x160,384x320"
REPO_ROOT = Path(__file__).resolve().parents[1]


def naive_window_attention(query, key, value, flow, window: int, scale: float | None = None):
    """Reference: sample all P² keys/values with ``grid_sample`` and take a softmax over them."""
    import torch
    import torch.nn.functional as F

    batch, heads, dim, height, width = query.shape
    scale = dim**-0.5 if scale is None else scale
    offsets = range(-((window - 1) // 2), window // 2 + 1)
    ys = torch.arange(height, dtype=query.dtype, device=query.device).view(1, height, 1) + flow[:, 0]
    xs = torch.arange(width, dtype=query.dtype, device=query.device).view(1, 1, width) + flow[:, 1]
    keys = query.new_empty(batch, heads, window * window, dim, height, width)
    values = torch.empty_like(keys)
    for i, (oy, ox) in enumerate((oy, ox) for oy in offsets for ox in offsets):
        # pixel coordinates -> grid_sample's normalised coordinates (align_corners=True)
        grid = torch.stack((2 * (xs + ox) / (width - 1) - 1, 2 * (ys + oy) / (height - 1) - 1), dim=-1)
        for target, source in ((keys, key), (values, value)):
            sampled = F.grid_sample(
                source.reshape(batch, heads * dim, height, width),
                grid,
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )
            target[:, :, i] = sampled.view(batch, heads, dim, height, width)
    logits = scale * (query.unsqueeze(2) * keys).sum(3)  # [B, heads, P², H, W]
    weights = logits.softmax(dim=2)
    return (weights.unsqueeze(3) * values).sum(2)


def naive_bytes(size: tuple[int, int], args: argparse.Namespace) -> int:
    """Memory of the naive version: sampled keys, values and their weighted product."""
    height, width = size
    per_tensor = args.batch * args.window**2 * args.channels * height * width * 4
    return (6 if args.backward else 3) * per_tensor


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            height, width = (int(v) for v in item.lower().split("x"))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"sizes must look like 96x80,192x160; got {item!r}") from error
        sizes.append((height, width))
    return sizes


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def worker(args: argparse.Namespace) -> dict:
    """Run one configuration in this (fresh) process and return its measurements."""
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from RegisterByGenerationLib.networks.window_attention import deformable_window_attention

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    height, width = parse_sizes(args.worker_size)[0]
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, args.channels // args.heads, height, width)
    q, k, v = (torch.randn(shape, generator=generator).to(device) for _ in range(3))
    flow = (3 * torch.randn(args.batch, 2, height, width, generator=generator)).to(device)
    if args.backward:
        for t in (q, k, v):
            t.requires_grad_(True)
    function = deformable_window_attention if args.worker == "ours" else naive_window_attention

    def call():
        out = function(q, k, v, flow, args.window)
        if args.backward:
            out.backward(torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        call()  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_rss_bytes()
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    return {
        "best_s": min(times),
        "median_s": sorted(times)[len(times) // 2],
        "cpu_s": min(cpu_times),
        "peak_bytes": peak - base,
    }


def run_config(impl: str, size: tuple[int, int], args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--worker", impl, "--worker-size", f"{size[0]}x{size[1]}",
        "--device", args.device, "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--window", str(args.window), "--channels", str(args.channels), "--heads", str(args.heads),
        "--batch", str(args.batch),
    ] + (["--backward"] if args.backward else [])  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2, as CI)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per configuration (best and median)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"HxW list (default: {DEFAULT_SIZES})")
    parser.add_argument("--window", type=int, default=28, help="window side P (default: 28)")
    parser.add_argument("--channels", type=int, default=14, help="feature channels (default: 14)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads (default: 2)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backward", action="store_true", help="time forward + backward (training)")
    parser.add_argument("--naive-limit-gib", type=float, default=8.0, help="skip naive above this estimate")
    parser.add_argument("--worker", choices=("ours", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-size", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    import torch  # only for the version in the header

    what = "forward + backward" if args.backward else "forward"
    print(
        f"DACA window attention, {what}: P={args.window}, C={args.channels}, heads={args.heads}, "
        f"batch={args.batch}, device={args.device}, threads={args.threads}, torch {torch.__version__}, "
        f"best/median of {args.repeats}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    print(
        "| feature map | implementation | wall time per call (s), best / median "
        "| CPU time (s), best | peak memory |"
    )
    print("|---|---|---|---|---|")
    for size in parse_sizes(args.sizes):
        for impl in ("ours", "naive"):
            label = f"{size[0]}x{size[1]}"
            estimate = naive_bytes(size, args)
            if impl == "naive" and estimate > args.naive_limit_gib * 2**30:
                print(f"| {label} | naive | skipped | | would need {estimate / 2**30:.1f} GiB |", flush=True)
                continue
            result = run_config(impl, size, args)
            if "error" in result:
                print(f"| {label} | {impl} | failed: {result['error']} | | |", flush=True)
                continue
            memory = result["peak_bytes"] / 2**20
            print(
                f"| {label} | {impl} | {result['best_s']:.3f} / {result['median_s']:.3f} | "
                f"{result['cpu_s']:.3f} | {memory:,.0f} MiB |",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

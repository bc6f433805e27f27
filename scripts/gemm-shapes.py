#!/usr/bin/env python3
"""The decode step's projections at small batch: cuBLAS (PyTorch's bf16 linear, as the engine's
cuBLAS GEMMs) against autotuned Triton GEMMs (one thread block per output tile, and split-K with
f32 atomics), beside each shape's floors. Run on a machine with a GPU
(PyTorch and Triton are installed there); prints a markdown table and writes $OUT/gemm-shapes.json.
Each figure is the time per GEMM in a CUDA graph of 28 of them, each with its own weights (the
layers of a decode step); the autotuner picks configurations by its own timing first.

How much of the projections' 3.2x over their floor (docs/PERF.md, "Where a decode step goes") a GEMM tuned for
M <= 256 could recover, before building one: the first step of the redesign the 1.6x target needs.

    python3 scripts/gemm-shapes.py [--hidden 1024 --heads 16 --kv-heads 8 --head-dim 128 --inter 3072]
"""
import argparse
import json
import os

import torch
import triton
import triton.language as tl

COPY_BYTES_PER_S = 4.27e12  # an H200's device copy, bytes read + written (docs/PERF.md)
BF16_FLOP_PER_S = 790e12     # an H200's bf16 matrix product, 8192^3 (docs/PERF.md)


def configs():
    out = []
    for bm in (16, 64, 128):
        for bn in (64, 128):
            for bk in (64, 128):
                for stages in (3, 5):
                    for warps in (4, 8):
                        if bm * bn >= 128 * 128 and warps == 4:
                            continue
                        out.append(triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_stages=stages, num_warps=warps))
    return out


@triton.autotune(configs=configs(), key=["M", "N", "K"])
@triton.jit
def linear_kernel(x, w, y, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """y[M, N] = x[M, K] @ w[N, K]^T, bf16 in and out, f32 accumulation."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(x + rm[:, None] * K + (k0 + rk)[None, :], mask=(rm[:, None] < M) & ((k0 + rk)[None, :] < K), other=0.0)
        b = tl.load(w + rn[None, :] * K + (k0 + rk)[:, None], mask=(rn[None, :] < N) & ((k0 + rk)[:, None] < K), other=0.0)
        acc = tl.dot(a, b, acc)
    tl.store(y + rm[:, None] * N + rn[None, :], acc.to(tl.bfloat16), mask=(rm[:, None] < M) & (rn[None, :] < N))


def split_configs():
    out = []
    for bm in (16, 64):
        for bn in (64, 128):
            for bk in (64, 128):
                for split in (2, 4, 8):
                    for stages in (3, 4):
                        out.append(triton.Config({"BM": bm, "BN": bn, "BK": bk, "SPLIT": split}, num_stages=stages, num_warps=4))
    return out


@triton.autotune(configs=split_configs(), key=["M", "N", "K"])
@triton.jit
def split_k_kernel(x, w, y, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr):
    """y[M, N] += x[M, K/SPLIT slice] @ w[N, K/SPLIT slice]^T in f32 (y zeroed first): more thread
    blocks than output tiles, so that a small M still spreads the weights over every SM."""
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    span = tl.cdiv(K, SPLIT * BK) * BK
    for k0 in range(pid_k * span, tl.minimum((pid_k + 1) * span, K), BK):
        a = tl.load(x + rm[:, None] * K + (k0 + rk)[None, :], mask=(rm[:, None] < M) & ((k0 + rk)[None, :] < K), other=0.0)
        b = tl.load(w + rn[None, :] * K + (k0 + rk)[:, None], mask=(rn[None, :] < N) & ((k0 + rk)[:, None] < K), other=0.0)
        acc = tl.dot(a, b, acc)
    tl.atomic_add(y + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N), sem="relaxed")


def split_k_linear(x, w, y):
    """Into y (f32, zeroed by the caller: timed without it, checked with it)."""
    m, k = x.shape
    n = w.shape[0]
    grid = lambda meta: (triton.cdiv(m, meta["BM"]), triton.cdiv(n, meta["BN"]), meta["SPLIT"])
    split_k_kernel[grid](x, w, y, m, n, k)
    return y


def triton_linear(x, w):
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=torch.bfloat16)
    grid = lambda meta: (triton.cdiv(m, meta["BM"]), triton.cdiv(n, meta["BN"]))
    linear_kernel[grid](x, w, y, m, n, k)
    return y


LAYERS = 28  # distinct weights per timed graph, as the model's layers: 8-25 MB each, so from DRAM


def per_call_us(calls):
    """Median time per call of a CUDA graph replaying `calls` back to back, as a decode step's graph
    runs its layers (no host launch cost, each call's weights cold in L2)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:  # warm-up (and autotuning) outside the capture
            call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--inter", type=int, default=3072)
    p.add_argument("--batches", default="256,64,8")
    a = p.parse_args()
    h, d = a.hidden, a.head_dim
    shapes = {
        "qkv": ((a.heads + 2 * a.kv_heads) * d, h),
        "o": (h, a.heads * d),
        "gate_up": (2 * a.inter, h),
        "down": (h, a.inter),
    }
    torch.manual_seed(0)
    rows = []
    print("| M | projection | N x K | cuBLAS (us) | Triton (us) | Triton split-K + zeroing, f32 out (us) | weights floor (us) | flops floor (us) | split-K config |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in (int(b) for b in a.batches.split(",")):
        for name, (n, k) in shapes.items():
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
            ref = torch.nn.functional.linear(x, w)
            got = triton_linear(x, w)
            err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
            assert err < 1e-2, f"{name} M={m}: Triton off by {err}"
            y = torch.zeros(m, n, device="cuda", dtype=torch.float32)
            split_k_linear(x, w, y)  # autotunes (adding into y many times), then a checked run
            y.zero_()
            split_k_linear(x, w, y)
            split_err = ((y - ref.float()).norm() / ref.float().norm()).item()
            assert split_err < 1e-2, f"{name} M={m}: split-K off by {split_err}"
            ws = [w] + [torch.randn_like(w) / k**0.5 for _ in range(LAYERS - 1)]
            ys = [torch.zeros(m, n, device="cuda", dtype=torch.float32) for _ in range(LAYERS)]
            cublas = per_call_us([lambda i=i: torch.nn.functional.linear(x, ws[i]) for i in range(LAYERS)])
            tuned = per_call_us([lambda i=i: triton_linear(x, ws[i]) for i in range(LAYERS)])
            split = per_call_us([lambda i=i: (ys[i].zero_(), split_k_linear(x, ws[i], ys[i])) for i in range(LAYERS)])
            bytes_floor = (n * k + m * k + m * n) * 2 / COPY_BYTES_PER_S * 1e6
            flops_floor = 2 * m * n * k / BF16_FLOP_PER_S * 1e6
            best = str(split_k_kernel.best_config)
            rows.append(dict(m=m, name=name, n=n, k=k, cublas_us=cublas, triton_us=tuned, split_k_us=split,
                             bytes_floor_us=bytes_floor, flops_floor_us=flops_floor, config=best, rel_err=err))
            print(f"| {m} | {name} | {n} x {k} | {cublas:.1f} | {tuned:.1f} | {split:.1f} | {bytes_floor:.1f} | {flops_floor:.1f} | {best} |", flush=True)
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "gemm-shapes.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

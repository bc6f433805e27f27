#!/usr/bin/env python3
"""An anchor for prefill attention at a long context, on a machine with a GPU and PyTorch.

PyTorch's fused scaled_dot_product_attention (each backend that takes the shape: FlashAttention-2,
the memory-efficient kernel, cuDNN), dense bf16 K/V, on the shape `bench_kernels` times for this
engine's prefill kernel: the last 2048 of 30,000 positions of one sequence, each query seeing the
positions up to its own (a lower-right causal mask), at the Qwen3-0.6B (16 query / 8 kv heads)
and Qwen3-8B (32 / 8) layer shapes, head_dim 128. K/V heads are repeated for the query heads that
share them. Prints the median of 30 runs after 5 warm-ups (CUDA events) and TFLOP/s counted as
`bench_kernels` counts them (QK and PV: 4 x head_dim flops per query, head and key seen); with
$OUT set, also writes $OUT/prefill-anchor.json.

    python3 scripts/gpu-prefill-anchor.py
"""
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

CONTEXT, CHUNK, HEAD_DIM = 30000, 2048, 128
BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def median_us(run):
    for _ in range(5):
        run()
    times = []
    for _ in range(30):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return sorted(times)[len(times) // 2]


def bench(model, heads, kv_heads):
    q = torch.randn(1, heads, CHUNK, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, kv_heads, CONTEXT, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))
    mask = causal_lower_right(CHUNK, CONTEXT)
    keys_seen = sum(range(CONTEXT - CHUNK + 1, CONTEXT + 1))
    flops = 4.0 * HEAD_DIM * heads * keys_seen
    rows = []
    for name, backend in BACKENDS.items():
        try:
            with sdpa_kernel(backend):
                us = median_us(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
            rows.append({"model": model, "backend": name, "us": us, "TFLOPs": flops / us / 1e6})
            print(f"{model} ({heads}/{kv_heads} heads), {name}: {us:.1f} us, {flops / us / 1e6:.0f} TFLOP/s")
        except RuntimeError as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            rows.append({"model": model, "backend": name, "error": first_line})
            print(f"{model} ({heads}/{kv_heads} heads), {name}: not run ({first_line})")
    return rows


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    rows = bench("Qwen3-0.6B", 16, 8) + bench("Qwen3-8B", 32, 8)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "prefill-anchor.json"), "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The INT4 cache kernels (store, decode attention and its reduce kernel, prefill attention) run on
# the host, without a GPU:
# kv-cache/emulation/ emulates the CUDA they use (a std::thread per CUDA thread, warp collectives
# by exchange; its MMA sums in fp32) and checks them against a reference, for every head size and
# several groups, block sizes, warps and splits, on fresh random inputs each run (the seed is
# printed: SEED=... reruns one). The kernel sources are compiled as they are, less their inline
# PTX: the helpers of mma.cuh come from mma_host.cuh, and the few PTX lines elsewhere are replaced
# here. Needs g++ (C++20) and python3. What it cannot see: timing, memory ordering, and the real
# tensor cores' rounding (the GPU checks in tests/gpu_kernels.rs cover those).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp kv-cache/emulation/* kv-cache/src/cuda/layout.cuh "$work/"
python3 - "$work" <<'PY'
import re, sys
work = sys.argv[1]
def read(path): return open(path).read()
def strip_extern(src): return src.replace('extern "C" ', '')
# kv_quant.cuh: the INT8 and INT4 helpers (the FP8 ones need the hardware), a NaN-keeping max.
kvq = read('kv-quant/src/kv_quant.cuh')
kvq = kvq[:kvq.index('#if __CUDA_ARCH__ >= 890')]
kvq = re.sub(r'__device__ __forceinline__ float kv_max_nan\(float a, float b\) \{.*?\n\}',
             'inline float kv_max_nan(float a, float b) { return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b); }',
             kvq, flags=re.S)
# decode: the partial and reduce kernels; the reduce kernel's dynamic shared memory (a weight and a
# sum per split) becomes a static array.
decode = read('kv-cache/src/cuda/decode_attention.cu')
dynamic = 'extern __shared__ float s_weight[];'
assert dynamic in decode
decode = decode.replace(dynamic, 'static float s_weight[2 * 1024];')
# prefill: ldmatrix and the fp16 multiplication by their host versions.
prefill = re.sub(r'__device__ __forceinline__ void ldmatrix_x2_trans\(.*?\n\}\n', '', read('kv-cache/src/cuda/prefill_attention.cu'), flags=re.S)
prefill = prefill.replace('asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(r), "r"(ratio));', 'r = mul_f16x2(r, ratio);')
store = read('kv-cache/src/cuda/store.cu')
for name, src in [('kv_quant.cuh', kvq), ('decode_attention.cu', decode), ('prefill_attention.cu', prefill), ('store.cu', store)]:
    assert 'asm' not in src, name + ' still holds PTX'
    open(f'{work}/{name}', 'w').write(strip_extern(src))
PY
seed=${SEED:-$(( $(date +%s%N) % 1000000007 ))}
echo "seed $seed"
status=0
build() { g++ -std=c++20 -O1 -Wno-unknown-pragmas -pthread "$@"; }
for head_dim in 64 128 256; do
  build -DHEAD_DIM=$head_dim -o "$work/store" "$work/store_int4.cpp"
  "$work/store" "$seed" || status=1
done
# HEAD_DIM GROUP BLOCK_SIZE THREADS (decode warps x 32)
for shape in "128 2 16 128" "128 4 256 128" "64 8 32 64" "256 1 16 256" "128 8 32 256" "64 2 256 128"; do
  read -r head_dim group block threads <<< "$shape"
  build -DHEAD_DIM=$head_dim -DGROUP=$group -DBLOCK_SIZE=$block -DTHREADS=$threads -o "$work/decode" "$work/decode_int4.cpp"
  # split length, then splits in the grid past the contexts' (a graph captured for longer ones)
  for splits in "4096 0" "32 0" "16 0" "4096 2" "32 3" "16 6"; do "$work/decode" "$seed" $splits || status=1; done
  for keys in 32 64; do  # keys per tile: the default, and the tuning alternative
    build -DHEAD_DIM=$head_dim -DGROUP=$group -DBLOCK_SIZE=$block -DKT=$keys -o "$work/prefill" "$work/prefill_int4.cpp"
    "$work/prefill" "$seed" 70 || status=1
  done
done
exit $status

//! Times the cache kernels on the GPU against the bandwidth floor: paged decode attention (bf16,
//! INT8 and FP8) at the Qwen3-8B and Qwen3-0.6B layer shapes, and the store kernel; and prefill
//! attention of a long context's last chunk, against its tensor-core work (TFLOP/s).
//!
//! `cargo run --release -p kv-cache --features cuda --example bench_kernels [copy_TBps] [filter]`
//! (on a machine with a GPU: the binary from target/release/examples). `filter` keeps the benches whose
//! label contains it (`Qwen3-8B 128x4096 int8`, `store int8 Blocks`: one kernel for a profiler). Prints a
//! markdown table; with `$OUT` set, also writes `$OUT/bench_kernels.json`. Timing: CUDA events, 5
//! warm-up runs, median of 30, two ways interleaved (`Timer::median_us`): GPU time after a 256 MB
//! read that flushes L2 and hides the host's launch latency (as `triton.testing.do_bench`'s flush,
//! but without dirty lines), and with the host's launch included. The decode cache is also replicated and rotated so that every
//! run reads from DRAM, not L2 (60 MB on an H200).

use half::bf16;
use nanovllm_cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaViewMut, LaunchConfig, PushKernelArg, sys::CUevent_flags,
};
use nanovllm_cuda::{Gpu, GpuError};
use nanovllm_kv_cache::CacheLayout;
use nanovllm_kv_cache::cuda::{AttentionQueries, CacheKernels, DecodeWorkspace, GpuKvCache};
use nanovllm_kv_quant::CacheDtype;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Fills device memory with random data on the GPU (hashing the index), so that gigabytes of test
/// data need no host copy (`fill` mode 0: random bytes; 1: bf16 values in [-1, 1); 2: bf16 scales
/// in [1/128, 1/64); 3: E4M3 codes other than NaN); and reads a buffer through, to flush L2 (`Timer`).
const FILL_CU: &str = r#"
extern "C" __global__ void fill(unsigned char* p, long long n, unsigned int seed, int mode) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned int h = (unsigned int)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        if (mode == 0) { p[i] = (unsigned char)h; continue; }
        if (mode == 3) { p[i] = (unsigned char)(h & 0xfeu); continue; }  // E4M3 codes, never NaN
        if (i % 2) continue;
        unsigned short bits;
        if (mode == 1) { float f = (h >> 8) * (1.0f / 8388608.0f) - 1.0f; bits = (unsigned short)(__float_as_uint(f) >> 16); }
        else { bits = (unsigned short)(0x3c00u + (h & 0x7fu)); }
        p[i] = (unsigned char)(bits & 0xff); p[i + 1] = (unsigned char)(bits >> 8);
    }
}

// Reads n 16-byte words and keeps nothing: evicts L2 without leaving dirty lines behind (a write
// would, and their write-back would land in the timed kernel). The buffer is zeros, so the
// store never happens; it only keeps the loads alive.
extern "C" __global__ void read_all(const uint4* p, long long n, unsigned int* sink) {
    unsigned int acc = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const uint4 v = p[i];
        acc |= v.x | v.y | v.z | v.w;
    }
    if (acc != 0) sink[0] = acc;
}
"#;

const BLOCK_SIZE: usize = 64;
const L2_BYTES: usize = 60 << 20;

struct Timer {
    gpu: Gpu,
    /// 256 MB read before each timed run (as `triton.testing.do_bench` flushes L2, but reading,
    /// so that no dirty lines are written back during the timed run): it evicts L2, and keeps the
    /// GPU busy while the host queues the timed launches.
    flush: CudaSlice<u8>,
    read_all: CudaFunction,
}

/// Median times in microseconds: GPU time after an L2 flush, and host launch included.
struct Times {
    gpu_us: f64,
    launch_us: f64,
}

impl Timer {
    fn new(gpu: Gpu) -> Result<Self, GpuError> {
        let flush = gpu.stream.alloc_zeros::<u8>(256 << 20)?;
        let read_all = gpu.module("bench_fill", FILL_CU, &[])?.load_function("read_all")?;
        Ok(Timer { gpu, flush, read_all })
    }

    fn flush_l2(&self) -> Result<(), GpuError> {
        let words = (self.flush.len() / 16) as i64;
        let config = LaunchConfig { grid_dim: (1056, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut launch = self.gpu.stream.launch_builder(&self.read_all);
        launch.arg(&self.flush).arg(&words).arg(&self.flush);
        // SAFETY: read_all reads `words` 16-byte words of the buffer, and writes its first word
        // only if the (zeroed) buffer held a nonzero value.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(config)?;
        }
        Ok(())
    }

    /// Median times of `run` over 30 runs of each kind, interleaved, after 5 warm-ups. GPU time:
    /// events around `run` queued behind the flush, so the host's launch latency stays out, as in
    /// a CUDA graph. Launch included: events around `run` on an idle GPU, so the time also counts
    /// the host's first launch (this bench's figure up to kernels version 20).
    fn median_us(&self, mut run: impl FnMut(usize) -> Result<(), GpuError>) -> Result<Times, GpuError> {
        for i in 0..5 {
            run(i)?;
        }
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let (mut gpu_times, mut launch_times) = (Vec::new(), Vec::new());
        for i in 0..30 {
            for flushed in [true, false] {
                if flushed {
                    self.flush_l2()?;
                }
                let start = self.gpu.ctx.new_event(flags)?;
                let end = self.gpu.ctx.new_event(flags)?;
                start.record(&self.gpu.stream)?;
                run(i)?;
                end.record(&self.gpu.stream)?;
                end.synchronize()?;
                let us = start.elapsed_ms(&end)? as f64 * 1000.0;
                if flushed { gpu_times.push(us) } else { launch_times.push(us) }
            }
        }
        let median = |mut times: Vec<f64>| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        };
        Ok(Times { gpu_us: median(gpu_times), launch_us: median(launch_times) })
    }
}

fn fill(gpu: &Gpu, bytes: &mut CudaViewMut<'_, u8>, mode: i32, seed: u32) -> Result<(), GpuError> {
    let module = gpu.module("bench_fill", FILL_CU, &[])?;
    let function = module.load_function("fill")?;
    let n = bytes.len() as i64;
    let config = LaunchConfig { grid_dim: (4096, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut launch = gpu.stream.launch_builder(&function);
    launch.arg(bytes).arg(&n).arg(&seed).arg(&mode);
    // SAFETY: fill writes only below n, the view's length.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(config)?;
    }
    Ok(())
}

fn fill_bf16(gpu: &Gpu, buffer: &mut CudaSlice<bf16>, mode: i32, seed: u32) -> Result<(), GpuError> {
    let len = buffer.len() * 2;
    // SAFETY: the same memory seen as bytes: a bf16 buffer holds twice as many bytes.
    #[allow(unsafe_code)]
    let mut bytes = unsafe { buffer.transmute_mut::<u8>(len) }.expect("len fits the buffer");
    fill(gpu, &mut bytes, mode, seed)
}

/// The cache dtypes the GPU kernels read.
const DTYPES: [CacheDtype; 5] =
    [CacheDtype::Bf16, CacheDtype::Int8, CacheDtype::Fp8PerTokenHead, CacheDtype::Fp8, CacheDtype::Int4];

struct Shape {
    model: &'static str,
    heads: usize,
    kv_heads: usize,
    batch: usize,
    context: usize,
}

fn bench_decode(
    timer: &Timer,
    shape: &Shape,
    dtype: CacheDtype,
    copy_bandwidth: f64,
    rng: &mut StdRng,
) -> Result<serde_json::Value, GpuError> {
    let gpu = &timer.gpu;
    let d = 128;
    let blocks_per_seq = shape.context.div_ceil(BLOCK_SIZE);
    let num_blocks = shape.batch * blocks_per_seq;
    let layout = CacheLayout {
        num_layers: 1,
        num_blocks,
        block_size: BLOCK_SIZE,
        kv_heads: shape.kv_heads,
        head_dim: d,
    };
    let kv_bytes = layout.bytes(dtype).expect("bench shapes fit");
    let copies = (4 * L2_BYTES).div_ceil(kv_bytes).clamp(1, 8);
    let mut caches = Vec::new();
    for copy in 0..copies {
        caches.push(random_cache(gpu, layout, dtype, (copy * 16) as u32)?);
    }
    let mut blocks: Vec<i32> = (0..num_blocks as i32).collect();
    blocks.shuffle(rng);
    let tables = gpu.stream.clone_htod(&blocks)?;
    let lens = gpu.stream.clone_htod(&vec![shape.context as i32; shape.batch])?;
    let q: Vec<bf16> =
        (0..shape.batch * shape.heads * d).map(|_| bf16::from_f32(rng.random_range(-1.0..1.0))).collect();
    let q = gpu.stream.clone_htod(&q)?;
    let mut out = gpu.stream.alloc_zeros::<bf16>(shape.batch * shape.heads * d)?;
    let kernels = CacheKernels::new(gpu, dtype, d, shape.heads / shape.kv_heads, BLOCK_SIZE)?;
    let builds: Vec<serde_json::Value> = kernels
        .decode_resources()?
        .iter()
        .map(|&(warps, registers, local_bytes, blocks_per_sm)| {
            serde_json::json!({"warps": warps, "registers": registers, "local_bytes": local_bytes,
                "blocks_per_sm": blocks_per_sm})
        })
        .collect();
    let mut workspace = DecodeWorkspace::new(gpu, shape.batch, shape.batch, shape.heads, d, shape.context)?;
    // Decode: each query is a group of one, reading its own sequence's table.
    let groups = gpu.stream.clone_htod(&(0..=shape.batch as i32).collect::<Vec<_>>())?;
    let split = kernels.split_planner(&caches[0], &workspace).eager(shape.batch, shape.batch, shape.context);
    let geometry = gpu.stream.clone_htod(&split.geometry(blocks_per_seq))?;
    let queries = AttentionQueries {
        block_tables: tables.slice(..),
        geometry: geometry.slice(..),
        context_lens: lens.slice(..),
        groups: groups.slice(..),
        group_tables: groups.slice(..shape.batch),
        num_queries: shape.batch,
        num_groups: shape.batch,
    };
    // SAFETY: the tables hold blocks of these caches, contexts fit them, one query per group.
    #[allow(unsafe_code)]
    let times = timer.median_us(|i| unsafe {
        kernels.attention(
            gpu,
            &caches[i % copies],
            0,
            &q.slice(..),
            shape.heads * d,
            &queries,
            split,
            &mut workspace,
            &mut out,
        )
    })?;
    let bytes = kv_bytes as f64 + 2.0 * (shape.batch * shape.heads * d * 2) as f64;
    let floor_us = bytes / copy_bandwidth * 1e6;
    Ok(serde_json::json!({
        "kernel": "decode_attention", "model": shape.model, "dtype": dtype.name(),
        "batch": shape.batch, "context": shape.context, "heads": shape.heads, "kv_heads": shape.kv_heads,
        "block_size": BLOCK_SIZE, "splits": split.splits, "partition": split.partition, "us": times.gpu_us, "launch_us": times.launch_us, "floor_us": floor_us,
        "TBps": bytes / times.gpu_us / 1e6,
        "builds": builds,
    }))
}

/// Where a store's tokens go: `Shuffled`, every token to a random slot of blocks of 16 (the worst
/// case: each row written alone); `Blocks`, a prefill's pattern, consecutive tokens filling whole
/// blocks of 256 in order, the blocks shuffled.
#[derive(Clone, Copy, Debug)]
enum Slots {
    Shuffled,
    Blocks,
}

impl Slots {
    fn label(self) -> &'static str {
        match self {
            Slots::Shuffled => "slots shuffled, blocks of 16",
            Slots::Blocks => "whole blocks of 256 (prefill)",
        }
    }

    fn block_size(self) -> usize {
        match self {
            Slots::Shuffled => 16,
            Slots::Blocks => 256,
        }
    }
}

fn bench_store(
    timer: &Timer,
    dtype: CacheDtype,
    pattern: Slots,
    rng: &mut StdRng,
) -> Result<serde_json::Value, GpuError> {
    let gpu = &timer.gpu;
    let (tokens, kv_heads, d, block_size) = (16384, 8, 128, pattern.block_size());
    let num_blocks = tokens / block_size;
    let layout = CacheLayout { num_layers: 1, num_blocks, block_size, kv_heads, head_dim: d };
    let mut cache = GpuKvCache::new(gpu, layout, dtype)?;
    let mut key = gpu.stream.alloc_zeros::<bf16>(tokens * kv_heads * d)?;
    let mut value = gpu.stream.alloc_zeros::<bf16>(tokens * kv_heads * d)?;
    fill_bf16(gpu, &mut key, 1, 7)?;
    fill_bf16(gpu, &mut value, 1, 8)?;
    let slots: Vec<i64> = match pattern {
        Slots::Shuffled => {
            let mut slots: Vec<i64> = (0..tokens as i64).collect();
            slots.shuffle(rng);
            slots
        }
        Slots::Blocks => {
            let mut blocks: Vec<i64> = (0..num_blocks as i64).collect();
            blocks.shuffle(rng);
            blocks
                .iter()
                .flat_map(|&b| (0..block_size as i64).map(move |o| b * block_size as i64 + o))
                .collect()
        }
    };
    let slots = gpu.stream.clone_htod(&slots)?;
    let kernels = CacheKernels::new(gpu, dtype, d, 2, block_size)?;
    // SAFETY: the slots are slots of this cache.
    #[allow(unsafe_code)]
    let times = timer.median_us(|_| unsafe {
        kernels.store(
            gpu,
            &mut cache,
            0,
            &key.slice(..),
            &value.slice(..),
            kv_heads * d,
            &slots.slice(..),
            tokens,
        )
    })?;
    let read = (2 * tokens * kv_heads * d * 2) as f64;
    let written = (2 * tokens * kv_heads * dtype.row_bytes(d)) as f64;
    Ok(serde_json::json!({
        "kernel": "store_kv", "dtype": dtype.name(), "tokens": tokens, "kv_heads": kv_heads,
        "slots": format!("{pattern:?}"), "block_size": block_size,
        "us": times.gpu_us, "launch_us": times.launch_us, "TBps": (read + written) / times.gpu_us / 1e6,
    }))
}

/// A cache of `layout` with random codes (or bf16 values) and scales, plane `i` drawn from
/// `seed + i` (its scales from `seed + i + 1000`).
fn random_cache(
    gpu: &Gpu,
    layout: CacheLayout,
    dtype: CacheDtype,
    seed: u32,
) -> Result<GpuKvCache, GpuError> {
    let mut cache = GpuKvCache::new(gpu, layout, dtype)?;
    let mode = match dtype {
        CacheDtype::Int8 | CacheDtype::Int4 => 0,
        CacheDtype::Fp8PerTokenHead | CacheDtype::Fp8 => 3,
        _ => 1,
    };
    for (i, plane) in cache.keys.iter_mut().chain(cache.values.iter_mut()).enumerate() {
        let seed = seed + i as u32;
        fill(gpu, &mut plane.data.as_view_mut(), mode, seed)?;
        if dtype.has_scales() {
            fill_bf16(gpu, &mut plane.scales, 2, seed + 1000)?;
        }
    }
    Ok(cache)
}

/// Prefill attention of the last `chunk` positions of one sequence of `context` tokens (each query
/// sees the positions up to its own), at a layer shape: its time and its rate in TFLOP/s (QK and
/// PV, 4 x head_dim flops per query, head and key seen).
fn bench_prefill(
    timer: &Timer,
    shape: &Shape,
    chunk: usize,
    dtype: CacheDtype,
) -> Result<serde_json::Value, GpuError> {
    let gpu = &timer.gpu;
    let (d, context) = (128, shape.context);
    let blocks = context.div_ceil(BLOCK_SIZE);
    let layout = CacheLayout {
        num_layers: 1,
        num_blocks: blocks,
        block_size: BLOCK_SIZE,
        kv_heads: shape.kv_heads,
        head_dim: d,
    };
    let cache = random_cache(gpu, layout, dtype, 100)?;
    let kernels = CacheKernels::new(gpu, dtype, d, shape.heads / shape.kv_heads, BLOCK_SIZE)?;
    let per_group = kernels.prefill_queries_per_group();
    let first = context - chunk;
    let lens: Vec<i32> = (first..context).map(|p| p as i32 + 1).collect();
    let groups: Vec<i32> = (0..chunk).step_by(per_group).chain([chunk]).map(|g| g as i32).collect();
    let num_groups = groups.len() - 1;
    let table: Vec<i32> = (0..blocks as i32).collect();
    let (table, geometry) = (gpu.stream.clone_htod(&table)?, gpu.stream.clone_htod(&[blocks as i32, 16])?);
    let (lens, groups, group_tables) = (
        gpu.stream.clone_htod(&lens)?,
        gpu.stream.clone_htod(&groups)?,
        gpu.stream.clone_htod(&vec![0i32; num_groups])?,
    );
    let queries = AttentionQueries {
        block_tables: table.slice(..),
        geometry: geometry.slice(..),
        context_lens: lens.slice(..),
        groups: groups.slice(..),
        group_tables: group_tables.slice(..),
        num_queries: chunk,
        num_groups,
    };
    let mut q = gpu.stream.alloc_zeros::<bf16>(chunk * shape.heads * d)?;
    fill_bf16(gpu, &mut q, 1, 300)?;
    let mut out = gpu.stream.alloc_zeros::<bf16>(chunk * shape.heads * d)?;
    // SAFETY: the one table holds every block of this cache; each query's context fits it; the
    // groups are consecutive positions of the one sequence, at most `per_group` each.
    #[allow(unsafe_code)]
    let times = timer.median_us(|_| unsafe {
        kernels.prefill_attention(gpu, &cache, 0, &q.slice(..), shape.heads * d, &queries, &mut out)
    })?;
    let keys_seen: usize = (first + 1..=context).sum();
    let flops = 4.0 * d as f64 * shape.heads as f64 * keys_seen as f64;
    Ok(serde_json::json!({
        "kernel": "prefill_attention", "model": shape.model, "dtype": dtype.name(), "context": context,
        "chunk": chunk, "heads": shape.heads, "kv_heads": shape.kv_heads, "block_size": BLOCK_SIZE,
        "us": times.gpu_us, "launch_us": times.launch_us, "TFLOPs": flops / times.gpu_us / 1e6,
    }))
}

fn main() -> Result<(), GpuError> {
    let copy_bandwidth: f64 =
        std::env::args().nth(1).map_or(4.27e12, |a| a.parse::<f64>().expect("copy TB/s") * 1e12);
    let filter = std::env::args().nth(2).unwrap_or_default();
    let gpu = Gpu::open()?;
    println!("{}", gpu.describe());
    let timer = Timer::new(gpu)?;
    let mut rng = StdRng::seed_from_u64(0);
    let shapes = [
        Shape { model: "Qwen3-8B", heads: 32, kv_heads: 8, batch: 128, context: 4096 },
        Shape { model: "Qwen3-8B", heads: 32, kv_heads: 8, batch: 32, context: 8192 },
        Shape { model: "Qwen3-8B", heads: 32, kv_heads: 8, batch: 1, context: 32768 },
        Shape { model: "Qwen3-0.6B", heads: 16, kv_heads: 8, batch: 256, context: 1024 },
        Shape { model: "Qwen3-0.6B", heads: 16, kv_heads: 8, batch: 64, context: 4096 },
        Shape { model: "Qwen3-0.6B", heads: 16, kv_heads: 8, batch: 1, context: 32768 },
    ];
    let mut results = Vec::new();
    println!(
        "| kernel | shape | batch x context | dtype | time (us) | launch included (us) | floor (us) | TB/s | % of copy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let row = |kernel: &str, shape: String, batch: &str, dtype: CacheDtype, r: &serde_json::Value| {
        let tbps = r["TBps"].as_f64().unwrap();
        let floor = r["floor_us"].as_f64().map_or("-".to_string(), |f| format!("{f:.1}"));
        println!(
            "| {kernel} | {shape} | {batch} | {dtype} | {:.1} | {:.1} | {floor} | {tbps:.2} | {:.0}% |",
            r["us"].as_f64().unwrap(),
            r["launch_us"].as_f64().unwrap(),
            100.0 * tbps * 1e12 / copy_bandwidth
        );
    };
    for shape in &shapes {
        for dtype in DTYPES {
            if !format!("{} {}x{} {dtype}", shape.model, shape.batch, shape.context).contains(&filter) {
                continue;
            }
            let r = bench_decode(&timer, shape, dtype, copy_bandwidth, &mut rng)?;
            let label = format!("{} ({}/{} heads)", shape.model, shape.heads, shape.kv_heads);
            row("decode attention", label, &format!("{} x {}", shape.batch, shape.context), dtype, &r);
            for build in r["builds"].as_array().expect("builds") {
                println!(
                    "  decode kernel, {} warps per block: {} registers, {} local bytes per thread, {} blocks per SM",
                    build["warps"], build["registers"], build["local_bytes"], build["blocks_per_sm"]
                );
            }
            results.push(r);
        }
    }
    for pattern in [Slots::Shuffled, Slots::Blocks] {
        for dtype in DTYPES {
            if !format!("store {dtype} {pattern:?}").contains(&filter) {
                continue;
            }
            let r = bench_store(&timer, dtype, pattern, &mut rng)?;
            let label = format!("16384 tokens x 8 kv heads x 128, {}", pattern.label());
            row("store (quantize on write)", label, "-", dtype, &r);
            results.push(r);
        }
    }
    // The long-context bench's prefill (16 x 30,000 tokens in chunks): a chunk's attention.
    for (model, heads) in [("Qwen3-0.6B", 16), ("Qwen3-8B", 32)] {
        let shape = Shape { model, heads, kv_heads: 8, batch: 1, context: 30000 };
        for dtype in DTYPES {
            if !format!("prefill {model} {dtype}").contains(&filter) {
                continue;
            }
            let r = bench_prefill(&timer, &shape, 2048, dtype)?;
            println!(
                "prefill attention, {model} ({heads}/8 heads), the last 2048 of 30000 positions, {dtype}: {:.1} us ({:.1} launch included), {:.0} TFLOP/s",
                r["us"].as_f64().unwrap(),
                r["launch_us"].as_f64().unwrap(),
                r["TFLOPs"].as_f64().unwrap()
            );
            results.push(r);
        }
    }
    if let Some(out) = std::env::var_os("OUT") {
        let path = std::path::Path::new(&out).join("bench_kernels.json");
        std::fs::write(path, serde_json::to_string_pretty(&results).expect("json")).expect("writable $OUT");
    }
    Ok(())
}

//! Times the cache kernels on the GPU against the bandwidth floor: paged decode attention (bf16
//! and INT8) at the Qwen3-8B and Qwen3-0.6B layer shapes, and the store kernel.
//!
//! `cargo run --release -p kv-cache --features cuda --example bench_kernels [copy_TBps] [filter]`
//! (on the GPU machine: the binary from target/release/examples). `filter` keeps the benches whose
//! label contains it (`Qwen3-8B 128x4096 int8`, `store int8`: one kernel for a profiler). Prints a markdown table; with
//! `$OUT` set, also writes `$OUT/bench_kernels.json`. Timing: CUDA events around each launch,
//! 5 warm-up runs, median of 30; the cache is replicated and rotated so that every run reads
//! from DRAM, not L2 (60 MB on an H200).

use half::bf16;
use kv_cache::cuda::{AttentionQueries, CacheKernels, DecodeWorkspace, GpuKvCache};
use kv_cache::{CacheDtype, CacheLayout};
use kv_quant::cuda::cudarc::driver::{
    CudaSlice, CudaViewMut, LaunchConfig, PushKernelArg, sys::CUevent_flags,
};
use kv_quant::cuda::{Gpu, GpuError};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Fills device memory with random data on the GPU (hashing the index), so that gigabytes of test
/// data need no host copy. mode 0: random bytes; 1: bf16 values in [-1, 1); 2: bf16 scales in
/// [1/128, 1/64).
const FILL_CU: &str = r#"
extern "C" __global__ void fill(unsigned char* p, long long n, unsigned int seed, int mode) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned int h = (unsigned int)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        if (mode == 0) { p[i] = (unsigned char)h; continue; }
        if (i % 2) continue;
        unsigned short bits;
        if (mode == 1) { float f = (h >> 8) * (1.0f / 8388608.0f) - 1.0f; bits = (unsigned short)(__float_as_uint(f) >> 16); }
        else { bits = (unsigned short)(0x3c00u + (h & 0x7fu)); }
        p[i] = (unsigned char)(bits & 0xff); p[i + 1] = (unsigned char)(bits >> 8);
    }
}
"#;

const BLOCK_SIZE: usize = 64;
const L2_BYTES: usize = 60 << 20;

struct Timer {
    gpu: Gpu,
}

impl Timer {
    /// Median time in microseconds of `run`, over 30 runs after 5 warm-ups.
    fn median_us(&self, mut run: impl FnMut(usize) -> Result<(), GpuError>) -> Result<f64, GpuError> {
        for i in 0..5 {
            run(i)?;
        }
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::new();
        for i in 0..30 {
            let start = self.gpu.ctx.new_event(flags)?;
            let end = self.gpu.ctx.new_event(flags)?;
            start.record(&self.gpu.stream)?;
            run(i)?;
            end.record(&self.gpu.stream)?;
            end.synchronize()?;
            times.push(start.elapsed_ms(&end)? as f64 * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
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
        let mut cache = GpuKvCache::new(gpu, layout, dtype)?;
        for (i, plane) in cache.keys.iter_mut().chain(cache.values.iter_mut()).enumerate() {
            let seed = (copy * 16 + i) as u32;
            fill(gpu, &mut plane.data.as_view_mut(), if dtype == CacheDtype::Int8 { 0 } else { 1 }, seed)?;
            if dtype == CacheDtype::Int8 {
                fill_bf16(gpu, &mut plane.scales, 2, seed + 1000)?;
            }
        }
        caches.push(cache);
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
    let mut workspace = DecodeWorkspace::new(gpu, shape.batch, shape.batch, shape.heads, d, shape.context)?;
    // Decode: each query is a group of one, reading its own sequence's table.
    let groups = gpu.stream.clone_htod(&(0..=shape.batch as i32).collect::<Vec<_>>())?;
    let queries = AttentionQueries {
        block_tables: tables.slice(..),
        max_blocks: blocks_per_seq,
        context_lens: lens.slice(..),
        groups: groups.slice(..),
        group_tables: groups.slice(..shape.batch),
        num_queries: shape.batch,
        num_groups: shape.batch,
    };
    let us = timer.median_us(|i| {
        kernels.attention(
            gpu,
            &caches[i % copies],
            0,
            &q.slice(..),
            shape.heads * d,
            &queries,
            &mut workspace,
            &mut out,
        )
    })?;
    let bytes = kv_bytes as f64 + 2.0 * (shape.batch * shape.heads * d * 2) as f64;
    let floor_us = bytes / copy_bandwidth * 1e6;
    Ok(serde_json::json!({
        "kernel": "decode_attention", "model": shape.model, "dtype": dtype.name(),
        "batch": shape.batch, "context": shape.context, "heads": shape.heads, "kv_heads": shape.kv_heads,
        "block_size": BLOCK_SIZE, "us": us, "floor_us": floor_us, "TBps": bytes / us / 1e6,
    }))
}

fn bench_store(timer: &Timer, dtype: CacheDtype, rng: &mut StdRng) -> Result<serde_json::Value, GpuError> {
    let gpu = &timer.gpu;
    let (tokens, kv_heads, d) = (16384, 8, 128);
    let layout =
        CacheLayout { num_layers: 1, num_blocks: tokens / 16, block_size: 16, kv_heads, head_dim: d };
    let mut cache = GpuKvCache::new(gpu, layout, dtype)?;
    let mut key = gpu.stream.alloc_zeros::<bf16>(tokens * kv_heads * d)?;
    let mut value = gpu.stream.alloc_zeros::<bf16>(tokens * kv_heads * d)?;
    fill_bf16(gpu, &mut key, 1, 7)?;
    fill_bf16(gpu, &mut value, 1, 8)?;
    let mut slots: Vec<i64> = (0..tokens as i64).collect();
    slots.shuffle(rng);
    let slots = gpu.stream.clone_htod(&slots)?;
    let kernels = CacheKernels::new(gpu, dtype, d, 2, 16)?;
    let us = timer.median_us(|_| {
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
        "us": us, "TBps": (read + written) / us / 1e6,
    }))
}

fn main() -> Result<(), GpuError> {
    let copy_bandwidth: f64 =
        std::env::args().nth(1).map_or(4.27e12, |a| a.parse::<f64>().expect("copy TB/s") * 1e12);
    let filter = std::env::args().nth(2).unwrap_or_default();
    let gpu = Gpu::open()?;
    println!("{}", gpu.describe());
    let timer = Timer { gpu };
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
    println!("| kernel | shape | batch x context | dtype | time (us) | floor (us) | TB/s | % of copy |");
    println!("|---|---|---|---|---|---|---|---|");
    for shape in &shapes {
        for dtype in [CacheDtype::Bf16, CacheDtype::Int8] {
            if !format!("{} {}x{} {dtype}", shape.model, shape.batch, shape.context).contains(&filter) {
                continue;
            }
            let r = bench_decode(&timer, shape, dtype, copy_bandwidth, &mut rng)?;
            println!(
                "| decode attention | {} ({}/{} heads) | {} x {} | {} | {:.1} | {:.1} | {:.2} | {:.0}% |",
                shape.model,
                shape.heads,
                shape.kv_heads,
                shape.batch,
                shape.context,
                dtype,
                r["us"].as_f64().unwrap(),
                r["floor_us"].as_f64().unwrap(),
                r["TBps"].as_f64().unwrap(),
                100.0 * r["TBps"].as_f64().unwrap() * 1e12 / copy_bandwidth
            );
            results.push(r);
        }
    }
    for dtype in [CacheDtype::Bf16, CacheDtype::Int8] {
        if !format!("store {dtype}").contains(&filter) {
            continue;
        }
        let r = bench_store(&timer, dtype, &mut rng)?;
        println!(
            "| store (quantize on write) | 16384 tokens x 8 kv heads x 128 | - | {} | {:.1} | - | {:.2} | {:.0}% |",
            dtype,
            r["us"].as_f64().unwrap(),
            r["TBps"].as_f64().unwrap(),
            100.0 * r["TBps"].as_f64().unwrap() * 1e12 / copy_bandwidth
        );
        results.push(r);
    }
    if let Some(out) = std::env::var_os("OUT") {
        let path = std::path::Path::new(&out).join("bench_kernels.json");
        std::fs::write(path, serde_json::to_string_pretty(&results).expect("json")).expect("writable $OUT");
    }
    Ok(())
}

//! The paged KV cache on the GPU: its storage, the store kernel (quantize on write) and paged
//! decode attention, for bf16, INT8, FP8 (per token-head, and per-tensor) and INT4 rows. Kernel
//! sources sit beside this file; KERNELS.md at the crate root indexes them.

use half::bf16;
use std::sync::Arc;

use nanovllm_cuda::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
    sys::CUdevice_attribute,
};
use nanovllm_cuda::{DEPENDENT_LAUNCH_CUH, DependentLaunch, Gpu, GpuError, KernelSource};
use nanovllm_kv_quant::KV_QUANT_CUH;

use nanovllm_kv_quant::CacheDtype;

use crate::CacheLayout;

mod split;
use split::{DecodeBuild, PARTITIONS};
pub use split::{DecodeSplit, SplitPlanner};

const STORE_CU: &str = include_str!("store.cu");
const MMA_CUH: &str = include_str!("mma.cuh");
const LAYOUT_CUH: &str = include_str!("layout.cuh");
const DECODE_CU: &str = include_str!("decode_attention.cu");
const PREFILL_CU: &str = include_str!("prefill_attention.cu");
/// (query, head) rows of one thread block of prefill attention.
const PREFILL_ROWS: usize = 64;

/// Threads of one reduce block (`MAX_REDUCE_THREADS` in decode_attention.cu).
const REDUCE_THREADS: usize = 512;
/// The reduce kernel's block for `rows` (query, head) rows of `splits` splits: (dims, groups).
/// Fewer rows than SMs split each row's dims over blocks of 32, so that one long context's loads
/// are spread over more SMs (docs/perf-history.md, version 20); a group of threads per 8 splits,
/// so that a few splits do not leave most threads idle and many are summed at once.
fn reduce_shape(head_dim: usize, splits: usize, rows: usize, sms: usize) -> (usize, usize) {
    let dims = if rows < sms { head_dim.min(32) } else { head_dim };
    (dims, splits.div_ceil(8).clamp(1, REDUCE_THREADS / dims))
}
const THREADS: u32 = 128;
/// Values of a row each lane of the store kernel takes (as `ELEMS` in store.cu), in 16-byte loads:
/// a quantized row's per-row work (its maximum, scale and index) is spread over 32 values
/// (measured faster than 16 for INT8: docs/perf-history.md, version 17), a bf16 row is one load.
/// INT4 takes 32 values a lane whatever the head size: one group each.
fn store_values_per_lane(dtype: CacheDtype, head_dim: usize) -> usize {
    if is_quantized(dtype) { head_dim.min(32) } else { 8 }
}

/// Keys per shared-memory tile of prefill attention (`KT` in prefill_attention.cu): 64 for codes,
/// whose narrower loads leave registers for a wider tile (faster on an H100 at 30,000 positions:
/// docs/PERF.md), 32 for bf16, which spills at 64, and for heads wider than 128, whose 64-key K and V
/// tiles would not fit a block's 48 KB of static shared memory. `NANOVLLM_PREFILL_KEYS` (32 or 64)
/// overrides it where the tiles fit, for tuning.
fn prefill_tile_keys(dtype: CacheDtype, head_dim: usize) -> usize {
    if head_dim > 128 {
        return 32;
    }
    let tuned = std::env::var("NANOVLLM_PREFILL_KEYS").ok().and_then(|v| v.parse().ok());
    tuned.filter(|keys| [32, 64].contains(keys)).unwrap_or(if is_quantized(dtype) { 64 } else { 32 })
}

/// Codes narrower than bf16 (INT8, FP8, INT4), which the kernels widen to fp16.
fn is_quantized(dtype: CacheDtype) -> bool {
    dtype.row_layout().code_bits < 16
}

/// Passes of the store kernel per warp, each over 32 / (head_dim / values per lane) rows (token, kv
/// head, K or V), their loads all in flight (the git history of docs/PERF.md has the measurements).
/// `NANOVLLM_STORE_ROWS` overrides it, for tuning.
fn store_passes(dtype: CacheDtype) -> u32 {
    let tuned = std::env::var("NANOVLLM_STORE_ROWS").ok().and_then(|v| v.parse().ok());
    tuned.filter(|&rows| (1..=8).contains(&rows)).unwrap_or(if is_quantized(dtype) { 1 } else { 2 })
}

/// Warps per thread block of decode attention, for three kinds of launch: a block's warps take its
/// split's tiles in turn, side by side in memory, and combine through shared memory at its end.
#[derive(Debug)]
struct DecodeWarps {
    /// Most launches: four warps.
    usual: usize,
    /// Every block a whole context of at most 1,024 keys (16 tiles per warp), and enough
    /// of them to fill the GPU anyway: two warps per block halve how often blocks start and end
    /// (0.6B 256 x 1024 INT8 3% faster; one warp per block reads too narrowly and is up to 2.4x
    /// slower: docs/perf-history.md, version 25).
    short: usize,
    /// Fewer (group, kv head) pairs than SMs, so a few long contexts are split to fill the GPU:
    /// eight warps per block halve the splits to combine (1 x 32768 3% faster; the batched shapes
    /// 2-11% slower: docs/perf-history.md, version 27). Four for head_dim 256, whose eight warps' outputs
    /// would not fit a block's 48 KB of static shared memory.
    long: usize,
}

impl DecodeWarps {
    /// `NANOVLLM_DECODE_WARPS` (1, 2, 4 or 8) sets all three, for tuning.
    fn new(head_dim: usize) -> Self {
        let tuned = std::env::var("NANOVLLM_DECODE_WARPS").ok().and_then(|v| v.parse().ok());
        match tuned.filter(|w| [1, 2, 4, 8].contains(w)) {
            Some(w) => DecodeWarps { usual: w, short: w, long: w },
            None => DecodeWarps { usual: 4, short: 2, long: if head_dim <= 128 { 8 } else { 4 } },
        }
    }
}

/// Thread blocks per SM, of `warps` warps each, that the register allocation of decode attention
/// must allow: more warps keep more loads in flight, fewer registers may spill. Measured side by side
/// (docs/perf-history.md): 16 warps per SM for both dtypes since kernels version 17 (bf16 ran best at 12
/// before it); 20 spilled then. `NANOVLLM_DECODE_WARPS_PER_SM` sets the warps per SM of every
/// build, for tuning.
fn decode_min_blocks(warps: usize) -> usize {
    let tuned = std::env::var("NANOVLLM_DECODE_WARPS_PER_SM").ok().and_then(|v| v.parse::<usize>().ok());
    (tuned.unwrap_or(16) / warps).max(1)
}

/// One build of decode attention: its block size and how many of its blocks the GPU runs at once.
#[derive(Debug)]
struct DecodeKernel {
    module: Arc<CudaModule>,
    partial: CudaFunction,
    threads: u32,
    /// SMs x the blocks each really holds (registers, shared memory), from the occupancy API.
    block_slots: usize,
}

impl DecodeKernel {
    /// The source of the build with `warps` warps per block, for `shape` (the attention defines).
    fn source(shape: &[(&'static str, String)], warps: usize) -> KernelSource {
        let threads = 32 * warps;
        let bounds = [("THREADS", threads.to_string()), ("MIN_BLOCKS", decode_min_blocks(warps).to_string())];
        KernelSource {
            name: "decode_attention",
            source: format!("{DEPENDENT_LAUNCH_CUH}\n{KV_QUANT_CUH}\n{LAYOUT_CUH}\n{MMA_CUH}\n{DECODE_CU}"),
            defines: [shape, &bounds[..]].concat(),
        }
    }

    fn new(gpu: &Gpu, source: &KernelSource, warps: usize, sms: usize) -> Result<Self, GpuError> {
        let threads = 32 * warps as u32;
        let module = gpu.load(source)?;
        let partial = module.load_function("decode_attention_partial")?;
        let resident = partial.occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)?;
        Ok(DecodeKernel { module, partial, threads, block_slots: sms * resident.max(1) as usize })
    }
}

/// The row of a GPU cache plane (rows of `head_dim` elements) that holds `kv_head` of `slot`, as
/// `cache_row` in layout.cuh: `[block][kv_head][block_size]`, so that one head's tokens of a block
/// are contiguous and the attention kernels read each 16-token tile as one run of memory.
pub fn cache_row(layout: &CacheLayout, slot: usize, kv_head: usize) -> usize {
    (slot / layout.block_size * layout.kv_heads + kv_head) * layout.block_size + slot % layout.block_size
}

/// Where byte `byte` of an INT4 row as the CPU cache packs it (groups of 32 codes one after
/// another, two codes a byte) lies in the GPU cache's row of `head_dim` codes, as
/// `int4_row_offset` in layout.cuh: the GPU interleaves the groups, so that each lane of decode
/// attention reads an equal share of every group and the tensor cores take codes of one group at a
/// time.
pub fn int4_row_offset(head_dim: usize, byte: usize) -> usize {
    let (group, byte) = (byte / 16, byte % 16);
    4 * ((byte / 2) * (head_dim / 64) + group / 2) + group % 2 + 2 * (byte % 2)
}

/// A row as the CPU cache stores it (`dtype`'s codes of `head_dim` values), into `gpu_row` as the
/// GPU cache places its bytes: the same bytes, INT4's interleaved by [`int4_row_offset`].
pub fn to_gpu_row(dtype: CacheDtype, head_dim: usize, cpu_row: &[u8], gpu_row: &mut [u8]) {
    if dtype == CacheDtype::Int4 {
        for (byte, &code_pair) in cpu_row.iter().enumerate() {
            gpu_row[int4_row_offset(head_dim, byte)] = code_pair;
        }
    } else {
        gpu_row.copy_from_slice(cpu_row);
    }
}

/// One layer's K or V plane, and its scales for INT8, FP8 and INT4.
#[derive(Debug)]
pub struct GpuPlane {
    /// Rows of `head_dim` elements (INT8 or FP8 codes, INT4 codes two a byte with their groups
    /// interleaved by [`int4_row_offset`], or bf16 bits), as bytes, placed by [`cache_row`].
    pub data: CudaSlice<u8>,
    /// `[kv_heads][slots][groups]` bf16 scales (groups: 1, or `head_dim / 32` for INT4; one dummy
    /// element for bf16 caches): head-major, so that the scales of a tile of tokens are contiguous.
    pub scales: CudaSlice<bf16>,
}

/// The KV cache in GPU memory: the blocks and slots of [`KvCache`](crate::KvCache), each block's
/// rows ordered by kv head ([`cache_row`]).
#[derive(Debug)]
pub struct GpuKvCache {
    /// bf16, INT8, FP8 (`fp8_per_token_head` or per-tensor `fp8`) or INT4.
    pub dtype: CacheDtype,
    /// The shape.
    pub layout: CacheLayout,
    /// K planes, one per layer.
    pub keys: Vec<GpuPlane>,
    /// V planes, one per layer.
    pub values: Vec<GpuPlane>,
}

impl GpuKvCache {
    /// A zeroed cache (bf16, INT8, FP8 and INT4 only: the GPU kernels read those).
    pub fn new(gpu: &Gpu, layout: CacheLayout, dtype: CacheDtype) -> Result<Self, GpuError> {
        check_gpu_dtype(dtype)?;
        let rows = layout.num_slots() * layout.kv_heads;
        let plane = || -> Result<GpuPlane, GpuError> {
            // One dummy element where a row has no scales: the driver allocates nothing of size 0.
            let scales = (rows * dtype.row_layout().groups(layout.head_dim)).max(1);
            Ok(GpuPlane {
                data: gpu.stream.alloc_zeros::<u8>(rows * dtype.code_bytes(layout.head_dim))?,
                scales: gpu.stream.alloc_zeros::<bf16>(scales)?,
            })
        };
        let keys = (0..layout.num_layers).map(|_| plane()).collect::<Result<_, _>>()?;
        let values = (0..layout.num_layers).map(|_| plane()).collect::<Result<_, _>>()?;
        Ok(GpuKvCache { dtype, layout, keys, values })
    }

    /// Queue the copy of block `from`'s K and V (and their scales) into block `to`, in every layer:
    /// the partly filled last block of a forked sequence. A block's rows are contiguous
    /// ([`cache_row`]); its scales are one run of `block_size` rows per kv head.
    pub fn copy_block(&mut self, gpu: &Gpu, from: usize, to: usize) -> Result<(), GpuError> {
        let layout = self.layout;
        if from.max(to) >= layout.num_blocks || from == to {
            return Err(GpuError::Unsupported(format!(
                "a copy of block {from} to block {to} in a cache of {} blocks",
                layout.num_blocks
            )));
        }
        let block_bytes = layout.block_size * layout.kv_heads * self.dtype.code_bytes(layout.head_dim);
        let groups = self.dtype.row_layout().groups(layout.head_dim);
        let slots = layout.num_slots();
        let runs: Vec<(usize, usize, usize)> = (0..layout.kv_heads * usize::from(groups > 0))
            .map(|h| {
                (
                    (h * slots + from * layout.block_size) * groups,
                    (h * slots + to * layout.block_size) * groups,
                    layout.block_size * groups,
                )
            })
            .collect();
        for plane in self.keys.iter_mut().chain(self.values.iter_mut()) {
            copy_within(gpu, &mut plane.data, from * block_bytes, to * block_bytes, block_bytes)?;
            for &(src, dst, len) in &runs {
                copy_within(gpu, &mut plane.scales, src, dst, len)?;
            }
        }
        Ok(())
    }
}

/// The cache dtypes the GPU kernels read; the others (f16, f32) are CPU only.
fn check_gpu_dtype(dtype: CacheDtype) -> Result<(), GpuError> {
    use CacheDtype::{Bf16, Fp8, Fp8PerTokenHead, Int4, Int8};
    if matches!(dtype, Bf16 | Int8 | Fp8PerTokenHead | Fp8 | Int4) {
        return Ok(());
    }
    Err(GpuError::Unsupported(format!(
        "a {dtype} KV cache (the GPU kernels read bf16, int8, fp8_per_token_head, fp8 and int4; {dtype} runs on the CPU)"
    )))
}

/// The E4M3 dtypes, whose conversions need compute capability 8.9.
fn is_fp8(dtype: CacheDtype) -> bool {
    matches!(dtype, CacheDtype::Fp8PerTokenHead | CacheDtype::Fp8)
}

/// Queue the copy of `len` elements of `buffer` from `src` to `dst`, ranges that do not overlap.
fn copy_within<T: DeviceRepr>(
    gpu: &Gpu,
    buffer: &mut CudaSlice<T>,
    src: usize,
    dst: usize,
    len: usize,
) -> Result<(), GpuError> {
    let (low, high) = (src.min(dst), src.max(dst));
    let (mut head, mut tail) = buffer.split_at_mut(high);
    if src < dst {
        gpu.stream.memcpy_dtod(&head.slice(low..low + len), &mut tail.slice_mut(..len))?;
    } else {
        gpu.stream.memcpy_dtod(&tail.slice(..len), &mut head.slice_mut(low..low + len))?;
    }
    Ok(())
}

/// The queries of one attention call, on the device.
#[derive(Debug)]
pub struct AttentionQueries<'a> {
    /// `[sequences][max_blocks]` i32: each sequence's block table.
    pub block_tables: CudaView<'a, i32>,
    /// `[2]` i32: the width of `block_tables` (`max_blocks`), then decode attention's split
    /// length ([`DecodeSplit::geometry`]). On the device, so that a captured graph reads each
    /// replay's own.
    pub geometry: CudaView<'a, i32>,
    /// `[num_queries]` i32: each query's causal context length (its position + 1; 0 for a
    /// padding query, which reads nothing and gets zeros).
    pub context_lens: CudaView<'a, i32>,
    /// `[num_groups + 1]` i32: each group's first query, then the end of the last group (at most
    /// `num_queries`). A group is up to [`CacheKernels::queries_per_group`] consecutive queries of
    /// one sequence.
    pub groups: CudaView<'a, i32>,
    /// `[num_groups]` i32: the row of `block_tables` (the sequence) each group reads.
    pub group_tables: CudaView<'a, i32>,
    /// Queries.
    pub num_queries: usize,
    /// Groups.
    pub num_groups: usize,
}

impl<'a> AttentionQueries<'a> {
    /// The first `n` groups, which the caller promises are single queries of their own (queries
    /// `0..n`: a mixed step's decode rows, for [`CacheKernels::attention`]), and the groups after
    /// them (the step's prompt chunks, for [`CacheKernels::prefill_attention`]). The second part
    /// keeps the step's query count: its groups name queries by their place in the whole step.
    pub fn split_single_queries(
        &self,
        n: usize,
    ) -> Result<(AttentionQueries<'a>, AttentionQueries<'a>), GpuError> {
        let n = n.min(self.num_groups);
        let too_short = || {
            GpuError::Unsupported(format!(
                "groups and group_tables hold fewer than {} groups",
                self.num_groups
            ))
        };
        let singles = self.with_groups(
            self.groups.try_slice(..=n).ok_or_else(too_short)?,
            self.group_tables.try_slice(..n).ok_or_else(too_short)?,
            n,
            n,
        );
        let rest = self.with_groups(
            self.groups.try_slice(n..).ok_or_else(too_short)?,
            self.group_tables.try_slice(n..).ok_or_else(too_short)?,
            self.num_queries,
            self.num_groups - n,
        );
        Ok((singles, rest))
    }

    /// These tables and contexts with other groups.
    fn with_groups(
        &self,
        groups: CudaView<'a, i32>,
        group_tables: CudaView<'a, i32>,
        num_queries: usize,
        num_groups: usize,
    ) -> AttentionQueries<'a> {
        AttentionQueries {
            block_tables: self.block_tables.slice(..),
            geometry: self.geometry.slice(..),
            context_lens: self.context_lens.slice(..),
            groups,
            group_tables,
            num_queries,
            num_groups,
        }
    }
}

/// Scratch of attention's splits, sized for a batch of queries and a longest context.
#[derive(Debug)]
pub struct DecodeWorkspace {
    partial_out: CudaSlice<f32>,
    partial_max: CudaSlice<f32>,
    partial_sum: CudaSlice<f32>,
    /// (query, head, split) results it holds.
    capacity: usize,
}

impl DecodeWorkspace {
    /// Room for `max_queries` queries of `heads` query heads with one split each, for
    /// `split_queries` of them with contexts up to `max_context` cut at the longest partition,
    /// and for one query cut at the shortest. A launch that does not fit takes one split per
    /// query (a whole context per thread block), which a batch that large fills the GPU with.
    pub fn new(
        gpu: &Gpu,
        max_queries: usize,
        split_queries: usize,
        heads: usize,
        head_dim: usize,
        max_context: usize,
    ) -> Result<Self, GpuError> {
        let longest = split_queries * max_context.div_ceil(PARTITIONS[0]);
        let shortest = max_context.div_ceil(PARTITIONS[PARTITIONS.len() - 1]);
        let capacity = heads * max_queries.max(longest).max(shortest).max(1);
        Ok(DecodeWorkspace {
            partial_out: gpu.stream.alloc_zeros(capacity * head_dim)?,
            partial_max: gpu.stream.alloc_zeros(capacity)?,
            partial_sum: gpu.stream.alloc_zeros(capacity)?,
            capacity,
        })
    }
}

/// The scalars both attention kernels take among their first arguments, alive for a launch.
struct AttentionScalars {
    q_stride: i64,
    num_slots: i64,
}

impl AttentionScalars {
    fn new(cache: &GpuKvCache, q_stride: usize) -> Self {
        AttentionScalars { q_stride: q_stride as i64, num_slots: cache.layout.num_slots() as i64 }
    }

    /// Push the arguments both attention kernels begin with, in their order: q, the layer's K/V
    /// planes and scales, and the queries.
    fn push<'a>(
        &'a self,
        launch: &mut LaunchArgs<'a>,
        q: &'a CudaView<'_, bf16>,
        keys: &'a GpuPlane,
        values: &'a GpuPlane,
        queries: &'a AttentionQueries<'_>,
    ) {
        launch
            .arg(q)
            .arg(&self.q_stride)
            .arg(&keys.data)
            .arg(&values.data)
            .arg(&keys.scales)
            .arg(&values.scales)
            .arg(&self.num_slots)
            .arg(&queries.block_tables)
            .arg(&queries.geometry)
            .arg(&queries.context_lens)
            .arg(&queries.groups)
            .arg(&queries.group_tables);
    }
}

/// The compiled store and attention kernels for one cache shape.
#[derive(Debug)]
pub struct CacheKernels {
    /// Decode attention for most launches.
    decode: DecodeKernel,
    /// Decode attention for many short whole contexts ([`DecodeWarps::short`]).
    decode_short: DecodeKernel,
    /// Decode attention for a few long contexts split over the GPU ([`DecodeWarps::long`]).
    decode_long: DecodeKernel,
    /// Streaming multiprocessors: the reduce kernel spreads a few rows over them.
    sms: usize,
    prefill: CudaFunction,
    store: CudaFunction,
    reduce: CudaFunction,
    head_dim: usize,
    group: usize,
    store_rows: u32,
}

/// The kernel sources of one cache shape: what [`CacheKernels::new`] compiles.
#[derive(Debug, Clone)]
pub struct CacheKernelSources {
    store: KernelSource,
    /// Decode attention with [`DecodeWarps::usual`], `short` and `long` warps per block.
    decode: [KernelSource; 3],
    prefill: KernelSource,
    warps: [usize; 3],
}

impl CacheKernelSources {
    /// The sources for `dtype`, with the head size, the query heads per kv head and the block size
    /// as compile-time constants; an error for a shape or dtype the kernels do not take.
    pub fn new(
        dtype: CacheDtype,
        head_dim: usize,
        group: usize,
        block_size: usize,
    ) -> Result<Self, GpuError> {
        if ![32, 64, 128, 256].contains(&head_dim) {
            return Err(GpuError::Unsupported(format!("head_dim {head_dim} (32, 64, 128 or 256)")));
        }
        if !(1..=8).contains(&group) {
            return Err(GpuError::Unsupported(format!("{group} query heads per kv head (1 to 8)")));
        }
        if block_size == 0 || !block_size.is_multiple_of(16) {
            return Err(GpuError::Unsupported(format!(
                "block size {block_size} (decode attention reads tiles of 16 tokens: use a multiple of 16)"
            )));
        }
        check_gpu_dtype(dtype)?;
        let int4 = dtype == CacheDtype::Int4;
        if int4 && head_dim < 64 {
            return Err(GpuError::Unsupported(format!(
                "an int4 cache at head_dim {head_dim} (the GPU kernels read int4 rows of 64 values and up)"
            )));
        }
        let codes = [
            ("QUANT", u8::from(is_quantized(dtype)).to_string()),
            ("SCALED", u8::from(dtype.has_scales()).to_string()),
            ("FP8", u8::from(is_fp8(dtype)).to_string()),
            ("INT4", u8::from(int4).to_string()),
        ];
        let store = KernelSource {
            name: "store_kv",
            source: format!("{KV_QUANT_CUH}\n{LAYOUT_CUH}\n{STORE_CU}"),
            defines: [
                &[("HEAD_DIM", head_dim.to_string())],
                &codes[..],
                &[
                    ("ROWS", store_passes(dtype).to_string()),
                    ("BLOCK_SIZE", block_size.to_string()),
                    ("ELEMS", store_values_per_lane(dtype, head_dim).to_string()),
                    ("THREADS", THREADS.to_string()),
                ],
            ]
            .concat(),
        };
        // The shape both attention kernels are compiled for; decode adds its launch bounds.
        let shape = [
            &[("HEAD_DIM", head_dim.to_string()), ("GROUP", group.to_string())],
            &codes[..],
            &[("BLOCK_SIZE", block_size.to_string())],
        ]
        .concat();
        let warps = DecodeWarps::new(head_dim);
        let warps = [warps.usual, warps.short, warps.long];
        Ok(CacheKernelSources {
            store,
            decode: warps.map(|w| DecodeKernel::source(&shape, w)),
            prefill: KernelSource {
                name: "prefill_attention",
                source: format!("{KV_QUANT_CUH}\n{LAYOUT_CUH}\n{MMA_CUH}\n{PREFILL_CU}"),
                defines: [&shape[..], &[("KT", prefill_tile_keys(dtype, head_dim).to_string())]].concat(),
            },
            warps,
        })
    }

    /// Every module, as [`CacheKernels::new`] compiles them.
    pub fn all(&self) -> impl Iterator<Item = &KernelSource> {
        [&self.store, &self.prefill].into_iter().chain(&self.decode)
    }
}

impl CacheKernels {
    /// Compile (or fetch) the kernels for `dtype`, with the head size, the query heads per kv head
    /// and the block size as compile-time constants.
    pub fn new(
        gpu: &Gpu,
        dtype: CacheDtype,
        head_dim: usize,
        group: usize,
        block_size: usize,
    ) -> Result<Self, GpuError> {
        let sources = CacheKernelSources::new(dtype, head_dim, group, block_size)?;
        if gpu.modules.arch_number() < 80 {
            return Err(GpuError::Unsupported(format!(
                "{}: decode attention uses the m16n8k16 tensor-core MMA of compute capability 8.0 and later",
                gpu.describe()
            )));
        }
        if is_fp8(dtype) && gpu.modules.arch_number() < 89 {
            return Err(GpuError::Unsupported(format!(
                "{}: an {dtype} cache uses the E4M3 conversions of compute capability 8.9 and later (use int8)",
                gpu.describe()
            )));
        }
        let sms =
            gpu.ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as usize;
        let [usual, short, long] = &sources.decode;
        let [usual_warps, short_warps, long_warps] = sources.warps;
        let decode = DecodeKernel::new(gpu, usual, usual_warps, sms)?;
        let decode_short = DecodeKernel::new(gpu, short, short_warps, sms)?;
        let decode_long = DecodeKernel::new(gpu, long, long_warps, sms)?;
        Ok(CacheKernels {
            reduce: decode.module.load_function("decode_attention_reduce")?,
            decode,
            decode_short,
            decode_long,
            sms,
            prefill: gpu.load(&sources.prefill)?.load_function("prefill_attention")?,
            store: gpu.load(&sources.store)?.load_function("store_kv")?,
            head_dim,
            group,
            store_rows: store_passes(dtype)
                * (32 / (head_dim / store_values_per_lane(dtype, head_dim))) as u32,
        })
    }

    /// Write `num_tokens` tokens' K and V (bf16, `[token][kv_head][head_dim]` with `src_stride`
    /// elements between tokens) into `layer` at `slots` (negative: skipped). The sizes of the
    /// views and the layer are checked; the slots, on the device, are not.
    ///
    /// # Safety
    ///
    /// Each of the first `num_tokens` entries of `slots` is negative or a slot of this cache
    /// (below `cache.layout.num_slots()`): the kernel writes there unchecked.
    #[allow(clippy::too_many_arguments, unsafe_code)]
    pub unsafe fn store(
        &self,
        gpu: &Gpu,
        cache: &mut GpuKvCache,
        layer: usize,
        key: &CudaView<'_, bf16>,
        value: &CudaView<'_, bf16>,
        src_stride: usize,
        slots: &CudaView<'_, i64>,
        num_tokens: usize,
    ) -> Result<(), GpuError> {
        let row = cache.layout.kv_heads * self.head_dim;
        let source = num_tokens.saturating_sub(1) * src_stride + row;
        check_layer(cache, layer)?;
        check_len("K", key.len(), source, num_tokens)?;
        check_len("V", value.len(), source, num_tokens)?;
        check_len("slots", slots.len(), num_tokens, num_tokens)?;
        let kv_heads = cache.layout.kv_heads as i32;
        let rows = (num_tokens * cache.layout.kv_heads * 2) as u32;
        let warps_per_block = THREADS / 32;
        let config = LaunchConfig {
            grid_dim: (rows.div_ceil(warps_per_block * self.store_rows), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (keys, values) = (&mut cache.keys[layer], &mut cache.values[layer]);
        let (stride, tokens) = (src_stride as i64, num_tokens as i32);
        let num_slots = cache.layout.num_slots() as i64;
        let mut launch = gpu.stream.launch_builder(&self.store);
        launch
            .arg(key)
            .arg(value)
            .arg(&stride)
            .arg(slots)
            .arg(&mut keys.data)
            .arg(&mut values.data)
            .arg(&mut keys.scales)
            .arg(&mut values.scales)
            .arg(&num_slots)
            .arg(&tokens)
            .arg(&kv_heads);
        // SAFETY: the arguments match store_kv's signature; every row index the kernel forms is
        // below num_tokens * kv_heads of the inputs (checked above), and every slot is a slot of
        // this cache or negative (the caller's contract).
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(config)?;
        }
        Ok(())
    }

    /// For benchmarks' reports, each decode attention build (usual, short contexts, long contexts):
    /// its warps per block, registers per thread, local (spilled) bytes per thread and resident
    /// blocks per SM.
    pub fn decode_resources(&self) -> Result<[(u32, i32, i32, usize); 3], GpuError> {
        let describe = |kernel: &DecodeKernel| -> Result<_, GpuError> {
            let partial = &kernel.partial;
            Ok((
                kernel.threads / 32,
                partial.num_regs()?,
                partial.local_size_bytes()?,
                kernel.block_slots / self.sms,
            ))
        };
        Ok([describe(&self.decode)?, describe(&self.decode_short)?, describe(&self.decode_long)?])
    }

    /// Query tokens per group of [`AttentionQueries::groups`]: the MMA has 8 useful rows, one per
    /// (query token, query head) of a kv head.
    pub fn queries_per_group(&self) -> usize {
        (8 / self.group).max(1)
    }

    /// Query tokens per group of [`CacheKernels::prefill_attention`]: a thread block takes 64
    /// (query token, query head) rows of a kv head.
    pub fn prefill_queries_per_group(&self) -> usize {
        PREFILL_ROWS / self.group
    }

    /// Causal attention of prefill chunks, flash-attention style: each group (up to
    /// [`CacheKernels::prefill_queries_per_group`] consecutive positions of one sequence) streams
    /// its sequence's K/V through shared memory once for all its queries and heads. Same inputs
    /// and output as [`CacheKernels::attention`], without a workspace: a group's whole context is
    /// one thread block's.
    ///
    /// # Safety
    ///
    /// As for [`CacheKernels::attention`].
    #[allow(clippy::too_many_arguments, unsafe_code)]
    pub unsafe fn prefill_attention(
        &self,
        gpu: &Gpu,
        cache: &GpuKvCache,
        layer: usize,
        q: &CudaView<'_, bf16>,
        q_stride: usize,
        queries: &AttentionQueries<'_>,
        out: &mut CudaSlice<bf16>,
    ) -> Result<(), GpuError> {
        self.check_attention(cache, layer, q, q_stride, queries, out)?;
        let kv_heads = cache.layout.kv_heads;
        let softmax_scale = 1.0f32 / (self.head_dim as f32).sqrt();
        let (keys, values) = (&cache.keys[layer], &cache.values[layer]);
        let config = LaunchConfig {
            grid_dim: (queries.num_groups as u32, kv_heads as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let scalars = AttentionScalars::new(cache, q_stride);
        let kv_heads = kv_heads as i32;
        let mut launch = gpu.stream.launch_builder(&self.prefill);
        scalars.push(&mut launch, q, keys, values, queries);
        launch.arg(out).arg(&kv_heads).arg(&softmax_scale);
        // SAFETY: the arguments match prefill_attention's signature and the buffers' sizes were
        // checked; the tables, contexts and groups on the device are as the caller's contract says.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(config)?;
        }
        Ok(())
    }

    /// The splits of decode launches over `cache` with `workspace`: this GPU's SMs and the block
    /// slots of each build (from the occupancy API).
    pub fn split_planner(&self, cache: &GpuKvCache, workspace: &DecodeWorkspace) -> SplitPlanner {
        let slots = [&self.decode, &self.decode_short, &self.decode_long].map(|k| k.block_slots);
        SplitPlanner::new(self.sms, slots, cache.layout.kv_heads, self.group, workspace.capacity)
    }

    /// The compiled kernel of `build`.
    fn kernel(&self, build: DecodeBuild) -> &DecodeKernel {
        match build {
            DecodeBuild::Usual => &self.decode,
            DecodeBuild::Short => &self.decode_short,
            DecodeBuild::Long => &self.decode_long,
        }
    }

    /// Paged attention of single-token queries (`q`: `[queries][heads][head_dim]` bf16, with
    /// `q_stride` elements between queries) over `layer`, each with its own causal context; writes
    /// `out` (`[queries][heads][head_dim]` bf16). Serves decode (groups of one query) and prefill
    /// (groups of consecutive positions of one sequence, which share each K/V row they read),
    /// `split` as [`SplitPlanner::eager`] or [`SplitPlanner::replay`] gave it.
    /// The sizes of the views and the layer are checked; what the device buffers hold is not.
    ///
    /// # Safety
    ///
    /// What `queries` holds on the device is the kernels' to trust: `geometry` is
    /// `split.geometry(max_blocks)` for the width `max_blocks` of `block_tables`; every block id in
    /// `block_tables` is a block of this cache; each query's context length is at most
    /// `max_blocks * block_size` and `split.splits * split.partition`; `groups` ascends to at most
    /// `num_queries`, a group holding at most [`CacheKernels::queries_per_group`] queries
    /// ([`CacheKernels::prefill_queries_per_group`] for prefill) of one sequence; and each entry of
    /// `group_tables` is a row of `block_tables`.
    #[allow(clippy::too_many_arguments, unsafe_code)]
    pub unsafe fn attention(
        &self,
        gpu: &Gpu,
        cache: &GpuKvCache,
        layer: usize,
        q: &CudaView<'_, bf16>,
        q_stride: usize,
        queries: &AttentionQueries<'_>,
        split: DecodeSplit,
        workspace: &mut DecodeWorkspace,
        out: &mut CudaSlice<bf16>,
    ) -> Result<(), GpuError> {
        self.check_attention(cache, layer, q, q_stride, queries, out)?;
        let batch = queries.num_queries;
        let kv_heads = cache.layout.kv_heads;
        let heads = (kv_heads * self.group) as i32;
        let softmax_scale = 1.0f32 / (self.head_dim as f32).sqrt();
        let splits = split.splits;
        if batch * heads as usize * splits > workspace.capacity {
            return Err(GpuError::Unsupported(format!(
                "an attention workspace for {} results, asked for {batch} queries of {heads} heads and {splits} splits",
                workspace.capacity
            )));
        }
        let kernel = self.kernel(split.build);
        let (kv_heads_arg, max_splits) = (kv_heads as i32, splits as i32);
        let (keys, values) = (&cache.keys[layer], &cache.values[layer]);
        let config = LaunchConfig {
            grid_dim: (splits as u32, kv_heads as u32, queries.num_groups as u32),
            block_dim: (kernel.threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let scalars = AttentionScalars::new(cache, q_stride);
        let mut launch = gpu.stream.launch_builder(&kernel.partial);
        scalars.push(&mut launch, q, keys, values, queries);
        launch
            .arg(&mut *out)
            .arg(&mut workspace.partial_out)
            .arg(&mut workspace.partial_max)
            .arg(&mut workspace.partial_sum)
            .arg(&kv_heads_arg)
            .arg(&max_splits)
            .arg(&softmax_scale);
        // SAFETY: the arguments match decode_attention_partial's signature and the buffers' sizes
        // were checked (the workspace holds every split's results); the tables, contexts and
        // groups on the device are as the caller's contract says.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(config)?;
        }
        if splits == 1 {
            return Ok(()); // one split per context: the partial kernel wrote the output
        }
        let (dims, groups) = reduce_shape(self.head_dim, splits, batch * heads as usize, self.sms);
        let config = LaunchConfig {
            grid_dim: (heads as u32, batch as u32, (self.head_dim / dims) as u32),
            block_dim: (dims as u32, groups as u32, 1),
            shared_mem_bytes: 8 * splits as u32, // each split's weight and sum
        };
        // A dependent launch: its blocks start as the partial kernel's last ones exit.
        let mut launch = DependentLaunch::new(gpu, &self.reduce);
        launch
            .buffer(&workspace.partial_out)
            .buffer(&workspace.partial_max)
            .buffer(&workspace.partial_sum)
            .buffer(&queries.context_lens)
            .buffer(&queries.geometry)
            .buffer_mut(out)
            .scalar(heads)
            .scalar(max_splits);
        // SAFETY: the arguments match decode_attention_reduce's signature; it reads only the splits
        // the partial kernel wrote, after waiting for them, and writes only `out`, which that
        // kernel does not read.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(config)?;
        }
        Ok(())
    }
}

impl CacheKernels {
    /// The host-side checks of an attention launch: the layer exists, and `q`, `out` and the
    /// query arrays hold what the launch reads and writes.
    fn check_attention(
        &self,
        cache: &GpuKvCache,
        layer: usize,
        q: &CudaView<'_, bf16>,
        q_stride: usize,
        queries: &AttentionQueries<'_>,
        out: &CudaSlice<bf16>,
    ) -> Result<(), GpuError> {
        let n = queries.num_queries;
        let row = cache.layout.kv_heads * self.group * self.head_dim;
        check_layer(cache, layer)?;
        check_len("q", q.len(), n.saturating_sub(1) * q_stride + row, n)?;
        check_len("out", out.len(), n * row, n)?;
        check_len("context_lens", queries.context_lens.len(), n, n)?;
        check_len("groups", queries.groups.len(), queries.num_groups + 1, n)?;
        check_len("group_tables", queries.group_tables.len(), queries.num_groups, n)?;
        check_len("block_tables", queries.block_tables.len(), 1, n)?;
        check_len("geometry", queries.geometry.len(), 2, n)
    }
}

fn check_layer(cache: &GpuKvCache, layer: usize) -> Result<(), GpuError> {
    if layer < cache.keys.len() && layer < cache.values.len() {
        return Ok(());
    }
    Err(GpuError::Unsupported(format!("layer {layer} of a cache of {} layers", cache.keys.len())))
}

/// That `what` holds at least `needed` elements for a launch over `tokens` tokens.
fn check_len(what: &str, len: usize, needed: usize, tokens: usize) -> Result<(), GpuError> {
    if len >= needed {
        return Ok(());
    }
    Err(GpuError::Unsupported(format!("{what} holds {len} elements; {tokens} tokens need {needed}")))
}

#[cfg(test)]
mod tests {
    use super::int4_row_offset;

    /// The interleaved INT4 row is a permutation of the CPU's bytes in which every span a decode
    /// lane reads holds an equal share of every group: a key lane's `head_dim / 8` bytes (in
    /// 16-byte units at row offsets (4 i + q) 16) 4 of each group, a value lane's `head_dim / 16`
    /// contiguous bytes 2 of each.
    #[test]
    fn int4_rows_interleave_every_group_into_every_lane() {
        for head_dim in [64, 128, 256] {
            let (row_bytes, groups) = (head_dim / 2, head_dim / 32);
            let mut group_at = vec![usize::MAX; row_bytes];
            for byte in 0..row_bytes {
                let at = int4_row_offset(head_dim, byte);
                assert_eq!(group_at[at], usize::MAX, "head_dim {head_dim}: two bytes at {at}");
                group_at[at] = byte / 16;
            }
            let shares = |offsets: &[usize]| {
                let mut count = vec![0; groups];
                offsets.iter().for_each(|&at| count[group_at[at]] += 1);
                count
            };
            let key_unit = (head_dim / 8).min(16);
            for lane in 0..4 {
                let offsets: Vec<usize> = (0..head_dim / 8)
                    .map(|b| ((b / key_unit) * 4 + lane) * key_unit + b % key_unit)
                    .collect();
                assert_eq!(shares(&offsets), vec![4; groups], "head_dim {head_dim}: key lane {lane}");
            }
            let value_bytes = head_dim / 16;
            for lane in 0..8 {
                let offsets: Vec<usize> = (lane * value_bytes..(lane + 1) * value_bytes).collect();
                assert_eq!(shares(&offsets), vec![2; groups], "head_dim {head_dim}: value lane {lane}");
            }
        }
    }
}

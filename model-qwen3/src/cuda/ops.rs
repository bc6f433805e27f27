//! The operations of the forward pass on the GPU: cuBLAS GEMMs and this crate's kernels
//! (`model.cu`). Each call only queues work on the stream, so that a step can be captured in a
//! CUDA graph.

use std::ops::Range;

use half::bf16;
use nanovllm_cuda::cudarc::cublas::{CudaBlas, Gemm, GemmConfig, result as blas, sys as blas_sys};
use nanovllm_cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchArgs, LaunchConfig,
    PushKernelArg,
};
use nanovllm_cuda::{DEPENDENT_LAUNCH_CUH, DependentLaunch, Gpu, GpuError, KernelSource, dependent_launches};
use nanovllm_kv_quant::KV_QUANT_CUH;

use super::step::{StagedAdjustments, Truncation};
use crate::{DummyMatrix, Qwen3Config};

const MODEL_CU: &str = include_str!("model.cu");

/// Warps of `gemv_bf16` that share an output row of `k` values: more for longer rows, whose loads
/// then take fewer rounds. Measured on an H100 at batch 1 (docs/perf-history.md): two warps a row
/// were fastest at Qwen3-0.6B's shape (rows of 1,024 to 3,072; four no faster than one), four at
/// 8B's (4,096 to 12,288).
fn gemv_split(k: usize) -> usize {
    if k >= 4096 { 4 } else { 2 }
}

/// `GEMV_MAX_TOKENS` of model.cu: the most tokens `gemv_bf16` takes.
const GEMV_MAX_TOKENS: usize = 4;

/// The warps of a block of model.cu's GEMV build for `split` warps a row (`GEMV_BUILD`): four, or
/// for `silu` builds, which pair a gate row with an up row, enough for two rows.
fn gemv_warps(split: usize, silu: bool) -> usize {
    if silu { (2 * split).max(4) } else { 4 }
}

/// The GPU, its cuBLAS handle and this crate's compiled kernels, for one model shape (one rank's,
/// under tensor parallelism).
pub(super) struct Ops {
    pub(super) gpu: Gpu,
    blas: CudaBlas,
    config: Qwen3Config,
    /// The token ids whose embedding rows and logits this rank holds (all of them on one GPU).
    vocab: Range<usize>,
    embedding: CudaFunction,
    add_rms_norm: CudaFunction,
    qk_norm_rope: CudaFunction,
    silu_mul: CudaFunction,
    sample_tokens: CudaFunction,
    adjust_logits: CudaFunction,
    token_logprobs: CudaFunction,
    pick_best_shard: CudaFunction,
    draw_dummy: CudaFunction,
    /// `gemv_bf16` with one, two and four warps a row.
    gemv: [CudaFunction; 3],
    /// `gemv_silu_bf16`, the MLP's gate and up projections and SiLU in one, with one, two and four
    /// warps a row.
    gemv_silu: [CudaFunction; 3],
    /// Linear layers of at most this many tokens run `gemv_bf16` rather than cuBLAS (0: never):
    /// one, a batch-1 decode step, where it is faster end to end (docs/PERF.md); two and four
    /// tokens ran slower than cuBLAS (docs/perf-history.md). `NANOVLLM_GEMV_TOKENS`, up to 4, sets
    /// it, for tuning.
    gemv_tokens: usize,
    /// Warps of `gemv_bf16` that share one output row (1, 2 or 4), when `NANOVLLM_GEMV_SPLIT`
    /// sets it, for tuning; else [`gemv_split`]'s choice.
    gemv_split: Option<usize>,
    /// Whether the GEMV and `add_rms_norm` are dependent launches, their weights loaded beside the
    /// kernel ahead of them ([`dependent_launches`]; the tests set it to check both launches).
    dependent: bool,
}

/// This crate's kernels (`model.cu`) for `config`'s shape.
pub(super) fn source(config: &Qwen3Config) -> KernelSource {
    KernelSource {
        name: "qwen3",
        source: format!("{DEPENDENT_LAUNCH_CUH}\n{KV_QUANT_CUH}\n{MODEL_CU}"),
        defines: vec![("HEAD_DIM", config.head_dim.to_string()), ("HIDDEN", config.hidden_size.to_string())],
    }
}

impl Ops {
    pub(super) fn new(gpu: &Gpu, config: &Qwen3Config, vocab: Range<usize>) -> Result<Self, GpuError> {
        if !config.hidden_size.is_multiple_of(4) {
            return Err(GpuError::Unsupported(format!(
                "hidden_size {} (the GPU RMSNorm reads rows in 16-byte pieces: use a multiple of 4)",
                config.hidden_size
            )));
        }
        let module = gpu.load(&source(config))?;
        Ok(Ops {
            blas: CudaBlas::new(gpu.stream.clone())?,
            embedding: module.load_function("embedding")?,
            add_rms_norm: module.load_function("add_rms_norm")?,
            qk_norm_rope: module.load_function("qk_norm_rope")?,
            silu_mul: module.load_function("silu_mul")?,
            sample_tokens: module.load_function("sample_tokens")?,
            adjust_logits: module.load_function("adjust_logits")?,
            token_logprobs: module.load_function("token_logprobs")?,
            pick_best_shard: module.load_function("pick_best_shard")?,
            draw_dummy: module.load_function("draw_dummy")?,
            gemv: [
                module.load_function("gemv_bf16")?,
                module.load_function("gemv_bf16_split2")?,
                module.load_function("gemv_bf16_split4")?,
            ],
            gemv_silu: [
                module.load_function("gemv_silu_bf16")?,
                module.load_function("gemv_silu_bf16_split2")?,
                module.load_function("gemv_silu_bf16_split4")?,
            ],
            gemv_tokens: std::env::var("NANOVLLM_GEMV_TOKENS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .min(GEMV_MAX_TOKENS),
            gemv_split: std::env::var("NANOVLLM_GEMV_SPLIT")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|split| [1, 2, 4].contains(split)),
            dependent: dependent_launches(),
            gpu: gpu.clone(),
            config: config.clone(),
            vocab,
        })
    }

    /// Row-major `y[t][n] = sum_k x[t][k] * w[n][k]` (a linear layer with weights `[n][k]`).
    pub(super) fn linear(
        &self,
        x: &CudaView<'_, bf16>,
        w: &CudaSlice<bf16>,
        y: &mut CudaViewMut<'_, bf16>,
        t: usize,
        n: usize,
        k: usize,
    ) -> Result<(), GpuError> {
        if self.takes_gemv(t, k) {
            return self.gemv(false, x, w, y, t, n, k);
        }
        let config = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: t as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        // SAFETY: w holds n * k, x t * k and y t * n elements, as the dimensions say.
        #[allow(unsafe_code)]
        unsafe { self.blas.gemm(config, w, x, y) }.map_err(GpuError::from)
    }

    /// Whether a linear layer of `t` tokens and rows of `k` values runs `gemv_bf16`.
    fn takes_gemv(&self, t: usize, k: usize) -> bool {
        t <= self.gemv_tokens && k.is_multiple_of(8)
    }

    /// Queue model.cu's GEMV (`silu`: its build that pairs gate and up rows) for `y = x w^T` with
    /// weights `[n][k]` (`silu`: `y`'s rows of `n / 2` values).
    #[allow(clippy::too_many_arguments)]
    fn gemv(
        &self,
        silu: bool,
        x: &CudaView<'_, bf16>,
        w: &CudaSlice<bf16>,
        y: &mut CudaViewMut<'_, bf16>,
        t: usize,
        n: usize,
        k: usize,
    ) -> Result<(), GpuError> {
        let split = self.gemv_split.unwrap_or(gemv_split(k));
        let build = split.ilog2() as usize;
        let kernel = if silu { &self.gemv_silu[build] } else { &self.gemv[build] };
        let (tokens, n_arg, k_arg) = (t as i32, n as i32, k as i32);
        let warps = gemv_warps(split, silu);
        let (outputs, outputs_per_block) = if silu { (n / 2, warps / split / 2) } else { (n, warps / split) };
        let blocks = (outputs.div_ceil(outputs_per_block), 1);
        let mut launch = DependentLaunch::new(&self.gpu, kernel);
        launch.dependent(self.dependent);
        launch.buffer(x).buffer(w).buffer_mut(y).scalar(tokens).scalar(n_arg).scalar(k_arg);
        // SAFETY: the arguments are gemv's, in order; the grid covers `outputs` rows of `y`, which
        // holds t of them; the kernel reads only weights before it waits for the kernel ahead, and
        // writes after.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(grid(blocks, 32 * warps as u32))
        }
    }

    /// The MLP's first half for `t` rows of `x`: `act = silu(x gate^T) * (x up^T)` with
    /// `gate_up` the weights `[gate | up]`, each `[intermediate][hidden]`. A step small enough
    /// for the GEMV takes one kernel; others a GEMM into `gate_up_out` and `silu_mul`.
    pub(super) fn gate_up_silu(
        &self,
        x: &CudaView<'_, bf16>,
        gate_up: &CudaSlice<bf16>,
        gate_up_out: &mut CudaSlice<bf16>,
        act: &mut CudaSlice<bf16>,
        t: usize,
    ) -> Result<(), GpuError> {
        let (h, inter) = (self.config.hidden_size, self.config.intermediate_size);
        if self.takes_gemv(t, h) {
            return self.gemv(true, x, gate_up, &mut act.slice_mut(..t * inter), t, 2 * inter, h);
        }
        self.linear(x, gate_up, &mut gate_up_out.slice_mut(..), t, 2 * inter, h)?;
        self.silu_mul(gate_up_out, act, t)
    }

    /// `logits[s][v] = sum_k last[s][k] * head[v][k]`, bf16 inputs, f32 output, for this rank's
    /// rows of the head.
    pub(super) fn logits_gemm(
        &self,
        last: &CudaSlice<bf16>,
        head: &CudaSlice<bf16>,
        logits: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), GpuError> {
        let (vocab, hidden) = (self.vocab.len() as i32, self.config.hidden_size as i32);
        let stream = &self.gpu.stream;
        let (a, _a) = head.device_ptr(stream);
        let (b, _b) = last.device_ptr(stream);
        let (out, _out) = logits.device_ptr_mut(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: head is [vocab][hidden], last at least [rows][hidden], logits at least
        // [rows][vocab], all live on this stream until the guards drop after the call is queued.
        #[allow(unsafe_code)]
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                vocab,
                rows as i32,
                hidden,
                (&alpha) as *const f32 as *const _,
                a as *const _,
                blas_sys::cudaDataType_t::CUDA_R_16BF,
                hidden,
                b as *const _,
                blas_sys::cudaDataType_t::CUDA_R_16BF,
                hidden,
                (&beta) as *const f32 as *const _,
                out as *mut _,
                blas_sys::cudaDataType_t::CUDA_R_32F,
                vocab,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(GpuError::from)
    }

    /// `x[t] = embed[ids[t]]` in f32, for `tokens` tokens; zero for ids outside this rank's rows.
    pub(super) fn embedding(
        &self,
        ids: &CudaView<'_, i32>,
        embed: &CudaSlice<bf16>,
        x: &mut CudaSlice<f32>,
        tokens: usize,
    ) -> Result<(), GpuError> {
        let hidden = self.config.hidden_size as i32;
        let (start, rows) = (self.vocab.start as i32, self.vocab.len() as i32);
        let mut launch = self.gpu.stream.launch_builder(&self.embedding);
        launch.arg(ids).arg(embed).arg(x).arg(&hidden).arg(&start).arg(&rows);
        launch_blocks(&mut launch, (tokens, 1), 256)
    }

    /// `x += delta` (when given), then `out = rms_norm(x) * weight` in bf16, for `count` rows
    /// (`rows`: which rows of x, when given).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_rms_norm(
        &self,
        x: &mut CudaSlice<f32>,
        delta: Option<&CudaSlice<bf16>>,
        rows: Option<&CudaView<'_, i32>>,
        weight: &CudaSlice<f32>,
        out: &mut CudaSlice<bf16>,
        count: usize,
    ) -> Result<(), GpuError> {
        let eps = self.config.rms_norm_eps as f32;
        let mut launch = DependentLaunch::new(&self.gpu, &self.add_rms_norm);
        launch.dependent(self.dependent).buffer_mut(x);
        match delta {
            Some(delta) => launch.buffer(delta),
            None => launch.scalar(0u64), // null
        };
        match rows {
            Some(rows) => launch.buffer(rows),
            None => launch.scalar(0u64),
        };
        launch.buffer(weight).buffer_mut(out).scalar(eps);
        // SAFETY: the arguments are add_rms_norm's, in order; a block per row of `out`, which holds
        // `count`; the kernel reads only its weights before it waits for the kernel ahead.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(grid((count, 1), 128))
        }
    }

    /// q/k RMSNorm and RoPE in place on the Q and K heads of `qkv` (`stride` elements per token).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn qk_norm_rope(
        &self,
        qkv: &mut CudaSlice<bf16>,
        positions: &CudaView<'_, i32>,
        q_norm: &CudaSlice<f32>,
        k_norm: &CudaSlice<f32>,
        (inv_freq, rope_scale): (&CudaSlice<f32>, f32),
        tokens: usize,
        stride: usize,
    ) -> Result<(), GpuError> {
        let c = &self.config;
        let heads = c.num_attention_heads as i32;
        let (stride, eps) = (stride as i64, c.rms_norm_eps as f32);
        let mut launch = self.gpu.stream.launch_builder(&self.qk_norm_rope);
        let kv_heads = c.num_key_value_heads as i32;
        launch
            .arg(qkv)
            .arg(positions)
            .arg(q_norm)
            .arg(k_norm)
            .arg(inv_freq)
            .arg(&rope_scale)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&stride)
            .arg(&eps);
        // A warp per head, four heads per block.
        let blocks = (c.num_attention_heads + c.num_key_value_heads).div_ceil(4);
        launch_blocks(&mut launch, (tokens, blocks), 128)
    }

    /// `act = silu(gate) * up` for `tokens` rows of `[gate | up]`.
    fn silu_mul(
        &self,
        gate_up: &CudaSlice<bf16>,
        act: &mut CudaSlice<bf16>,
        tokens: usize,
    ) -> Result<(), GpuError> {
        let inter = self.config.intermediate_size;
        let inter_arg = inter as i32;
        let mut launch = self.gpu.stream.launch_builder(&self.silu_mul);
        launch.arg(gate_up).arg(act).arg(&inter_arg);
        // Each thread takes 8 values of a row.
        launch_blocks(&mut launch, (tokens, inter.div_ceil(8 * 128)), 128)
    }

    /// Rows `rows` and columns `cols` of a dummy matrix, drawn on the GPU into `out` (row-major,
    /// `rows.len() * cols.len()` values): the bf16 values the host would read and convert.
    pub(super) fn draw_dummy(
        &self,
        matrix: DummyMatrix,
        rows: Range<usize>,
        cols: Range<usize>,
        out: &mut CudaViewMut<'_, bf16>,
    ) -> Result<(), GpuError> {
        let total = rows.len() * cols.len();
        if out.len() != total {
            return Err(GpuError::Unsupported(format!(
                "{total} dummy values into a buffer of {}",
                out.len()
            )));
        }
        let [width, row0, col0, rows, cols] =
            [matrix.width, rows.start, cols.start, rows.len(), cols.len()].map(|n| n as i64);
        let mut launch = self.gpu.stream.launch_builder(&self.draw_dummy);
        launch
            .arg(out)
            .arg(&matrix.stream)
            .arg(&width)
            .arg(&row0)
            .arg(&col0)
            .arg(&rows)
            .arg(&cols)
            .arg(&matrix.std);
        // A thread a value, in a grid-stride loop over at most 2^20 blocks.
        launch_blocks(&mut launch, (total.div_ceil(256).clamp(1, 1 << 20), 1), 256)
    }

    /// How many pieces [`Ops::sample`] may cut each of `rows` rows into: enough that a draw of a
    /// few rows spreads over [`SAMPLE_BLOCKS`] blocks (one block over the whole vocabulary took
    /// 48 us of a 1.4 ms batch-1 step on an H100), each piece at least [`SAMPLE_PIECE_MIN`]
    /// logits; 1 where the vocabulary is not a multiple of 4 (a piece's 16-byte loads must start
    /// aligned).
    pub(super) fn sample_pieces(&self, rows: usize) -> usize {
        sample_pieces(self.vocab.len(), rows)
    }

    /// One token per logit row (Gumbel-max with the row's temperature, seed and step), among this
    /// rank's token ids, kept to each row's `truncation` when given (one GPU only: a rank's slice
    /// of the vocabulary cannot rank its tokens against the others'); `best_values`, when given,
    /// receives each token's score. With `pieces` above 1 (at most [`Ops::sample_pieces`], and no
    /// truncation) each row is drawn in pieces of the vocabulary: `out` and `best_values` get
    /// each piece's best, `[pieces][rows]`, for [`Ops::pick_best_shard`] to choose among.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sample(
        &self,
        logits: &CudaSlice<f32>,
        temperatures: &CudaView<'_, f32>,
        seeds: &CudaView<'_, u64>,
        steps: &CudaView<'_, u64>,
        out: &mut CudaSlice<i32>,
        best_values: Option<&mut CudaSlice<f32>>,
        truncation: Option<Truncation<'_>>,
        rows: usize,
        pieces: usize,
    ) -> Result<(), GpuError> {
        if pieces > 1 && (truncation.is_some() || pieces > self.sample_pieces(rows)) {
            return Err(GpuError::Unsupported(format!(
                "a draw in {pieces} pieces of the vocabulary (at most {}, and none that truncates)",
                self.sample_pieces(rows)
            )));
        }
        let short = |len: usize| len < rows * pieces;
        if short(out.len()) || best_values.as_ref().is_some_and(|values| short(values.len())) {
            return Err(GpuError::Unsupported(format!(
                "a draw of {rows} rows in {pieces} pieces into room for {}",
                out.len()
            )));
        }
        let (start, vocab) = (self.vocab.start as i32, self.vocab.len() as i32);
        let null = 0u64;
        let mut launch = self.gpu.stream.launch_builder(&self.sample_tokens);
        launch.arg(logits).arg(temperatures).arg(seeds).arg(steps).arg(out);
        match best_values {
            Some(values) => launch.arg(values),
            None => launch.arg(&null),
        };
        launch.arg(&start).arg(&vocab);
        match &truncation {
            Some(t) => launch.arg(t.top_ks).arg(t.top_ps).arg(t.log_min_ps),
            None => launch.arg(&null).arg(&null).arg(&null),
        };
        launch_blocks(&mut launch, (rows, pieces), 1024)
    }

    /// Apply the first `count` staged adjustments to the logits in place, keeping the values they
    /// replace in `saved`; or (`restore`) put those values back.
    pub(super) fn adjust_logits(
        &self,
        logits: &mut CudaSlice<f32>,
        adjustments: &StagedAdjustments,
        saved: &mut CudaSlice<f32>,
        count: usize,
        restore: bool,
    ) -> Result<(), GpuError> {
        let (count_arg, vocab, restore) = (count as i32, self.vocab.len() as i32, restore as i32);
        let mut launch = self.gpu.stream.launch_builder(&self.adjust_logits);
        let (rows, tokens, repetitions, subtracts) = adjustments.device();
        launch.arg(logits).arg(rows).arg(tokens).arg(repetitions).arg(subtracts).arg(saved);
        launch.arg(&count_arg).arg(&vocab).arg(&restore);
        launch_blocks(&mut launch, (count.div_ceil(256), 1), 256)
    }

    /// For each of `rows` rows with `counts[row] >= 0`: the log-probability of its sampled token
    /// (`chosen`), and of its `counts[row]` most likely tokens (`top_ids`, `top_logprobs`, `widest`
    /// per row), from the logits.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn token_logprobs(
        &self,
        logits: &CudaSlice<f32>,
        sampled: &CudaSlice<i32>,
        counts: &CudaSlice<i32>,
        widest: usize,
        chosen: &mut CudaSlice<f32>,
        top_ids: &mut CudaSlice<i32>,
        top_logprobs: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), GpuError> {
        let (vocab, widest) = (self.vocab.len() as i32, widest as i32);
        let mut launch = self.gpu.stream.launch_builder(&self.token_logprobs);
        launch.arg(logits).arg(sampled).arg(counts).arg(&vocab).arg(&widest);
        launch.arg(chosen).arg(top_ids).arg(top_logprobs);
        launch_blocks(&mut launch, (rows, 1), 1024)
    }

    /// The token of each of `rows` rows from every rank's candidate (`ids` and `values`, gathered
    /// as `[world][rows]`).
    pub(super) fn pick_best_shard(
        &self,
        ids: &CudaSlice<i32>,
        values: &CudaSlice<f32>,
        out: &mut CudaSlice<i32>,
        rows: usize,
        world: usize,
    ) -> Result<(), GpuError> {
        let (rows_arg, world) = (rows as i32, world as i32);
        let mut launch = self.gpu.stream.launch_builder(&self.pick_best_shard);
        launch.arg(ids).arg(values).arg(out).arg(&rows_arg).arg(&world);
        launch_blocks(&mut launch, (rows.div_ceil(256), 1), 256)
    }
}

/// Thread blocks a draw of a few rows spreads over ([`Ops::sample_pieces`]).
pub(super) const SAMPLE_BLOCKS: usize = 32;
/// The fewest logits a piece of a row is drawn over.
const SAMPLE_PIECE_MIN: usize = 4096;

/// [`Ops::sample_pieces`] for a vocabulary (a rank's share) of `vocab` ids.
fn sample_pieces(vocab: usize, rows: usize) -> usize {
    if !vocab.is_multiple_of(4) {
        return 1;
    }
    SAMPLE_BLOCKS.div_ceil(rows.max(1)).min(vocab / SAMPLE_PIECE_MIN).max(1)
}

/// A grid of `blocks` (x, y) thread blocks of `threads` threads, without dynamic shared memory.
fn grid(blocks: (usize, usize), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.0 as u32, blocks.1 as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch a grid of `blocks` (x, y) thread blocks of `threads` threads (one per row: `(rows, 1)`).
fn launch_blocks(launch: &mut LaunchArgs<'_>, blocks: (usize, usize), threads: u32) -> Result<(), GpuError> {
    let config = grid(blocks, threads);
    // SAFETY: every caller pushes the arguments of its kernel in order, and its kernel touches only
    // the rows (and columns) its grid covers.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(config)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `values` random bf16s in [-1, 1) from `seed`.
    fn random_bf16(values: usize, seed: u64) -> Vec<bf16> {
        (0..values as u64)
            .map(|i| bf16::from_f32((crate::source::mix(seed ^ i) >> 40) as f32 / (1u64 << 23) as f32 - 1.0))
            .collect()
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn linear_matches_the_cpu_reference() {
        let gpu = Gpu::open().unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"));
        let config = Qwen3Config::from_json_str(
            r#"{"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 16,
                "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072, "vocab_size": 1000,
                "max_position_embeddings": 4096}"#,
        )
        .unwrap();
        let mut ops = Ops::new(&gpu, &config, 0..config.vocab_size).unwrap();
        let seed = fresh_seed();
        let stream = gpu.stream.clone();
        for (case, &(t, n, k)) in [
            (1, 4096, 1024),
            (3, 1024, 2048),
            (8, 6144, 1024),
            (5, 1024, 3072),
            (2, 24, 8),
            (4, 100, 5000),
            (1, 1024, 12_288),
        ]
        .iter()
        .enumerate()
        {
            let (x, w) = (random_bf16(t * k, seed ^ case as u64), random_bf16(n * k, !seed ^ case as u64));
            let expected: Vec<f64> = (0..t * n)
                .map(|i| {
                    let (row, col) = (i / n, i % n);
                    (0..k)
                        .map(|e| f64::from(x[row * k + e].to_f32()) * f64::from(w[col * k + e].to_f32()))
                        .sum()
                })
                .collect();
            let (x_gpu, w_gpu) = (stream.clone_htod(&x).unwrap(), stream.clone_htod(&w).unwrap());
            for_each_path(&mut ops, k, ("cuBLAS", "gemv_bf16"), |ops, path| {
                let mut y = stream.alloc_zeros::<bf16>(t * n).unwrap();
                ops.linear(&x_gpu.slice(..), &w_gpu, &mut y.slice_mut(..), t, n, k).unwrap();
                let relative = relative_error(&stream.clone_dtoh(&y).unwrap(), &expected);
                eprintln!("linear ({path}), {t} x {n} x {k}: relative L2 error {relative:.2e}");
                // bf16 outputs: half a unit in the 8th bit, about 2e-3 of each value at most.
                assert!(relative < 3e-3, "linear ({path}), {t} x {n} x {k}: relative L2 error {relative}");
            });
        }
    }

    /// Set `ops` to each way it runs a layer whose rows hold `k` values, and `check` it under the
    /// path's name: the GEMM (`gemm`), then the GEMV (`gemv`) with one, two and four warps a row,
    /// each an ordinary launch, and with its usual warps as a dependent launch.
    fn for_each_path(ops: &mut Ops, k: usize, (gemm, gemv): (&str, &str), mut check: impl FnMut(&Ops, &str)) {
        for (path, gemv_tokens, split, dependent) in [
            (gemm.to_string(), 0, 1, false),
            (gemv.to_string(), GEMV_MAX_TOKENS, 1, false),
            (format!("{gemv}, 2 warps a row"), GEMV_MAX_TOKENS, 2, false),
            (format!("{gemv}, 4 warps a row"), GEMV_MAX_TOKENS, 4, false),
            (format!("{gemv}, a dependent launch"), GEMV_MAX_TOKENS, gemv_split(k), true),
        ] {
            (ops.gemv_tokens, ops.gemv_split, ops.dependent) = (gemv_tokens, Some(split), dependent);
            check(ops, &path);
        }
    }

    /// The relative L2 error of `got` against `expected`.
    fn relative_error(got: &[bf16], expected: &[f64]) -> f64 {
        let (error, norm) = got
            .iter()
            .zip(expected)
            .fold((0.0, 0.0), |(e, s), (g, r)| (e + (f64::from(g.to_f32()) - r).powi(2), s + r * r));
        (error / norm).sqrt()
    }

    /// The seed of a test's random inputs: fresh each run, and printed.
    fn fresh_seed() -> u64 {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        eprintln!("seed {seed}");
        seed
    }

    /// The MLP's first half, `silu(x gate^T) * (x up^T)`, through cuBLAS and `silu_mul` and
    /// through each build of `gemv_silu_bf16`, against an f64 product whose projections are rounded
    /// to bf16 as the model's are.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gate_up_silu_matches_the_cpu_reference() {
        let gpu = Gpu::open().unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"));
        let seed = fresh_seed();
        let stream = gpu.stream.clone();
        for (case, &(h, inter)) in [(1024, 3072), (4096, 1000), (64, 40)].iter().enumerate() {
            let config = Qwen3Config::from_json_str(&format!(
                r#"{{"model_type": "qwen3", "hidden_size": {h}, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": {inter}, "vocab_size": 100,
                    "max_position_embeddings": 64}}"#
            ))
            .unwrap();
            let mut ops = Ops::new(&gpu, &config, 0..config.vocab_size).unwrap();
            for t in 1..=GEMV_MAX_TOKENS {
                let case_seed = seed ^ (case * 8 + t) as u64;
                let (x, w) = (random_bf16(t * h, case_seed), random_bf16(2 * inter * h, !case_seed));
                let projection = |token: usize, row: usize| {
                    let dot: f64 = (0..h)
                        .map(|e| f64::from(x[token * h + e].to_f32()) * f64::from(w[row * h + e].to_f32()))
                        .sum();
                    f64::from(bf16::from_f64(dot).to_f32())
                };
                let expected: Vec<f64> = (0..t * inter)
                    .map(|i| {
                        let (token, col) = (i / inter, i % inter);
                        let (gate, up) = (projection(token, col), projection(token, inter + col));
                        gate / (1.0 + (-gate).exp()) * up
                    })
                    .collect();
                let (x_gpu, w_gpu) = (stream.clone_htod(&x).unwrap(), stream.clone_htod(&w).unwrap());
                for_each_path(&mut ops, h, ("cuBLAS and silu_mul", "gemv_silu_bf16"), |ops, path| {
                    let mut gate_up = stream.alloc_zeros::<bf16>(t * 2 * inter).unwrap();
                    // A row more than the step's: the kernels must leave it alone.
                    let mut act = stream.clone_htod(&vec![bf16::from_f32(7.0); (t + 1) * inter]).unwrap();
                    ops.gate_up_silu(&x_gpu.slice(..), &w_gpu, &mut gate_up, &mut act, t).unwrap();
                    let got = stream.clone_dtoh(&act).unwrap();
                    assert!(
                        got[t * inter..].iter().all(|&v| v == bf16::from_f32(7.0)),
                        "{path} wrote past its rows"
                    );
                    let relative = relative_error(&got[..t * inter], &expected);
                    eprintln!("gate_up_silu ({path}), {t} x {inter} x {h}: relative L2 error {relative:.2e}");
                    assert!(
                        relative < 3e-3,
                        "gate_up_silu ({path}), {t} x {inter} x {h}: relative L2 error {relative}"
                    );
                });
            }
        }
    }

    /// The pieces' results fit the model's buffers of `2 * SAMPLE_BLOCKS`, every piece holds at
    /// least `SAMPLE_PIECE_MIN` logits, and many rows take one block each.
    #[test]
    fn sample_pieces_fit_their_buffers() {
        for vocab in [300, 301, 4096, 12_288, 151_936, 151_937] {
            for rows in 0..300 {
                let pieces = sample_pieces(vocab, rows);
                assert!(pieces >= 1);
                assert!(pieces == 1 || rows * pieces < 2 * SAMPLE_BLOCKS, "{rows} rows x {pieces}");
                assert!(pieces == 1 || vocab / pieces >= SAMPLE_PIECE_MIN, "vocab {vocab} in {pieces}");
                assert!(pieces == 1 || vocab % 4 == 0);
                assert_eq!(
                    pieces == 1,
                    rows >= SAMPLE_BLOCKS || vocab < 2 * SAMPLE_PIECE_MIN || vocab % 4 != 0
                );
            }
        }
    }
}

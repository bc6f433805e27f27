//! The Qwen3 forward pass on an NVIDIA GPU: weights in bf16, GEMMs through cuBLAS (f32
//! accumulation), the residual stream in f32, this crate's kernels (`model.cu`) for the
//! embedding, the norms, q/k norm with RoPE and SiLU, and kv-cache's kernels for the paged cache
//! (store with quantize-on-write, attention reading INT8 or bf16 rows in place).
//!
//! Version 1, correct first: prefill attention runs through the decode kernel (each prompt token is
//! a query over its own context), activations are allocated per step, and there are no CUDA graphs
//! yet. Sampling without top-k/top-p runs on the GPU ([`GpuQwen3::forward_sampled`]); otherwise
//! logits come back to the host in f32.

use half::bf16;
use kv_cache::CacheDtype;
use kv_cache::cuda::{AttentionQueries, CacheKernels, DecodeWorkspace, GpuKvCache};
use kv_quant::cuda::cudarc::cublas::{CudaBlas, Gemm, GemmConfig, result as blas, sys as blas_sys};
use kv_quant::cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use kv_quant::cuda::{Gpu, GpuError, INT8_KV_CUH};

use crate::forward::{lay_out, logit_rows};
use crate::{ModelError, Qwen3Config, Qwen3Model, SeqInput};

const MODEL_CU: &str = include_str!("model.cu");

struct GpuLayer {
    input_norm: CudaSlice<f32>,
    post_norm: CudaSlice<f32>,
    q_norm: CudaSlice<f32>,
    k_norm: CudaSlice<f32>,
    qkv: CudaSlice<bf16>,
    o_proj: CudaSlice<bf16>,
    gate_up: CudaSlice<bf16>,
    down: CudaSlice<bf16>,
}

struct ModelKernels {
    embedding: CudaFunction,
    add_rms_norm: CudaFunction,
    qk_norm_rope: CudaFunction,
    silu_mul: CudaFunction,
    sample_tokens: CudaFunction,
}

/// How to sample one sequence's next token on the GPU: temperature (0: greedy), the request's
/// seed, and a per-token counter (its position), which together fix the noise.
#[derive(Debug, Clone, Copy)]
pub struct GpuSample {
    /// Softmax temperature; 0 takes the most likely token.
    pub temperature: f32,
    /// The request's seed.
    pub seed: u64,
    /// A counter unique to this token of the request (its position).
    pub step: u64,
}

/// A Qwen3 model and its paged KV cache on the GPU.
pub struct GpuQwen3 {
    gpu: Gpu,
    blas: CudaBlas,
    config: Qwen3Config,
    embed: CudaSlice<bf16>,
    lm_head: Option<CudaSlice<bf16>>,
    norm: CudaSlice<f32>,
    inv_freq: CudaSlice<f32>,
    layers: Vec<GpuLayer>,
    kernels: ModelKernels,
    cache_kernels: CacheKernels,
    cache: GpuKvCache,
}

impl std::fmt::Debug for GpuQwen3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuQwen3").field("config", &self.config).field("cache", &self.cache.layout).finish()
    }
}

fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&x| bf16::from_f32(x)).collect()
}

impl GpuQwen3 {
    /// Upload `model` (bf16 weights; Q/K/V and gate/up stay packed) and allocate a cache of
    /// `num_blocks` blocks of `block_size` in `dtype` (bf16 or int8).
    pub fn new(
        gpu: &Gpu,
        model: &Qwen3Model,
        dtype: CacheDtype,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self, GpuError> {
        if model.is_shard() {
            return Err(GpuError::Unsupported(
                "a tensor-parallel shard (the GPU path runs whole models)".into(),
            ));
        }
        let c = model.config().clone();
        let up16 = |values: &[f32]| gpu.stream.clone_htod(&to_bf16(values));
        let up32 = |values: &[f32]| gpu.stream.clone_htod(values);
        let contiguous =
            |a: &ndarray::Array2<f32>| a.as_standard_layout().into_owned().into_raw_vec_and_offset().0;
        let layers = model
            .layers
            .iter()
            .map(|l| -> Result<GpuLayer, GpuError> {
                Ok(GpuLayer {
                    input_norm: up32(&l.input_norm)?,
                    post_norm: up32(&l.post_norm)?,
                    q_norm: up32(&l.q_norm)?,
                    k_norm: up32(&l.k_norm)?,
                    qkv: up16(&contiguous(&l.qkv))?,
                    o_proj: up16(&contiguous(&l.o_proj))?,
                    gate_up: up16(&contiguous(&l.gate_up))?,
                    down: up16(&contiguous(&l.down))?,
                })
            })
            .collect::<Result<_, _>>()?;
        let module = gpu.module(
            "qwen3",
            &format!("{INT8_KV_CUH}\n{MODEL_CU}"),
            &[("HEAD_DIM", c.head_dim.to_string())],
        )?;
        let kernels = ModelKernels {
            embedding: module.load_function("embedding")?,
            add_rms_norm: module.load_function("add_rms_norm")?,
            qk_norm_rope: module.load_function("qk_norm_rope")?,
            silu_mul: module.load_function("silu_mul")?,
            sample_tokens: module.load_function("sample_tokens")?,
        };
        let layout = model.cache_layout(num_blocks, block_size);
        Ok(GpuQwen3 {
            blas: CudaBlas::new(gpu.stream.clone()).map_err(|e| GpuError::Blas(e.to_string()))?,
            embed: up16(&contiguous(&model.embed_tokens))?,
            lm_head: model.lm_head.as_ref().map(|h| up16(&contiguous(h))).transpose()?,
            norm: up32(&model.norm)?,
            inv_freq: up32(&model.inv_freq())?,
            layers,
            kernels,
            cache_kernels: CacheKernels::new(gpu, dtype, c.head_dim, c.group_size(), block_size)?,
            cache: GpuKvCache::new(gpu, layout, dtype)?,
            gpu: gpu.clone(),
            config: c,
        })
    }

    /// Bytes of the weights on the GPU (bf16; a tied head is stored once).
    pub fn weight_bytes(config: &Qwen3Config) -> usize {
        2 * config.num_parameters()
    }

    /// Bytes one forward pass allocates for `tokens` tokens of contexts up to `max_context`, and
    /// `outputs` rows of logits: what must stay free beside the weights and the cache.
    pub fn activation_bytes(
        config: &Qwen3Config,
        tokens: usize,
        max_context: usize,
        outputs: usize,
    ) -> usize {
        let c = config;
        let (h, d, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let per_token =
            4 * h + 2 * (h + c.qkv_size() + c.num_attention_heads * d + h + 3 * i) + 4 + 4 + 8 + 4;
        let attention = kv_cache::cuda::DecodeWorkspace::bytes(tokens, c.num_attention_heads, d, max_context);
        tokens * per_token + attention + outputs * (4 * c.vocab_size + 2 * h)
    }

    /// The forward pass of [`Qwen3Model::forward`], on the GPU: same inputs, same outputs.
    pub fn forward(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let (logits, rows) = self.logits(seqs)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let host = self.gpu.stream.clone_dtoh(&logits).map_err(GpuError::from)?;
        Ok(host.chunks_exact(self.config.vocab_size).map(<[f32]>::to_vec).collect())
    }

    /// The forward pass, then one token sampled on the GPU for each sequence that asks for
    /// logits (`samples` in the same order): only token ids come back to the host.
    pub fn forward_sampled(
        &mut self,
        seqs: &[SeqInput<'_>],
        samples: &[GpuSample],
    ) -> Result<Vec<u32>, ModelError> {
        let (logits, rows) = self.logits(seqs)?;
        if rows != samples.len() {
            return Err(ModelError::Input(format!(
                "{} sampling specs for {rows} sequences with logits",
                samples.len()
            )));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        Ok(self.sample(&logits, samples)?)
    }

    fn sample(&self, logits: &CudaSlice<f32>, samples: &[GpuSample]) -> Result<Vec<u32>, GpuError> {
        let stream = &self.gpu.stream;
        let temperatures = stream.clone_htod(&samples.iter().map(|s| s.temperature).collect::<Vec<_>>())?;
        let seeds = stream.clone_htod(&samples.iter().map(|s| s.seed).collect::<Vec<_>>())?;
        let steps = stream.clone_htod(&samples.iter().map(|s| s.step).collect::<Vec<_>>())?;
        let mut out = stream.alloc_zeros::<i32>(samples.len())?;
        let vocab = self.config.vocab_size as i32;
        let mut launch = stream.launch_builder(&self.kernels.sample_tokens);
        launch.arg(logits).arg(&temperatures).arg(&seeds).arg(&steps).arg(&mut out).arg(&vocab);
        launch_rows(&mut launch, samples.len(), 1024)?;
        Ok(stream.clone_dtoh(&out)?.into_iter().map(|t| t as u32).collect())
    }

    /// Logits on the device (`[rows][vocab]` f32) for the sequences that ask for them, and `rows`.
    fn logits(&mut self, seqs: &[SeqInput<'_>]) -> Result<(CudaSlice<f32>, usize), ModelError> {
        let tokens = lay_out(seqs, self.config.vocab_size, self.cache.layout.block_size)?;
        let max_blocks = seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(1).max(1);
        let ids: Vec<i32> = tokens.iter().map(|t| t.id as i32).collect();
        let positions: Vec<i32> = tokens.iter().map(|t| t.pos as i32).collect();
        let slots: Vec<i64> = tokens.iter().map(|t| t.slot as i64).collect();
        // Every token attends through its sequence's table, padded to the longest.
        let mut tables = Vec::with_capacity(tokens.len() * max_blocks);
        for token in &tokens {
            let blocks = seqs[token.seq].block_table.blocks();
            tables.extend(blocks.iter().map(|&b| b as i32));
            tables.resize(tables.len() + max_blocks - blocks.len(), 0);
        }
        // Consecutive tokens of one sequence (a prefill chunk) attend in groups that share each K/V
        // row they read; a decode token is a group of one.
        let per_group = self.cache_kernels.queries_per_group();
        let mut groups: Vec<i32> = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let group_start = groups.last().map_or(0, |&g| g as usize);
            if i == 0 || tokens[i - 1].seq != token.seq || i - group_start == per_group {
                groups.push(i as i32);
            }
        }
        groups.push(tokens.len() as i32);
        let logit_rows: Vec<i32> = logit_rows(seqs).into_iter().map(|r| r as i32).collect();
        Ok(self.run(&ids, &positions, &slots, &tables, max_blocks, &groups, &logit_rows)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        ids: &[i32],
        positions: &[i32],
        slots: &[i64],
        tables: &[i32],
        max_blocks: usize,
        groups: &[i32],
        logit_rows: &[i32],
    ) -> Result<(CudaSlice<f32>, usize), GpuError> {
        let c = self.config.clone();
        let stream = self.gpu.stream.clone();
        let tokens = ids.len();
        let (h, d, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_size, kv_size) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let qkv_size = q_size + 2 * kv_size;
        let context_lens: Vec<i32> = positions.iter().map(|p| p + 1).collect();

        let ids_gpu = stream.clone_htod(ids)?;
        let positions_gpu = stream.clone_htod(positions)?;
        let slots_gpu = stream.clone_htod(slots)?;
        let tables_gpu = stream.clone_htod(tables)?;
        let lens_gpu = stream.clone_htod(&context_lens)?;
        let groups_gpu = stream.clone_htod(groups)?;
        let queries = AttentionQueries {
            block_tables: &tables_gpu,
            max_blocks,
            context_lens: &lens_gpu,
            groups: &groups_gpu,
            num_queries: tokens,
            num_groups: groups.len() - 1,
        };
        let rows_gpu = stream.clone_htod(logit_rows)?;
        let mut x = stream.alloc_zeros::<f32>(tokens * h)?;
        let mut normed = stream.alloc_zeros::<bf16>(tokens * h)?;
        let mut qkv = stream.alloc_zeros::<bf16>(tokens * qkv_size)?;
        let mut attended = stream.alloc_zeros::<bf16>(tokens * q_size)?;
        let mut delta = stream.alloc_zeros::<bf16>(tokens * h)?;
        let mut gate_up = stream.alloc_zeros::<bf16>(tokens * 2 * inter)?;
        let mut act = stream.alloc_zeros::<bf16>(tokens * inter)?;
        // Decode attention sizes its splits by the block tables' width.
        let table_context = max_blocks * self.cache.layout.block_size;
        let mut workspace = DecodeWorkspace::new(&self.gpu, tokens, c.num_attention_heads, d, table_context)?;
        let eps = c.rms_norm_eps as f32;

        self.launch_embedding(&ids_gpu, &mut x, tokens)?;
        for index in 0..self.layers.len() {
            let has_delta = index > 0;
            self.launch_add_rms_norm(
                &mut x,
                has_delta.then_some(&delta),
                None,
                &self.layers[index].input_norm,
                &mut normed,
                tokens,
                eps,
            )?;
            self.linear(
                &normed.slice(..),
                &self.layers[index].qkv,
                &mut qkv.slice_mut(..),
                tokens,
                qkv_size,
                h,
            )?;
            self.launch_qk_norm_rope(&mut qkv, &positions_gpu, index, tokens, qkv_size, eps)?;
            let key = qkv.slice(q_size..);
            let value = qkv.slice(q_size + kv_size..);
            self.cache_kernels.store(
                &self.gpu,
                &mut self.cache,
                index,
                &key,
                &value,
                qkv_size,
                &slots_gpu,
                tokens,
            )?;
            self.cache_kernels.attention(
                &self.gpu,
                &self.cache,
                index,
                &qkv.slice(..),
                qkv_size,
                &queries,
                &mut workspace,
                &mut attended,
            )?;
            self.linear(
                &attended.slice(..),
                &self.layers[index].o_proj,
                &mut delta.slice_mut(..),
                tokens,
                h,
                q_size,
            )?;
            self.launch_add_rms_norm(
                &mut x,
                Some(&delta),
                None,
                &self.layers[index].post_norm,
                &mut normed,
                tokens,
                eps,
            )?;
            self.linear(
                &normed.slice(..),
                &self.layers[index].gate_up,
                &mut gate_up.slice_mut(..),
                tokens,
                2 * inter,
                h,
            )?;
            self.launch_silu_mul(&gate_up, &mut act, tokens, inter)?;
            self.linear(
                &act.slice(..),
                &self.layers[index].down,
                &mut delta.slice_mut(..),
                tokens,
                h,
                inter,
            )?;
        }
        let outputs = logit_rows.len();
        if outputs == 0 {
            return Ok((stream.alloc_zeros::<f32>(1)?, 0));
        }
        let mut last = stream.alloc_zeros::<bf16>(outputs * h)?;
        self.launch_add_rms_norm(&mut x, Some(&delta), Some(&rows_gpu), &self.norm, &mut last, outputs, eps)?;
        let mut logits = stream.alloc_zeros::<f32>(outputs * c.vocab_size)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        self.logits_gemm(&last, head, &mut logits, outputs)?;
        Ok((logits, outputs))
    }

    /// Row-major `y[t][n] = sum_k x[t][k] * w[n][k]` (a linear layer with weights `[n][k]`).
    fn linear(
        &self,
        x: &CudaView<'_, bf16>,
        w: &CudaSlice<bf16>,
        y: &mut CudaViewMut<'_, bf16>,
        t: usize,
        n: usize,
        k: usize,
    ) -> Result<(), GpuError> {
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
        unsafe { self.blas.gemm(config, w, x, y) }.map_err(|e| GpuError::Blas(e.to_string()))
    }

    /// `logits[s][v] = sum_k last[s][k] * head[v][k]`, bf16 inputs, f32 output.
    fn logits_gemm(
        &self,
        last: &CudaSlice<bf16>,
        head: &CudaSlice<bf16>,
        logits: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), GpuError> {
        let (vocab, hidden) = (self.config.vocab_size as i32, self.config.hidden_size as i32);
        let stream = &self.gpu.stream;
        let (a, _a) = head.device_ptr(stream);
        let (b, _b) = last.device_ptr(stream);
        let (out, _out) = logits.device_ptr_mut(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: head is [vocab][hidden], last [rows][hidden], logits [rows][vocab], all live on
        // this stream until the guards drop after the call is queued.
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
        .map_err(|e| GpuError::Blas(e.to_string()))
    }

    fn launch_embedding(
        &self,
        ids: &CudaSlice<i32>,
        x: &mut CudaSlice<f32>,
        tokens: usize,
    ) -> Result<(), GpuError> {
        let hidden = self.config.hidden_size as i32;
        let mut launch = self.gpu.stream.launch_builder(&self.kernels.embedding);
        launch.arg(ids).arg(&self.embed).arg(x).arg(&hidden);
        launch_rows(&mut launch, tokens, 256)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_add_rms_norm(
        &self,
        x: &mut CudaSlice<f32>,
        delta: Option<&CudaSlice<bf16>>,
        rows: Option<&CudaSlice<i32>>,
        weight: &CudaSlice<f32>,
        out: &mut CudaSlice<bf16>,
        count: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let hidden = self.config.hidden_size as i32;
        let null = 0u64;
        let mut launch = self.gpu.stream.launch_builder(&self.kernels.add_rms_norm);
        launch.arg(x);
        match delta {
            Some(delta) => launch.arg(delta),
            None => launch.arg(&null),
        };
        match rows {
            Some(rows) => launch.arg(rows),
            None => launch.arg(&null),
        };
        launch.arg(weight).arg(out).arg(&hidden).arg(&eps);
        launch_rows(&mut launch, count, 256)
    }

    fn launch_qk_norm_rope(
        &self,
        qkv: &mut CudaSlice<bf16>,
        positions: &CudaSlice<i32>,
        layer: usize,
        tokens: usize,
        stride: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let c = &self.config;
        let heads = c.num_attention_heads as i32;
        let stride = stride as i64;
        let layer = &self.layers[layer];
        let mut launch = self.gpu.stream.launch_builder(&self.kernels.qk_norm_rope);
        launch
            .arg(qkv)
            .arg(positions)
            .arg(&layer.q_norm)
            .arg(&layer.k_norm)
            .arg(&self.inv_freq)
            .arg(&heads)
            .arg(&stride)
            .arg(&eps);
        let threads = (c.head_dim / 2).next_multiple_of(32) as u32;
        let config = LaunchConfig {
            grid_dim: (tokens as u32, (c.num_attention_heads + c.num_key_value_heads) as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match qk_norm_rope; the grid covers tokens x (heads + kv heads)
        // rows of head_dim within qkv's stride.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(config)?;
        }
        Ok(())
    }

    fn launch_silu_mul(
        &self,
        gate_up: &CudaSlice<bf16>,
        act: &mut CudaSlice<bf16>,
        tokens: usize,
        inter: usize,
    ) -> Result<(), GpuError> {
        let (inter_arg, n) = (inter as i32, (tokens * inter) as i64);
        let mut launch = self.gpu.stream.launch_builder(&self.kernels.silu_mul);
        launch.arg(gate_up).arg(act).arg(&inter_arg).arg(&n);
        launch_rows(&mut launch, (tokens * inter).div_ceil(256).min(65535), 256)
    }
}

/// Launch one block of `threads` per row.
fn launch_rows(
    launch: &mut kv_quant::cuda::cudarc::driver::LaunchArgs<'_>,
    rows: usize,
    threads: u32,
) -> Result<(), GpuError> {
    let config =
        LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: every caller pushes the arguments of its kernel in order, and its kernel touches only
    // the rows of the grid.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(config)?;
    }
    Ok(())
}

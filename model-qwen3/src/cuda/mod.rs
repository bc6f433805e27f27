//! The Qwen3 forward pass on an NVIDIA GPU: weights in bf16, GEMMs through cuBLAS (f32
//! accumulation), the residual stream in f32, this crate's kernels (`model.cu`) for the
//! embedding, the norms, q/k norm with RoPE and SiLU, and kv-cache's kernels for the paged cache
//! (store with quantize-on-write, attention reading INT8 or bf16 rows in place).
//!
//! Every buffer a step uses is allocated once, for the largest step ([`GpuLimits`]); inputs go
//! through pinned host memory; decode steps replay CUDA graphs (`graphs.rs`). Sampling without
//! top-k/top-p runs on the GPU ([`GpuQwen3::forward_sampled`]); otherwise logits come back to the
//! host in f32.
//!
//! Under tensor parallelism ([`GpuGroup`]) each GPU runs a [`GpuQwen3`] of its shard, in a thread
//! of its own, and the ranks exchange through NCCL: the embedding and the outputs of o_proj and
//! down_proj are summed over the ranks, and sampling picks among each rank's best token.

mod graphs;
mod nccl;
mod ops;
mod parallel;
mod step;

use half::bf16;
use nanovllm_cuda::cudarc::driver::{CudaSlice, PinnedHostSlice};
use nanovllm_cuda::{Gpu, GpuError};
use nanovllm_kv_cache::cuda::{AttentionQueries, CacheKernels, DecodeWorkspace, GpuKvCache};
use nanovllm_kv_quant::CacheDtype;

use crate::{ModelError, Qwen3Config, Qwen3Model, SeqInput};
use graphs::DecodeGraphs;
use nccl::{Nccl, RankExchange, sum_over_ranks};
use ops::Ops;
pub use parallel::GpuGroup;
pub use step::GpuLimits;
use step::{StagedInputs, StepInputs, StepShape};

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

/// The weights in GPU memory: bf16 matrices (Q/K/V and gate/up packed), f32 norms.
struct GpuWeights {
    embed: CudaSlice<bf16>,
    lm_head: Option<CudaSlice<bf16>>,
    norm: CudaSlice<f32>,
    inv_freq: CudaSlice<f32>,
    layers: Vec<GpuLayer>,
}

impl GpuWeights {
    fn upload(gpu: &Gpu, model: &Qwen3Model) -> Result<Self, GpuError> {
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
        Ok(GpuWeights {
            embed: up16(&contiguous(&model.embed_tokens))?,
            lm_head: model.lm_head.as_ref().map(|h| up16(&contiguous(h))).transpose()?,
            norm: up32(&model.norm)?,
            inv_freq: up32(&model.inv_freq())?,
            layers,
        })
    }
}

/// The activations of the largest step, kept across steps.
struct Activations {
    x: CudaSlice<f32>,
    normed: CudaSlice<bf16>,
    qkv: CudaSlice<bf16>,
    attended: CudaSlice<bf16>,
    delta: CudaSlice<bf16>,
    gate_up: CudaSlice<bf16>,
    act: CudaSlice<bf16>,
    last: CudaSlice<bf16>,
    logits: CudaSlice<f32>,
    sampled: CudaSlice<i32>,
    sampled_host: PinnedHostSlice<i32>,
    workspace: DecodeWorkspace,
}

impl Activations {
    fn new(gpu: &Gpu, c: &Qwen3Config, limits: &GpuLimits, vocab_rows: usize) -> Result<Self, GpuError> {
        let (t, seqs, stream) = (limits.max_tokens, limits.max_seqs, &gpu.stream);
        let (h, d, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        // SAFETY: the sampled tokens are written by the device before the host reads them.
        #[allow(unsafe_code)]
        let sampled_host = unsafe { gpu.ctx.alloc_pinned::<i32>(seqs) }?;
        Ok(Activations {
            x: stream.alloc_zeros(t * h)?,
            normed: stream.alloc_zeros(t * h)?,
            qkv: stream.alloc_zeros(t * c.qkv_size())?,
            attended: stream.alloc_zeros(t * c.num_attention_heads * d)?,
            delta: stream.alloc_zeros(t * h)?,
            gate_up: stream.alloc_zeros(t * 2 * inter)?,
            act: stream.alloc_zeros(t * inter)?,
            last: stream.alloc_zeros(seqs * h)?,
            logits: stream.alloc_zeros(seqs * vocab_rows)?,
            sampled: stream.alloc_zeros(seqs)?,
            sampled_host,
            workspace: DecodeWorkspace::new(gpu, t, seqs, c.num_attention_heads, d, limits.max_model_len)?,
        })
    }
}

/// How to sample one sequence's next token on the GPU: temperature (0: greedy), the request's
/// seed, and a per-token counter (its position), which together fix the noise; and the
/// truncation (`min_p`, `top_k`, `top_p`, as the engine's CPU sampler applies them).
#[derive(Debug, Clone, Copy)]
pub struct GpuSample {
    /// Softmax temperature; 0 takes the most likely token.
    pub temperature: f32,
    /// The request's seed.
    pub seed: u64,
    /// A counter unique to this token of the request (its position).
    pub step: u64,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: u32,
    /// Keep the most likely tokens up to this probability (1: all).
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the most likely one (0: all).
    pub min_p: f32,
}

impl GpuSample {
    /// A draw from softmax(logits / temperature), nothing truncated.
    pub fn new(temperature: f32, seed: u64, step: u64) -> Self {
        GpuSample { temperature, seed, step, top_k: 0, top_p: 1.0, min_p: 0.0 }
    }

    /// Whether the draw keeps only part of the distribution.
    pub fn truncates(&self) -> bool {
        self.temperature > 0.0 && (self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0)
    }
}

/// A Qwen3 model (or one rank's shard of it), its paged KV cache and the buffers of its steps on
/// the GPU.
pub struct GpuQwen3 {
    // Fields drop in this order: the graphs first, since they hold NCCL's captured work, which
    // the communicator (in `ranks`) waits for when it is torn down.
    graphs: DecodeGraphs,
    /// The other ranks, under tensor parallelism.
    ranks: Option<RankExchange>,
    ops: Ops,
    /// The token ids whose logits this rank computes.
    vocab: std::ops::Range<usize>,
    config: Qwen3Config,
    limits: GpuLimits,
    weights: GpuWeights,
    cache_kernels: CacheKernels,
    cache: GpuKvCache,
    inputs: StagedInputs,
    act: Activations,
}

impl std::fmt::Debug for GpuQwen3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuQwen3")
            .field("config", &self.config)
            .field("vocab", &self.vocab)
            .field("limits", &self.limits)
            .field("cache", &self.cache.layout)
            .field("decode_graphs", &self.graphs.batch_sizes_captured())
            .finish()
    }
}

fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&x| bf16::from_f32(x)).collect()
}

impl GpuQwen3 {
    /// Upload `model` and allocate the buffers of the largest step `limits` allows, then run that
    /// step once (padding only), so that cuBLAS has its workspace and the memory still free is
    /// what the KV cache may take. The cache itself comes with [`GpuQwen3::allocate_cache`]:
    /// blocks of `block_size` tokens in `dtype` (bf16 or int8). A model split across GPUs runs as
    /// a [`GpuGroup`].
    pub fn new(
        gpu: &Gpu,
        model: &Qwen3Model,
        dtype: CacheDtype,
        block_size: usize,
        limits: GpuLimits,
    ) -> Result<Self, GpuError> {
        if model.is_shard() {
            return Err(GpuError::Unsupported("a tensor-parallel shard outside a GpuGroup".into()));
        }
        let mut runner = Self::load(gpu, model, dtype, block_size, limits)?;
        runner.warm_up()?;
        Ok(runner)
    }

    /// Upload `model` (whole, or a rank's shard) and allocate the buffers of the largest step.
    fn load(
        gpu: &Gpu,
        model: &Qwen3Model,
        dtype: CacheDtype,
        block_size: usize,
        limits: GpuLimits,
    ) -> Result<Self, GpuError> {
        if limits.max_seqs == 0 || limits.max_model_len == 0 {
            return Err(GpuError::Unsupported(format!("limits of zero sequences or tokens: {limits:?}")));
        }
        let limits = GpuLimits { max_tokens: limits.max_tokens.max(limits.max_seqs), ..limits };
        let c = model.config().clone();
        let vocab = model.vocab_range();
        Ok(GpuQwen3 {
            ops: Ops::new(gpu, &c, vocab.clone())?,
            ranks: None,
            weights: GpuWeights::upload(gpu, model)?,
            cache_kernels: CacheKernels::new(gpu, dtype, c.head_dim, c.group_size(), block_size)?,
            cache: GpuKvCache::new(gpu, model.cache_layout(1, block_size), dtype)?,
            inputs: StagedInputs::new(gpu, &limits, block_size)?,
            act: Activations::new(gpu, &c, &limits, vocab.len())?,
            graphs: DecodeGraphs::default(),
            vocab,
            config: c,
            limits,
        })
    }

    /// Exchange with the other ranks through `nccl` from now on.
    fn connect(&mut self, nccl: Nccl) -> Result<(), GpuError> {
        self.ranks = Some(RankExchange::new(&self.ops.gpu, nccl, self.limits.max_seqs)?);
        Ok(())
    }

    /// Run the largest step once, on padding only.
    fn warm_up(&mut self) -> Result<(), GpuError> {
        let stream = self.ops.gpu.stream.clone();
        let warm_up = StepInputs::padding(self.limits.max_tokens, self.limits.max_seqs, 1);
        self.inputs.upload(&stream, &warm_up)?;
        self.enqueue_forward(StepShape::of(&warm_up))?;
        Ok(stream.synchronize()?)
    }

    /// Allocate the KV cache, `num_blocks` blocks, and capture the decode graphs (unless
    /// `limits.cuda_graphs` is off).
    pub fn allocate_cache(&mut self, num_blocks: usize) -> Result<(), GpuError> {
        let layout = nanovllm_kv_cache::CacheLayout { num_blocks, ..self.cache.layout };
        let dtype = self.cache.dtype;
        self.cache = GpuKvCache::new(&self.ops.gpu, layout, dtype)?;
        if self.limits.cuda_graphs {
            self.capture_decode_graphs()?;
        }
        Ok(self.ops.gpu.stream.synchronize()?)
    }

    /// Decode batch sizes captured in CUDA graphs (0 when eager), each at several table widths.
    pub fn decode_graphs(&self) -> usize {
        self.graphs.batch_sizes_captured()
    }

    /// The forward pass of [`Qwen3Model::forward`], on the GPU: same inputs, same outputs.
    pub fn forward(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let step = self.lay_out(seqs)?;
        let outputs = step.logit_rows.len();
        self.launch(step)?;
        let vocab = self.vocab.len();
        Ok(self.logits(outputs)?.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// The forward pass, then one token sampled on the GPU for each sequence that asks for
    /// logits (`samples` in the same order): only token ids come back to the host.
    pub fn forward_sampled(
        &mut self,
        seqs: &[SeqInput<'_>],
        samples: &[GpuSample],
    ) -> Result<Vec<u32>, ModelError> {
        let step = self.lay_out(seqs)?;
        check_samples(&step, samples)?;
        let rows = self.launch(step)?;
        Ok(self.sample(samples, rows)?)
    }

    /// The first `outputs` rows of logits (this rank's columns), on the host.
    fn logits(&self, outputs: usize) -> Result<Vec<f32>, GpuError> {
        if outputs == 0 {
            return Ok(Vec::new());
        }
        let logits = self.act.logits.slice(..outputs * self.vocab.len());
        Ok(self.ops.gpu.stream.clone_dtoh(&logits)?)
    }

    fn lay_out(&self, seqs: &[SeqInput<'_>]) -> Result<StepInputs, ModelError> {
        let kernels = &self.cache_kernels;
        let per_group =
            |prefill| if prefill { kernels.prefill_queries_per_group() } else { kernels.queries_per_group() };
        let layout = &self.cache.layout;
        StepInputs::new(seqs, per_group, self.config.vocab_size, layout.block_size, layout.num_blocks)
    }

    /// Queue `step`: a decode step replays the smallest graph that holds it, padded; any other
    /// step launches its kernels. Returns the logit rows computed (padding included).
    fn launch(&mut self, mut step: StepInputs) -> Result<usize, GpuError> {
        let stream = self.ops.gpu.stream.clone();
        if step.is_decode()
            && let Some((rows, table_width, graph)) =
                self.graphs.for_step(step.num_tokens(), step.table_width)
        {
            step.pad_decode(rows, table_width);
            self.inputs.upload(&stream, &step)?;
            graph.launch()?;
            return Ok(rows);
        }
        self.inputs.upload(&stream, &step)?;
        let shape = StepShape::of(&step);
        self.enqueue_forward(shape)?;
        Ok(shape.outputs)
    }

    /// Sample `rows` logit rows on the GPU and bring back the first `samples.len()` tokens.
    fn sample(&mut self, samples: &[GpuSample], rows: usize) -> Result<Vec<u32>, GpuError> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let stream = self.ops.gpu.stream.clone();
        self.inputs.upload_samples(&stream, samples, rows)?;
        let (ops, inputs, act) = (&self.ops, &self.inputs, &mut self.act);
        let (temperatures, seeds, steps) = (inputs.temperatures(), inputs.seeds(), inputs.steps());
        match &mut self.ranks {
            None => {
                let truncation = samples.iter().any(GpuSample::truncates).then(|| inputs.truncation());
                ops.sample(&act.logits, temperatures, seeds, steps, &mut act.sampled, None, truncation, rows)?
            }
            Some(_) if samples.iter().any(GpuSample::truncates) => {
                return Err(GpuError::Unsupported(
                    "top_k, top_p or min_p across tensor-parallel ranks (each holds a slice of the vocabulary): sample those rows from the logits".into(),
                ));
            }
            Some(ranks) => {
                let (ids, values) = (&mut ranks.candidate_ids, &mut ranks.candidate_values);
                ops.sample(&act.logits, temperatures, seeds, steps, ids, Some(values), None, rows)?;
                ranks.gather_candidates(rows)?;
                let world = ranks.nccl.world();
                ops.pick_best_shard(
                    &ranks.gathered_ids,
                    &ranks.gathered_values,
                    &mut act.sampled,
                    rows,
                    world,
                )?;
            }
        }
        let host = act.sampled_host.as_mut_slice()?;
        stream.memcpy_dtoh(&act.sampled.slice(..samples.len()), &mut host[..samples.len()])?;
        stream.synchronize()?;
        Ok(host[..samples.len()].iter().map(|&t| t as u32).collect())
    }

    /// Queue one forward pass of `shape` over the staged inputs: no allocation and no copy, so
    /// that it can be captured in a graph.
    fn enqueue_forward(&mut self, shape: StepShape) -> Result<(), GpuError> {
        let GpuQwen3 { ops, config: c, weights, cache_kernels, cache, inputs, act, ranks, .. } = self;
        let ranks = ranks.as_ref();
        let t = shape.tokens;
        let (h, d, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_size, kv_size) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let qkv_size = q_size + 2 * kv_size;
        let queries = AttentionQueries {
            block_tables: inputs.tables(),
            max_blocks: shape.table_width,
            context_lens: inputs.context_lens(),
            groups: inputs.groups(),
            group_tables: inputs.group_tables(),
            num_queries: t,
            num_groups: shape.groups,
        };
        ops.embedding(inputs.ids(), &weights.embed, &mut act.x, t)?;
        sum_over_ranks(ranks, act.x.slice_mut(..t * h))?;
        for (index, layer) in weights.layers.iter().enumerate() {
            let delta = (index > 0).then_some(&act.delta);
            ops.add_rms_norm(&mut act.x, delta, None, &layer.input_norm, &mut act.normed, t)?;
            ops.linear(&act.normed.slice(..), &layer.qkv, &mut act.qkv.slice_mut(..), t, qkv_size, h)?;
            ops.qk_norm_rope(
                &mut act.qkv,
                inputs.positions(),
                &layer.q_norm,
                &layer.k_norm,
                &weights.inv_freq,
                t,
                qkv_size,
            )?;
            let (key, value) = (act.qkv.slice(q_size..), act.qkv.slice(q_size + kv_size..));
            let (q, out, workspace) = (act.qkv.slice(..), &mut act.attended, &mut act.workspace);
            // SAFETY: the inputs were laid out by `StepInputs::new`, which refuses block ids
            // outside this cache and positions without a slot in their table, so every slot is
            // this cache's or -1 (padding), every context fits its table, groups ascend within
            // the step's tokens, and each group's table row exists.
            #[allow(unsafe_code)]
            unsafe {
                cache_kernels.store(&ops.gpu, cache, index, &key, &value, qkv_size, &inputs.slots(), t)?;
                if shape.prefill {
                    cache_kernels.prefill_attention(&ops.gpu, cache, index, &q, qkv_size, &queries, out)?;
                } else {
                    cache_kernels
                        .attention(&ops.gpu, cache, index, &q, qkv_size, &queries, workspace, out)?;
                }
            }
            ops.linear(&act.attended.slice(..), &layer.o_proj, &mut act.delta.slice_mut(..), t, h, q_size)?;
            sum_over_ranks(ranks, act.delta.slice_mut(..t * h))?;
            ops.add_rms_norm(&mut act.x, Some(&act.delta), None, &layer.post_norm, &mut act.normed, t)?;
            ops.linear(
                &act.normed.slice(..),
                &layer.gate_up,
                &mut act.gate_up.slice_mut(..),
                t,
                2 * inter,
                h,
            )?;
            ops.silu_mul(&act.gate_up, &mut act.act, t)?;
            ops.linear(&act.act.slice(..), &layer.down, &mut act.delta.slice_mut(..), t, h, inter)?;
            sum_over_ranks(ranks, act.delta.slice_mut(..t * h))?;
        }
        if shape.outputs == 0 {
            return Ok(());
        }
        let rows = Some(inputs.logit_rows());
        ops.add_rms_norm(&mut act.x, Some(&act.delta), rows, &weights.norm, &mut act.last, shape.outputs)?;
        let head = weights.lm_head.as_ref().unwrap_or(&weights.embed);
        ops.logits_gemm(&act.last, head, &mut act.logits, shape.outputs)
    }
}

/// One sampling spec per sequence that asks for logits.
fn check_samples(step: &StepInputs, samples: &[GpuSample]) -> Result<(), ModelError> {
    let outputs = step.logit_rows.len();
    if outputs != samples.len() {
        return Err(ModelError::Input(format!(
            "{} sampling specs for {outputs} sequences with logits",
            samples.len()
        )));
    }
    Ok(())
}

//! The Qwen3 forward pass on an NVIDIA GPU: weights in bf16, GEMMs through cuBLAS (f32
//! accumulation), the residual stream in f32, this crate's kernels (`model.cu`) for the
//! embedding, the norms, q/k norm with RoPE and SiLU, and kv-cache's kernels for the paged cache
//! (store with quantize-on-write, attention reading INT8 or bf16 rows in place).
//!
//! Every buffer a step uses is allocated once, for the largest step ([`GpuLimits`]); inputs go
//! through pinned host memory; decode steps replay CUDA graphs (`graphs.rs`). Sampling runs on the
//! GPU ([`GpuQwen3::forward_sampled`]: penalties, truncation, log-probabilities), or the logits
//! come back to the host in f32 ([`GpuQwen3::forward`]).
//!
//! Under tensor parallelism ([`GpuGroup`]) each GPU runs a [`GpuQwen3`] of its shard, in a thread
//! of its own, and the ranks exchange through NCCL: the embedding and the outputs of o_proj and
//! down_proj are summed over the ranks, and sampling picks among each rank's best token.

mod graphs;
mod nccl;
mod ops;
mod parallel;
mod step;
mod weights;

use half::bf16;
use nanovllm_cuda::cudarc::driver::{CudaSlice, PinnedHostSlice};
use nanovllm_cuda::{Gpu, GpuError, KernelSource};
use nanovllm_kv_cache::BlockId;
use nanovllm_kv_cache::cuda::{
    AttentionQueries, CacheKernelSources, CacheKernels, DecodeSplit, DecodeWorkspace, GpuKvCache,
    SplitPlanner,
};
use nanovllm_kv_quant::CacheDtype;

use crate::{LogitAdjustment, ModelError, Qwen3Config, Sampled, SeqInput, TokenLogprobs, WeightSource};
use graphs::DecodeGraphs;
use nccl::{Nccl, RankExchange, sum_over_ranks};
use ops::{Ops, SAMPLE_BLOCKS};
pub use parallel::GpuGroup;

/// Every kernel module a GPU model of `config` compiles with a `dtype` cache of `block_size`
/// slots per block: its own and the cache's. For checking that each compiles (with NVRTC alone,
/// no GPU) for the shapes the engine serves.
pub fn kernel_sources(
    config: &Qwen3Config,
    dtype: CacheDtype,
    block_size: usize,
) -> Result<Vec<KernelSource>, GpuError> {
    let cache = CacheKernelSources::new(dtype, config.head_dim, config.group_size(), block_size)?;
    Ok(std::iter::once(ops::source(config)).chain(cache.all().cloned()).collect())
}
pub use step::GpuLimits;
use step::{StagedInputs, StepInputs, StepShape};
use weights::GpuWeights;

/// A step queued by [`GpuQwen3::launch`].
struct Queued {
    /// The logit rows computed, padding included.
    rows: usize,
    /// The host's time to lay out padding (a replay) and upload the inputs.
    upload: std::time::Duration,
    /// Whether a decode graph was replayed (else the kernels were launched one by one).
    replayed: bool,
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
    /// Each piece's best token and score when a few rows are drawn in pieces of the vocabulary
    /// (`Ops::sample_pieces`): `[pieces][rows]`, fewer than `2 * SAMPLE_BLOCKS`.
    piece_ids: CudaSlice<i32>,
    piece_values: CudaSlice<f32>,
    sampled_host: PinnedHostSlice<i32>,
    /// The logits that adjustments replaced, put back after the draw.
    saved_logits: CudaSlice<f32>,
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
            piece_ids: stream.alloc_zeros(2 * SAMPLE_BLOCKS)?,
            piece_values: stream.alloc_zeros(2 * SAMPLE_BLOCKS)?,
            sampled_host,
            saved_logits: stream.alloc_zeros(1)?,
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
    /// Return the sampled token's log-probability and the `logprobs` most likely tokens' (from
    /// the raw logits, before adjustments and temperature).
    pub logprobs: Option<u32>,
}

impl GpuSample {
    /// A draw from softmax(logits / temperature), nothing truncated.
    pub fn new(temperature: f32, seed: u64, step: u64) -> Self {
        GpuSample { temperature, seed, step, top_k: 0, top_p: 1.0, min_p: 0.0, logprobs: None }
    }

    /// Whether the draw keeps only part of the distribution.
    pub fn truncates(&self) -> bool {
        self.temperature > 0.0 && (self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0)
    }
}

/// One step's draws on the GPU: each sampled row's [`GpuSample`] and its logit adjustments
/// (penalties and masks), kept back to back so that a batch is reused from step to step without
/// allocating.
#[derive(Debug, Clone, Default)]
pub struct SampleBatch {
    samples: Vec<GpuSample>,
    adjustments: Vec<LogitAdjustment>,
    /// Where each row's adjustments end in `adjustments`.
    ends: Vec<usize>,
}

impl SampleBatch {
    /// Empty the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.samples.clear();
        self.adjustments.clear();
        self.ends.clear();
    }

    /// Add the next row: its draw, and `adjust` appends its adjustments (each token once).
    pub fn push(&mut self, sample: GpuSample, adjust: impl FnOnce(&mut Vec<LogitAdjustment>)) {
        adjust(&mut self.adjustments);
        self.samples.push(sample);
        self.ends.push(self.adjustments.len());
    }

    /// The rows' draws, in order.
    pub fn samples(&self) -> &[GpuSample] {
        &self.samples
    }

    /// Whether any row needs more than a draw from its (truncated) softmax: adjustments or
    /// log-probabilities, which read whole rows of logits.
    pub fn needs_whole_rows(&self) -> bool {
        !self.adjustments.is_empty() || self.samples.iter().any(|s| s.logprobs.is_some())
    }

    /// Each adjustment with its row.
    fn adjustments_by_row(&self) -> impl Iterator<Item = (usize, &LogitAdjustment)> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .enumerate()
            .flat_map(move |(row, (start, &end))| self.adjustments[start..end].iter().map(move |a| (row, a)))
    }
}

impl From<&[GpuSample]> for SampleBatch {
    /// Draws without adjustments.
    fn from(samples: &[GpuSample]) -> Self {
        let mut batch = SampleBatch::default();
        for &sample in samples {
            batch.push(sample, |_| {});
        }
        batch
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
    /// How decode attention splits contexts over this GPU, for this cache and workspace.
    splits: SplitPlanner,
    inputs: StagedInputs,
    act: Activations,
    /// Host seconds from the start of each sampled step until its work was queued (laying out and
    /// uploading its inputs, launching), summed: the GPU waits through most of it.
    prepare_seconds: f64,
}

impl std::fmt::Debug for GpuQwen3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuQwen3")
            .field("config", &self.config)
            .field("vocab", &self.vocab)
            .field("limits", &self.limits)
            .field("cache", &self.cache.layout)
            .field("decode_graphs", &self.graphs.batch_sizes_planned())
            .finish()
    }
}

impl GpuQwen3 {
    /// Upload the weights of `source` (in bounded chunks: no host copy of the model) and allocate
    /// the buffers of the largest step `limits` allows, then run that step once (padding only),
    /// so that cuBLAS has its workspace and the memory still free is what the KV cache may take.
    /// The cache itself comes with [`GpuQwen3::allocate_cache`]: blocks of `block_size` tokens in
    /// `dtype` (bf16 or int8). A model split across GPUs runs as a [`GpuGroup`].
    pub fn new(
        gpu: &Gpu,
        source: &dyn WeightSource,
        dtype: CacheDtype,
        block_size: usize,
        limits: GpuLimits,
    ) -> Result<Self, GpuError> {
        let mut runner = Self::load(gpu, source, (0, 1), dtype, block_size, limits)?;
        let started = std::time::Instant::now();
        runner.warm_up()?;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "warm-up step (the largest, padding only)");
        Ok(runner)
    }

    /// Upload rank `rank` of `world`'s shard of `source` and allocate the buffers of the largest
    /// step.
    fn load(
        gpu: &Gpu,
        source: &dyn WeightSource,
        (rank, world): (usize, usize),
        dtype: CacheDtype,
        block_size: usize,
        limits: GpuLimits,
    ) -> Result<Self, GpuError> {
        if limits.max_seqs == 0 || limits.max_model_len == 0 {
            return Err(GpuError::Unsupported(format!("limits of zero sequences or tokens: {limits:?}")));
        }
        let limits = GpuLimits { max_tokens: limits.max_tokens.max(limits.max_seqs), ..limits };
        let c = source.config().shard(world);
        let vocab_part = c.vocab_size / world;
        let vocab = vocab_part * rank..vocab_part * (rank + 1);
        // Where start-up goes: the kernels (compiled, or read from the disk cache, and loaded), then
        // the weights.
        let started = std::time::Instant::now();
        if let Ok(sources) = kernel_sources(&c, dtype, block_size) {
            gpu.load_ahead(&sources);
        }
        let ops = Ops::new(gpu, &c, vocab.clone())?;
        let cache_kernels = CacheKernels::new(gpu, dtype, c.head_dim, c.group_size(), block_size)?;
        let kernels_seconds = started.elapsed().as_secs_f64();
        let weights = GpuWeights::upload(gpu, &ops, source, rank, world)?;
        tracing::info!(
            rank,
            kernels_seconds,
            weights_seconds = started.elapsed().as_secs_f64() - kernels_seconds,
            "kernels loaded and weights uploaded"
        );
        let cache = GpuKvCache::new(gpu, c.cache_layout(1, block_size), dtype)?;
        let act = Activations::new(gpu, &c, &limits, vocab.len())?;
        Ok(GpuQwen3 {
            ops,
            ranks: None,
            weights,
            splits: cache_kernels.split_planner(&cache, &act.workspace),
            cache_kernels,
            cache,
            inputs: StagedInputs::new(gpu, &limits, block_size)?,
            act,
            graphs: DecodeGraphs::default(),
            vocab,
            config: c,
            limits,
            prepare_seconds: 0.0,
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
        let mut warm_up = StepInputs::padding(self.limits.max_tokens, self.limits.max_seqs, 1);
        let split = self.decode_split(&mut warm_up);
        self.inputs.upload(&stream, &warm_up, &[])?;
        self.enqueue_forward(StepShape::of(&warm_up, split))?;
        Ok(stream.synchronize()?)
    }

    /// Allocate the KV cache, `num_blocks` blocks, and plan the decode graphs (unless
    /// `limits.cuda_graphs` is off), as wide as the longest sequence the cache holds: each is
    /// captured when a step first needs it, or by [`GpuQwen3::capture_decode_graphs`].
    pub fn allocate_cache(&mut self, num_blocks: usize) -> Result<(), GpuError> {
        let layout = nanovllm_kv_cache::CacheLayout { num_blocks, ..self.cache.layout };
        self.limits.max_model_len = self.limits.max_model_len.min(num_blocks * layout.block_size);
        let dtype = self.cache.dtype;
        self.cache = GpuKvCache::new(&self.ops.gpu, layout, dtype)?;
        if self.limits.cuda_graphs {
            let (max_seqs, max_model_len) = (self.limits.max_seqs, self.limits.max_model_len);
            self.graphs = DecodeGraphs::planned(&self.splits, max_seqs, max_model_len, layout.block_size);
        }
        Ok(self.ops.gpu.stream.synchronize()?)
    }

    /// Copy each (from, to) block of the KV cache, every layer: the partly filled blocks of
    /// forked sequences. Queued before the next step's work on the same stream.
    pub fn copy_blocks(&mut self, copies: &[(BlockId, BlockId)]) -> Result<(), GpuError> {
        for &(from, to) in copies {
            self.cache.copy_block(&self.ops.gpu, from as usize, to as usize)?;
        }
        Ok(())
    }

    /// Decode batch sizes replayed from CUDA graphs (0 when eager), each at several table widths,
    /// captured or to be captured on first use.
    pub fn decode_graphs(&self) -> usize {
        self.graphs.batch_sizes_planned()
    }

    /// The forward pass of [`Qwen3Model::forward`], on the GPU: same inputs, same outputs.
    pub fn forward(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let step = self.lay_out(seqs)?;
        let outputs = step.logit_rows.len();
        self.launch(step, &[])?;
        let vocab = self.vocab.len();
        Ok(self.logits(outputs)?.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// The forward pass, then one token sampled on the GPU for each sequence that asks for
    /// logits (`batch`'s rows in the same order): only token ids (and the log-probabilities asked
    /// for) come back to the host.
    pub fn forward_sampled(
        &mut self,
        seqs: &[SeqInput<'_>],
        batch: &SampleBatch,
    ) -> Result<Vec<Sampled>, ModelError> {
        let started = std::time::Instant::now();
        let step = self.lay_out(seqs)?;
        check_samples(&step, batch)?;
        let laid_out = started.elapsed();
        let queued = self.launch(step, batch.samples())?;
        let prepared = started.elapsed();
        self.prepare_seconds += prepared.as_secs_f64();
        // Where the preparation goes, a line a step at debug level (`RUST_LOG=nanovllm_qwen3=debug`,
        // summarized by scripts/prepare-times.py).
        tracing::debug!(
            graph = queued.replayed,
            lay_out_us = laid_out.as_micros() as u64,
            upload_us = queued.upload.as_micros() as u64,
            queue_us = (prepared - laid_out - queued.upload).as_micros() as u64,
            "step prepared"
        );
        Ok(self.sample(batch, queued.rows)?)
    }

    /// Host seconds spent preparing sampled steps until their work was queued, summed over this
    /// model's life (one GPU; a tensor-parallel group lays its steps out elsewhere).
    pub fn prepare_seconds(&self) -> f64 {
        self.prepare_seconds
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

    /// Queue `step`, its draws' `samples` uploaded with it (none when it returns logits): a decode
    /// step replays the smallest graph that holds it, padded (captured first if no step has needed
    /// it yet); any other step launches its kernels.
    fn launch(&mut self, mut step: StepInputs, samples: &[GpuSample]) -> Result<Queued, GpuError> {
        let stream = self.ops.gpu.stream.clone();
        let graph =
            if step.is_decode() { self.decode_graph(step.num_tokens(), step.table_width)? } else { None };
        let started = std::time::Instant::now();
        if let Some((rows, captured, graph)) = graph.and_then(|i| self.graphs.captured(i)) {
            let split = self.splits.replay(captured, step.num_tokens(), step.decode_context());
            step.geometry = split.geometry(step.table_width);
            step.pad_decode(rows);
            self.inputs.upload(&stream, &step, samples)?;
            let upload = started.elapsed();
            graph.launch()?;
            return Ok(Queued { rows, upload, replayed: true });
        }
        let split = self.decode_split(&mut step);
        self.inputs.upload(&stream, &step, samples)?;
        let upload = started.elapsed();
        let shape = StepShape::of(&step, split);
        self.enqueue_forward(shape)?;
        Ok(Queued { rows: shape.outputs, upload, replayed: false })
    }

    /// How decode attention splits `step`'s leading single queries when its kernels are launched
    /// one by one, written into the step's geometry.
    fn decode_split(&self, step: &mut StepInputs) -> DecodeSplit {
        let queries = step.single_queries.max(1);
        let split = self.splits.eager(queries, queries, step.decode_context());
        step.geometry = split.geometry(step.table_width);
        split
    }

    /// Sample `rows` logit rows on the GPU (their temperatures, seeds and counters uploaded with
    /// the step) and bring back the first `batch.samples().len()` tokens. Adjustments change the
    /// logits in place for the draw and are undone after it, so that log-probabilities come from
    /// the raw logits.
    fn sample(&mut self, batch: &SampleBatch, rows: usize) -> Result<Vec<Sampled>, GpuError> {
        let samples = batch.samples();
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let stream = self.ops.gpu.stream.clone();
        let adjusted = self.inputs.upload_draw_options(&self.ops.gpu, batch, rows, self.config.vocab_size)?;
        if self.act.saved_logits.len() < adjusted {
            self.act.saved_logits = stream.alloc_zeros(adjusted.next_power_of_two())?;
        }
        let (ops, inputs, act) = (&self.ops, &self.inputs, &mut self.act);
        let (temperatures, seeds, steps) = (&inputs.temperatures(), &inputs.seeds(), &inputs.steps());
        match &mut self.ranks {
            None => {
                let adjust = |act: &mut Activations, restore| match adjusted {
                    0 => Ok(()),
                    n => ops.adjust_logits(
                        &mut act.logits,
                        inputs.adjustments(),
                        &mut act.saved_logits,
                        n,
                        restore,
                    ),
                };
                adjust(act, false)?;
                let truncation = samples.iter().any(GpuSample::truncates).then(|| inputs.truncation());
                let pieces = if truncation.is_some() { 1 } else { ops.sample_pieces(rows) };
                if pieces == 1 {
                    let out = &mut act.sampled;
                    ops.sample(&act.logits, temperatures, seeds, steps, out, None, truncation, rows, 1)?;
                } else {
                    // A few rows: each drawn in pieces over more blocks, then the best piece kept.
                    let (ids, values) = (&mut act.piece_ids, &mut act.piece_values);
                    ops.sample(
                        &act.logits,
                        temperatures,
                        seeds,
                        steps,
                        ids,
                        Some(values),
                        None,
                        rows,
                        pieces,
                    )?;
                    ops.pick_best_shard(ids, values, &mut act.sampled, rows, pieces)?;
                }
                adjust(act, true)?;
            }
            Some(_) if samples.iter().any(GpuSample::truncates) || batch.needs_whole_rows() => {
                return Err(GpuError::Unsupported(
                    "top_k, top_p, min_p, penalties or log-probabilities across tensor-parallel ranks (each holds a slice of the vocabulary): sample those rows from the logits".into(),
                ));
            }
            Some(ranks) => {
                let (ids, values) = (&mut ranks.candidate_ids, &mut ranks.candidate_values);
                ops.sample(&act.logits, temperatures, seeds, steps, ids, Some(values), None, rows, 1)?;
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
        let logprobs = self.logprobs(samples)?;
        let act = &mut self.act;
        let host = act.sampled_host.as_mut_slice()?;
        stream.memcpy_dtoh(&act.sampled.slice(..samples.len()), &mut host[..samples.len()])?;
        stream.synchronize()?;
        let tokens = host[..samples.len()].iter().map(|&t| t as u32);
        Ok(match logprobs {
            None => tokens.map(|token| Sampled { token, logprobs: None }).collect(),
            Some(logprobs) => tokens
                .zip(logprobs)
                .map(|(token, logprobs)| Sampled {
                    token,
                    logprobs: logprobs.map(|(logprob, top)| TokenLogprobs { token, logprob, top }),
                })
                .collect(),
        })
    }

    /// The log-probabilities of the sampled tokens and the most likely ones, for the rows that
    /// ask for them (`None` when none does): queued after the draw, read back with the tokens.
    #[allow(clippy::type_complexity)]
    fn logprobs(
        &mut self,
        samples: &[GpuSample],
    ) -> Result<Option<Vec<Option<(f32, Vec<(u32, f32)>)>>>, GpuError> {
        let Some(widest) = samples.iter().filter_map(|s| s.logprobs).max() else { return Ok(None) };
        let widest = widest as usize;
        let (gpu, act) = (&self.ops.gpu, &mut self.act);
        let counts: Vec<i32> = samples.iter().map(|s| s.logprobs.map_or(-1, |n| n as i32)).collect();
        let counts = gpu.stream.clone_htod(&counts)?;
        let mut chosen = gpu.stream.alloc_zeros::<f32>(samples.len())?;
        let mut top_ids = gpu.stream.alloc_zeros::<i32>(samples.len() * widest.max(1))?;
        let mut top_logprobs = gpu.stream.alloc_zeros::<f32>(samples.len() * widest.max(1))?;
        self.ops.token_logprobs(
            &act.logits,
            &act.sampled,
            &counts,
            widest,
            &mut chosen,
            &mut top_ids,
            &mut top_logprobs,
            samples.len(),
        )?;
        let (chosen, top_ids, top_logprobs) = (
            gpu.stream.clone_dtoh(&chosen)?,
            gpu.stream.clone_dtoh(&top_ids)?,
            gpu.stream.clone_dtoh(&top_logprobs)?,
        );
        Ok(Some(
            samples
                .iter()
                .enumerate()
                .map(|(row, s)| {
                    s.logprobs.map(|n| {
                        let top = (row * widest..row * widest + n as usize)
                            .map(|i| (top_ids[i] as u32, top_logprobs[i]))
                            .collect();
                        (chosen[row], top)
                    })
                })
                .collect(),
        ))
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
            geometry: inputs.geometry(),
            context_lens: inputs.context_lens(),
            groups: inputs.groups(),
            group_tables: inputs.group_tables(),
            num_queries: t,
            num_groups: shape.groups,
        };
        ops.embedding(&inputs.ids(), &weights.embed, &mut act.x, t)?;
        sum_over_ranks(ranks, act.x.slice_mut(..t * h))?;
        for (index, layer) in weights.layers.iter().enumerate() {
            let delta = (index > 0).then_some(&act.delta);
            ops.add_rms_norm(&mut act.x, delta, None, &layer.input_norm, &mut act.normed, t)?;
            ops.linear(&act.normed.slice(..), &layer.qkv, &mut act.qkv.slice_mut(..), t, qkv_size, h)?;
            ops.qk_norm_rope(
                &mut act.qkv,
                &inputs.positions(),
                &layer.q_norm,
                &layer.k_norm,
                (&weights.inv_freq, weights.rope_scale),
                t,
                qkv_size,
            )?;
            let (key, value) = (act.qkv.slice(q_size..), act.qkv.slice(q_size + kv_size..));
            let (q, out, workspace) = (act.qkv.slice(..), &mut act.attended, &mut act.workspace);
            // SAFETY: the inputs were laid out by `StepInputs::new`, which refuses block ids
            // outside this cache and positions without a slot in their table, so every slot is
            // this cache's or -1 (padding), every context fits its table, groups ascend within
            // the step's tokens, and each group's table row exists; `launch` (or the warm-up)
            // wrote the geometry of the step's tables and of a split whose `shape.decode.splits`
            // splits cover every context (`SplitPlanner::eager` and `replay`).
            #[allow(unsafe_code)]
            unsafe {
                cache_kernels.store(&ops.gpu, cache, index, &key, &value, qkv_size, &inputs.slots(), t)?;
                if shape.prefill {
                    // A mixed step: its decode rows split their contexts in the decode kernel;
                    // only the prompt chunks take the prefill kernel's tiles of 64 rows.
                    let (decodes, chunks) = queries.split_single_queries(shape.single_queries)?;
                    if decodes.num_groups > 0 {
                        let split = shape.decode;
                        cache_kernels.attention(
                            &ops.gpu, cache, index, &q, qkv_size, &decodes, split, workspace, out,
                        )?;
                    }
                    cache_kernels.prefill_attention(&ops.gpu, cache, index, &q, qkv_size, &chunks, out)?;
                } else {
                    let split = shape.decode;
                    cache_kernels
                        .attention(&ops.gpu, cache, index, &q, qkv_size, &queries, split, workspace, out)?;
                }
            }
            ops.linear(&act.attended.slice(..), &layer.o_proj, &mut act.delta.slice_mut(..), t, h, q_size)?;
            sum_over_ranks(ranks, act.delta.slice_mut(..t * h))?;
            ops.add_rms_norm(&mut act.x, Some(&act.delta), None, &layer.post_norm, &mut act.normed, t)?;
            ops.gate_up_silu(&act.normed.slice(..), &layer.gate_up, &mut act.gate_up, &mut act.act, t)?;
            ops.linear(&act.act.slice(..), &layer.down, &mut act.delta.slice_mut(..), t, h, inter)?;
            sum_over_ranks(ranks, act.delta.slice_mut(..t * h))?;
        }
        if shape.outputs == 0 {
            return Ok(());
        }
        let rows = inputs.logit_rows();
        let rows = Some(&rows);
        ops.add_rms_norm(&mut act.x, Some(&act.delta), rows, &weights.norm, &mut act.last, shape.outputs)?;
        let head = weights.lm_head.as_ref().unwrap_or(&weights.embed);
        ops.logits_gemm(&act.last, head, &mut act.logits, shape.outputs)
    }
}

/// One sampling spec per sequence that asks for logits.
fn check_samples(step: &StepInputs, batch: &SampleBatch) -> Result<(), ModelError> {
    let outputs = step.logit_rows.len();
    if outputs != batch.samples.len() {
        return Err(ModelError::Input(format!(
            "{} sampling specs for {outputs} sequences with logits",
            batch.samples.len()
        )));
    }
    Ok(())
}

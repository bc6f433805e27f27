//! One step's inputs: laid out on the host ([`StepInputs`]), then copied through pinned memory
//! into a device buffer that lives as long as the model ([`StagedInputs`]), so that a step allocates
//! nothing on the device and a captured CUDA graph finds its inputs at the same addresses. Every
//! input of a step and its draws' temperatures, seeds and counters go in one copy: each copy is a
//! few microseconds of the host's time and a transfer the GPU waits for before the step's kernels
//! (twelve copies took 30-40 us of a 1.3 ms batch-1 step on an H100).

use std::sync::Arc;

use bytemuck::Pod;
use nanovllm_cuda::cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, CudaView, DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};
use nanovllm_cuda::{Gpu, GpuError};
use nanovllm_kv_cache::cuda::DecodeSplit;

use super::{GpuSample, SampleBatch};
use crate::forward::{lay_out, logit_rows};
use crate::{ModelError, SeqInput};

/// The largest step a [`GpuQwen3`](super::GpuQwen3) takes: it sizes the buffers it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuLimits {
    /// Tokens computed in one step (`max_num_batched_tokens`, and at least `max_seqs`).
    pub max_tokens: usize,
    /// Sequences in one step (`max_num_seqs`): block-table rows, logit rows, and the largest
    /// decode batch captured in a CUDA graph.
    pub max_seqs: usize,
    /// The longest sequence: the width of the block tables and the attention workspace's splits.
    pub max_model_len: usize,
    /// Replay decode steps from CUDA graphs; `false` launches every kernel of every step (vLLM's
    /// `enforce_eager`).
    pub cuda_graphs: bool,
}

/// A host buffer in pinned memory and its device twin, of a fixed capacity.
struct Staged<T: DeviceRepr> {
    host: PinnedHostSlice<T>,
    device: CudaSlice<T>,
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy> Staged<T> {
    fn new(gpu: &Gpu, capacity: usize) -> Result<Self, GpuError> {
        let capacity = capacity.max(1);
        // SAFETY: the pinned buffer is zeroed before anything reads it; T is valid as zero bits.
        #[allow(unsafe_code)]
        let mut host = unsafe { gpu.ctx.alloc_pinned::<T>(capacity) }?;
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::write_bytes(host.as_mut_ptr()?, 0, capacity);
        }
        Ok(Staged { host, device: gpu.stream.alloc_zeros(capacity)? })
    }

    fn capacity(&self) -> usize {
        self.device.len()
    }

    /// Queue the copy of `values` to the start of the device buffer. The caller makes sure the
    /// previous copy from the host side has finished ([`StagedInputs::copied`]).
    fn upload(&mut self, stream: &Arc<CudaStream>, values: &[T], what: &str) -> Result<(), GpuError> {
        let host = self.host.as_mut_slice()?;
        if values.len() > host.len() {
            return Err(GpuError::Unsupported(format!(
                "a step with {} {what}; the buffers were sized for {}",
                values.len(),
                host.len()
            )));
        }
        host[..values.len()].copy_from_slice(values);
        stream.memcpy_htod(&host[..values.len()], &mut self.device.slice_mut(..values.len()))?;
        Ok(())
    }
}

/// Each of `rows` output rows' draw: `samples`, then greedy draws for the padding rows of a graph,
/// whose tokens are ignored.
fn padded_draws(samples: &[GpuSample], rows: usize) -> impl Iterator<Item = GpuSample> + '_ {
    let pad = GpuSample::new(0.0, 0, 0);
    samples.iter().copied().chain(std::iter::repeat(pad)).take(rows.max(samples.len()))
}

/// Write `values` at byte `at` of `host`; the caller checked that they fit.
fn put<T: Pod>(host: &mut [u8], at: usize, values: &[T]) {
    let bytes: &[u8] = bytemuck::cast_slice(values);
    host[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A step's inputs on the host, flattened token by token.
#[derive(Debug, Default, Clone)]
pub(super) struct StepInputs {
    pub(super) ids: Vec<i32>,
    pub(super) positions: Vec<i32>,
    /// Cache slot of each token; -1: a padding token, not stored.
    pub(super) slots: Vec<i64>,
    /// Causal context of each token (position + 1; 0 for padding).
    pub(super) context_lens: Vec<i32>,
    /// Each attention group's first token, then the token count.
    pub(super) groups: Vec<i32>,
    /// The sequence (row of `tables`) each group reads.
    pub(super) group_tables: Vec<i32>,
    /// `[sequences][table_width]` block ids.
    pub(super) tables: Vec<i32>,
    pub(super) table_width: usize,
    /// The tables' width and decode attention's split length, as the kernels read them
    /// ([`DecodeSplit::geometry`]): set when the step is launched, by the split it runs with.
    pub(super) geometry: [i32; 2],
    /// The token whose logits each output row takes.
    pub(super) logit_rows: Vec<i32>,
    /// Some sequence computes more than one token: attention runs the prefill kernel.
    pub(super) prefill: bool,
    /// The leading sequences that compute one token each (a mixed step's decode rows, which the
    /// scheduler places first): the first groups, of one query each, which attention runs through
    /// the decode kernel even when the rest of the step is prefill.
    pub(super) single_queries: usize,
}

impl StepInputs {
    /// Lay out `seqs`: consecutive tokens of one sequence (a prefill chunk) attend in groups of up
    /// to `per_group(prefill)`, which share every K/V row they read; a decode token is a group of
    /// one. Every block a table names must be one of the cache's `num_blocks` (the kernels index
    /// the cache with them unchecked), and every position must have a slot in its table.
    pub(super) fn new(
        seqs: &[SeqInput<'_>],
        per_group: impl Fn(bool) -> usize,
        vocab: usize,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self, ModelError> {
        let tokens = lay_out(seqs, vocab, block_size)?;
        for (index, seq) in seqs.iter().enumerate() {
            if let Some(&block) = seq.block_table.blocks().iter().find(|&&b| b as usize >= num_blocks) {
                return Err(ModelError::Input(format!(
                    "sequence {index}'s block table names block {block}; the cache has {num_blocks}"
                )));
            }
        }
        let table_width = seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(1).max(1);
        let prefill = seqs.iter().any(|s| s.tokens.len() > 1);
        let single_queries = seqs.iter().take_while(|s| s.tokens.len() == 1).count();
        let per_group = per_group(prefill);
        let mut step = StepInputs { table_width, prefill, single_queries, ..Default::default() };
        for seq in seqs {
            let blocks = seq.block_table.blocks();
            step.tables.extend(blocks.iter().map(|&b| b as i32));
            step.tables.resize(step.tables.len() + table_width - blocks.len(), 0);
        }
        for (i, token) in tokens.iter().enumerate() {
            step.ids.push(token.id as i32);
            step.positions.push(token.pos as i32);
            step.slots.push(token.slot as i64);
            step.context_lens.push(token.pos as i32 + 1);
            let group_start = step.groups.last().map_or(0, |&g| g as usize);
            if i == 0 || tokens[i - 1].seq != token.seq || i - group_start == per_group {
                step.groups.push(i as i32);
                step.group_tables.push(token.seq as i32);
            }
        }
        step.groups.push(tokens.len() as i32);
        step.logit_rows = logit_rows(seqs).into_iter().map(|r| r as i32).collect();
        Ok(step)
    }

    pub(super) fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn num_groups(&self) -> usize {
        self.group_tables.len()
    }

    /// A decode step: each token is its own group and its own output, so it can replay a graph.
    pub(super) fn is_decode(&self) -> bool {
        let n = self.num_tokens();
        self.num_groups() == n && self.logit_rows.len() == n
    }

    /// The longest context of the leading single queries, which decode attention reads.
    pub(super) fn decode_context(&self) -> usize {
        self.context_lens[..self.single_queries].iter().max().map_or(0, |&c| c as usize)
    }

    /// Pad a decode step to `rows` tokens, the batch size a graph was captured with. Padding
    /// tokens store nothing (slot -1) and read nothing (context 0, table row 0); the tables stay as
    /// wide as the step's, which the kernels read from [`StepInputs::geometry`].
    pub(super) fn pad_decode(&mut self, rows: usize) {
        let n = self.num_tokens();
        self.ids.resize(rows, 0);
        self.positions.resize(rows, 0);
        self.slots.resize(rows, -1);
        self.context_lens.resize(rows, 0);
        self.groups = (0..=rows as i32).collect();
        self.group_tables.resize(rows, 0);
        self.logit_rows = (0..rows as i32).collect();
        self.single_queries = rows;
        debug_assert!(rows >= n);
    }

    /// `rows` padding tokens in `rows` groups with `outputs` logit rows: the largest step, run once
    /// to warm up cuBLAS and measure memory, and the shape graphs are captured with.
    pub(super) fn padding(rows: usize, outputs: usize, table_width: usize) -> Self {
        StepInputs {
            ids: vec![0; rows],
            positions: vec![0; rows],
            slots: vec![-1; rows],
            context_lens: vec![0; rows],
            groups: (0..=rows as i32).collect(),
            group_tables: vec![0; rows],
            tables: vec![0; table_width],
            table_width,
            geometry: [table_width as i32, 16],
            logit_rows: (0..outputs as i32).map(|r| r.min(rows as i32 - 1)).collect(),
            prefill: false,
            single_queries: rows,
        }
    }
}

/// Where each input of a step lies in the buffer they are copied through together (byte offsets,
/// each a multiple of 16): the arrays of one value per token for up to `tokens` tokens, those of
/// one per sequence for up to `seqs`, the block tables last, so that a step copies only the rows
/// of its tables it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InputLayout {
    tokens: usize,
    seqs: usize,
    ids: usize,
    positions: usize,
    context_lens: usize,
    group_tables: usize,
    groups: usize,
    slots: usize,
    logit_rows: usize,
    geometry: usize,
    temperatures: usize,
    seeds: usize,
    steps: usize,
    tables: usize,
}

impl InputLayout {
    fn new(tokens: usize, seqs: usize) -> Self {
        let mut end = 0;
        let mut region = |values: usize, size: usize| {
            let at = end;
            end = (at + values * size).next_multiple_of(16);
            at
        };
        InputLayout {
            tokens,
            seqs,
            ids: region(tokens, 4),
            positions: region(tokens, 4),
            context_lens: region(tokens, 4),
            group_tables: region(tokens, 4),
            groups: region(tokens + 1, 4),
            slots: region(tokens, 8),
            logit_rows: region(seqs, 4),
            geometry: region(2, 4),
            temperatures: region(seqs, 4),
            seeds: region(seqs, 8),
            steps: region(seqs, 8),
            tables: region(0, 4),
        }
    }

    /// The layout of a step of `tokens` tokens, for a model of `limits`. Steps of at most
    /// `max_seqs` tokens (every decode step, and so every graph) share one layout, so that a graph
    /// finds its inputs where it was captured; longer ones are laid out for their own tokens.
    fn of_step(tokens: usize, limits: &GpuLimits) -> Self {
        InputLayout::new(tokens.max(limits.max_seqs), limits.max_seqs)
    }
}

/// The device side of every step input, and the per-row sampling parameters.
pub(super) struct StagedInputs {
    /// Recorded after each batch of copies: the host side may be rewritten once it completes.
    copied: CudaEvent,
    /// Every input of a step and its draws' temperatures, seeds and counters, as `layout` places
    /// them.
    packed: Staged<u8>,
    /// The layout of the last step uploaded.
    layout: InputLayout,
    limits: GpuLimits,
    /// Entries of the widest block tables: every sequence as long as `max_model_len`.
    table_capacity: usize,
    top_ks: Staged<i32>,
    top_ps: Staged<f32>,
    log_min_ps: Staged<f32>,
    adjustments: StagedAdjustments,
}

impl StagedInputs {
    pub(super) fn new(gpu: &Gpu, limits: &GpuLimits, block_size: usize) -> Result<Self, GpuError> {
        let seqs = limits.max_seqs;
        let table_capacity = seqs * limits.max_model_len.div_ceil(block_size);
        let widest = InputLayout::of_step(limits.max_tokens, limits);
        Ok(StagedInputs {
            copied: gpu.ctx.new_event(None)?,
            packed: Staged::new(gpu, widest.tables + 4 * table_capacity)?,
            layout: InputLayout::of_step(0, limits),
            limits: *limits,
            table_capacity,
            top_ks: Staged::new(gpu, seqs)?,
            top_ps: Staged::new(gpu, seqs)?,
            log_min_ps: Staged::new(gpu, seqs)?,
            adjustments: StagedAdjustments::new(gpu, seqs)?,
        })
    }

    /// Queue the copy of `step` to the device, with the temperature, seed and counter of each of
    /// its output rows' draws (`samples`, one per row but padding rows, which draw greedily and
    /// are ignored; none when the step returns logits), in one transfer.
    pub(super) fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        step: &StepInputs,
        samples: &[GpuSample],
    ) -> Result<(), GpuError> {
        let too_many = |what: &str, count: usize, room: usize| {
            GpuError::Unsupported(format!("a step with {count} {what}; the buffers were sized for {room}"))
        };
        let (tokens, rows) = (step.num_tokens(), step.logit_rows.len());
        if tokens > self.limits.max_tokens {
            return Err(too_many("tokens", tokens, self.limits.max_tokens));
        }
        if rows.max(samples.len()) > self.limits.max_seqs {
            return Err(too_many("sequences with logits", rows.max(samples.len()), self.limits.max_seqs));
        }
        if step.tables.len() > self.table_capacity {
            return Err(too_many("block-table entries", step.tables.len(), self.table_capacity));
        }
        let layout = InputLayout::of_step(tokens, &self.limits);
        self.copied.synchronize()?;
        let host = self.packed.host.as_mut_slice()?;
        put(host, layout.ids, &step.ids);
        put(host, layout.positions, &step.positions);
        put(host, layout.context_lens, &step.context_lens);
        put(host, layout.group_tables, &step.group_tables);
        put(host, layout.groups, &step.groups);
        put(host, layout.slots, &step.slots);
        put(host, layout.logit_rows, &step.logit_rows);
        put(host, layout.geometry, &step.geometry);
        if !samples.is_empty() {
            for (row, sample) in padded_draws(samples, rows).enumerate() {
                put(host, layout.temperatures + 4 * row, &[sample.temperature]);
                put(host, layout.seeds + 8 * row, &[sample.seed]);
                put(host, layout.steps + 8 * row, &[sample.step]);
            }
        }
        put(host, layout.tables, &step.tables);
        let end = layout.tables + 4 * step.tables.len();
        stream.memcpy_htod(&self.packed.host.as_slice()?[..end], &mut self.packed.device.slice_mut(..end))?;
        self.layout = layout;
        Ok(self.copied.record(stream)?)
    }

    /// Queue the copies of what truncating or adjusting draws need beyond the step's upload: each
    /// output row's truncation (when some row truncates; `rows` counts padding too), and the
    /// adjustments of tokens in the vocabulary of `vocab` ids (others cannot be drawn); returns
    /// how many adjustments.
    pub(super) fn upload_draw_options(
        &mut self,
        gpu: &Gpu,
        batch: &SampleBatch,
        rows: usize,
        vocab: usize,
    ) -> Result<usize, GpuError> {
        let samples = batch.samples();
        let stream = &gpu.stream;
        self.copied.synchronize()?;
        if samples.iter().any(GpuSample::truncates) {
            let padded = || padded_draws(samples, rows);
            // ln(min_p) on the host, as the CPU sampler computes it, so both keep the same tokens.
            let log_min_p = |p: f32| if p > 0.0 { p.ln() } else { f32::NEG_INFINITY };
            let top_ks: Vec<i32> = padded().map(|s| s.top_k.min(i32::MAX as u32) as i32).collect();
            let top_ps: Vec<f32> = padded().map(|s| s.top_p).collect();
            let log_min_ps: Vec<f32> = padded().map(|s| log_min_p(s.min_p)).collect();
            self.top_ks.upload(stream, &top_ks, "sampled sequences")?;
            self.top_ps.upload(stream, &top_ps, "sampled sequences")?;
            self.log_min_ps.upload(stream, &log_min_ps, "sampled sequences")?;
        }
        let adjusted = self.adjustments.upload(gpu, batch, vocab)?;
        self.copied.record(stream)?;
        Ok(adjusted)
    }

    /// The region of `count` values of `T` at byte `offset` of the device buffer.
    fn view<T>(&self, offset: usize, count: usize) -> CudaView<'_, T> {
        let bytes = self.packed.device.slice(offset..offset + count * std::mem::size_of::<T>());
        // SAFETY: every region holds plain values of the type its accessor reads (i32, i64, f32 or
        // u64), starts at a multiple of 16 bytes of an allocation aligned at least as much, and
        // lies within the buffer (`InputLayout` fits every layout in the widest one's size).
        #[allow(unsafe_code)]
        unsafe { bytes.transmute(count) }.expect("an input region holds its values")
    }

    pub(super) fn ids(&self) -> CudaView<'_, i32> {
        self.view(self.layout.ids, self.layout.tokens)
    }
    pub(super) fn positions(&self) -> CudaView<'_, i32> {
        self.view(self.layout.positions, self.layout.tokens)
    }
    pub(super) fn slots(&self) -> CudaView<'_, i64> {
        self.view(self.layout.slots, self.layout.tokens)
    }
    pub(super) fn context_lens(&self) -> CudaView<'_, i32> {
        self.view(self.layout.context_lens, self.layout.tokens)
    }
    pub(super) fn groups(&self) -> CudaView<'_, i32> {
        self.view(self.layout.groups, self.layout.tokens + 1)
    }
    pub(super) fn group_tables(&self) -> CudaView<'_, i32> {
        self.view(self.layout.group_tables, self.layout.tokens)
    }
    pub(super) fn geometry(&self) -> CudaView<'_, i32> {
        self.view(self.layout.geometry, 2)
    }
    pub(super) fn tables(&self) -> CudaView<'_, i32> {
        self.view(self.layout.tables, self.table_capacity)
    }
    pub(super) fn logit_rows(&self) -> CudaView<'_, i32> {
        self.view(self.layout.logit_rows, self.layout.seqs)
    }
    pub(super) fn temperatures(&self) -> CudaView<'_, f32> {
        self.view(self.layout.temperatures, self.layout.seqs)
    }
    pub(super) fn seeds(&self) -> CudaView<'_, u64> {
        self.view(self.layout.seeds, self.layout.seqs)
    }
    pub(super) fn steps(&self) -> CudaView<'_, u64> {
        self.view(self.layout.steps, self.layout.seqs)
    }
    /// The adjustments [`StagedInputs::upload_draw_options`] left.
    pub(super) fn adjustments(&self) -> &StagedAdjustments {
        &self.adjustments
    }
    /// Each row's top_k, top_p and ln(min_p), as [`StagedInputs::upload_draw_options`] left them.
    pub(super) fn truncation(&self) -> Truncation<'_> {
        Truncation {
            top_ks: &self.top_ks.device,
            top_ps: &self.top_ps.device,
            log_min_ps: &self.log_min_ps.device,
        }
    }
}

/// The logit adjustments of a step on the device, one entry each: its row, token, repetition
/// penalty and subtrahend. The buffers grow with the longest list seen.
pub(super) struct StagedAdjustments {
    rows: Staged<i32>,
    tokens: Staged<i32>,
    repetitions: Staged<f32>,
    subtracts: Staged<f32>,
    /// The lists laid out on the host, reused.
    host: (Vec<i32>, Vec<i32>, Vec<f32>, Vec<f32>),
}

impl StagedAdjustments {
    fn new(gpu: &Gpu, capacity: usize) -> Result<Self, GpuError> {
        Ok(StagedAdjustments {
            rows: Staged::new(gpu, capacity)?,
            tokens: Staged::new(gpu, capacity)?,
            repetitions: Staged::new(gpu, capacity)?,
            subtracts: Staged::new(gpu, capacity)?,
            host: Default::default(),
        })
    }

    /// The device buffers: rows, tokens, repetition penalties, subtrahends.
    pub(super) fn device(&self) -> (&CudaSlice<i32>, &CudaSlice<i32>, &CudaSlice<f32>, &CudaSlice<f32>) {
        (&self.rows.device, &self.tokens.device, &self.repetitions.device, &self.subtracts.device)
    }

    /// Queue the copy of `batch`'s adjustments of tokens below `vocab`; returns how many. The
    /// caller makes sure the previous copies have finished.
    fn upload(&mut self, gpu: &Gpu, batch: &SampleBatch, vocab: usize) -> Result<usize, GpuError> {
        let (rows, tokens, repetitions, subtracts) = &mut self.host;
        rows.clear();
        tokens.clear();
        repetitions.clear();
        subtracts.clear();
        for (row, a) in batch.adjustments_by_row().filter(|(_, a)| (a.token as usize) < vocab) {
            rows.push(row as i32);
            tokens.push(a.token as i32);
            repetitions.push(a.repetition);
            subtracts.push(a.subtract);
        }
        let n = rows.len();
        if n == 0 {
            return Ok(0);
        }
        if n > self.rows.capacity() {
            *self = StagedAdjustments {
                host: std::mem::take(&mut self.host),
                ..Self::new(gpu, n.next_power_of_two())?
            };
        }
        let (rows, tokens, repetitions, subtracts) = &self.host;
        let stream = &gpu.stream;
        self.rows.upload(stream, rows, "adjustments")?;
        self.tokens.upload(stream, tokens, "adjustments")?;
        self.repetitions.upload(stream, repetitions, "adjustments")?;
        self.subtracts.upload(stream, subtracts, "adjustments")?;
        Ok(n)
    }
}

/// The truncation of each sampled row on the device: top_k (0: all), top_p, ln(min_p).
#[derive(Debug, Clone, Copy)]
pub(super) struct Truncation<'a> {
    pub(super) top_ks: &'a CudaSlice<i32>,
    pub(super) top_ps: &'a CudaSlice<f32>,
    pub(super) log_min_ps: &'a CudaSlice<f32>,
}

/// The sizes a queued forward pass runs with, and how decode attention splits its contexts; its
/// inputs are in [`StagedInputs`].
#[derive(Debug, Clone, Copy)]
pub(super) struct StepShape {
    pub(super) tokens: usize,
    pub(super) groups: usize,
    pub(super) outputs: usize,
    pub(super) prefill: bool,
    pub(super) single_queries: usize,
    pub(super) decode: DecodeSplit,
}

impl StepShape {
    pub(super) fn of(step: &StepInputs, decode: DecodeSplit) -> Self {
        StepShape {
            tokens: step.num_tokens(),
            groups: step.num_groups(),
            outputs: step.logit_rows.len(),
            prefill: step.prefill,
            single_queries: step.single_queries,
            decode,
        }
    }
}

#[cfg(test)]
mod tests {
    use nanovllm_kv_cache::BlockManager;

    use super::*;

    const BLOCK_SIZE: usize = 4;
    /// Prefill groups of 4 queries, decode groups of 1, as the kernels of a GQA model of 2.
    fn per_group(prefill: bool) -> usize {
        if prefill { 4 } else { 1 }
    }

    #[test]
    fn a_prefill_step_groups_consecutive_positions_of_one_sequence() {
        let mut blocks = BlockManager::new(8, BLOCK_SIZE).unwrap();
        let (long, one) = ([1u32, 2, 3, 4, 5, 6], [7u32]);
        let (long_table, _) = blocks.allocate(&long).unwrap(); // blocks 0, 1
        let (one_table, _) = blocks.allocate(&one).unwrap(); // block 2
        let seqs = [
            SeqInput { tokens: &long, start: 0, block_table: &long_table, logits: 1 },
            SeqInput { tokens: &one, start: 0, block_table: &one_table, logits: 1 },
        ];
        let step = StepInputs::new(&seqs, per_group, 16, BLOCK_SIZE, 8).unwrap();
        assert!(step.prefill && !step.is_decode());
        assert_eq!(step.ids, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(step.positions, [0, 1, 2, 3, 4, 5, 0]);
        assert_eq!(step.slots, [0, 1, 2, 3, 4, 5, 8]);
        assert_eq!(step.context_lens, [1, 2, 3, 4, 5, 6, 1]);
        // Four positions of the long prompt, its last two, then the other sequence.
        assert_eq!(step.groups, [0, 4, 6, 7]);
        assert_eq!(step.group_tables, [0, 0, 1]);
        assert_eq!((step.table_width, step.tables.as_slice()), (2, &[0, 1, 2, 0][..]));
        assert_eq!(step.logit_rows, [5, 6]);
        assert_eq!(step.single_queries, 0);
    }

    #[test]
    fn a_mixed_step_counts_its_leading_decode_rows() {
        let mut blocks = BlockManager::new(8, BLOCK_SIZE).unwrap();
        let prompts: [&[u32]; 4] = [&[1, 2, 3, 4, 5], &[6, 7], &[8, 9, 10, 11], &[12]];
        let tables: Vec<_> = prompts.iter().map(|p| blocks.allocate(p).unwrap().0).collect();
        // Two decode rows, a prompt chunk, then a one-token chunk after it.
        let seqs = [
            SeqInput { tokens: &prompts[0][4..], start: 4, block_table: &tables[0], logits: 1 },
            SeqInput { tokens: &prompts[1][1..], start: 1, block_table: &tables[1], logits: 1 },
            SeqInput { tokens: &prompts[2][..3], start: 0, block_table: &tables[2], logits: 0 },
            SeqInput { tokens: prompts[3], start: 0, block_table: &tables[3], logits: 1 },
        ];
        let step = StepInputs::new(&seqs, per_group, 16, BLOCK_SIZE, 8).unwrap();
        assert!(step.prefill && !step.is_decode());
        assert_eq!(step.single_queries, 2);
        // The leading rows are groups of one: the decode kernel's queries 0 and 1.
        assert_eq!(step.groups, [0, 1, 2, 5, 6]);
        assert_eq!(step.group_tables, [0, 1, 2, 3]);
        // Decode attention reads the decode rows' contexts alone (positions 4 and 1).
        assert_eq!(step.decode_context(), 5);
    }

    #[test]
    fn a_decode_step_pads_to_a_graph_shape_that_stores_and_reads_nothing() {
        let mut blocks = BlockManager::new(8, BLOCK_SIZE).unwrap();
        let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5, 6], &[7], &[8, 9, 10]];
        let tables: Vec<_> = prompts.iter().map(|p| blocks.allocate(p).unwrap().0).collect(); // [0, 1], [2], [3]
        let seqs: Vec<SeqInput> = prompts
            .iter()
            .zip(&tables)
            .map(|(p, table)| SeqInput {
                tokens: &p[p.len() - 1..],
                start: p.len() - 1,
                block_table: table,
                logits: 1,
            })
            .collect();
        let mut step = StepInputs::new(&seqs, per_group, 16, BLOCK_SIZE, 8).unwrap();
        assert!(!step.prefill && step.is_decode());
        assert_eq!(step.decode_context(), 6);
        step.pad_decode(4);
        assert_eq!(step.ids, [6, 7, 10, 0]);
        assert_eq!(step.slots, [5, 8, 14, -1]);
        assert_eq!(step.context_lens, [6, 1, 3, 0]);
        assert_eq!(step.groups, [0, 1, 2, 3, 4]);
        assert_eq!(step.group_tables, [0, 1, 2, 0]);
        // The tables keep the step's width: a graph reads it from the device.
        assert_eq!((step.table_width, step.tables.as_slice()), (2, &[0, 1, 2, 0, 3, 0][..]));
        assert_eq!(step.logit_rows, [0, 1, 2, 3]);
    }

    #[test]
    fn a_padding_step_has_no_slot_and_no_context() {
        let step = StepInputs::padding(5, 3, 2);
        assert!(step.slots.iter().all(|&s| s == -1) && step.context_lens.iter().all(|&c| c == 0));
        assert_eq!(
            (step.num_tokens(), step.num_groups(), step.logit_rows.as_slice()),
            (5, 5, &[0, 1, 2][..])
        );
        assert_eq!(step.tables.len(), 2);
    }

    /// The regions of a layout in order: (offset, bytes).
    fn regions(layout: &InputLayout) -> [(usize, usize); 11] {
        let (t, q) = (layout.tokens, layout.seqs);
        [
            (layout.ids, 4 * t),
            (layout.positions, 4 * t),
            (layout.context_lens, 4 * t),
            (layout.group_tables, 4 * t),
            (layout.groups, 4 * (t + 1)),
            (layout.slots, 8 * t),
            (layout.logit_rows, 4 * q),
            (layout.geometry, 8),
            (layout.temperatures, 4 * q),
            (layout.seeds, 8 * q),
            (layout.steps, 8 * q),
        ]
    }

    #[test]
    fn a_layouts_regions_are_aligned_apart_and_before_the_tables() {
        let limits = GpuLimits { max_tokens: 1000, max_seqs: 37, max_model_len: 4096, cuda_graphs: true };
        for tokens in [0, 1, 36, 37, 38, 999, 1000] {
            let layout = InputLayout::of_step(tokens, &limits);
            assert!(layout.tokens >= tokens && layout.seqs == limits.max_seqs);
            let regions = regions(&layout);
            for pair in regions.windows(2) {
                let ((at, bytes), (next, _)) = (pair[0], pair[1]);
                assert!(at.is_multiple_of(16) && at + bytes <= next, "{tokens} tokens: {regions:?}");
            }
            let (last, bytes) = regions[regions.len() - 1];
            assert!(last + bytes <= layout.tables && layout.tables.is_multiple_of(16));
        }
    }

    #[test]
    fn decode_steps_share_one_layout_that_fits_the_widest() {
        let limits = GpuLimits { max_tokens: 512, max_seqs: 64, max_model_len: 4096, cuda_graphs: true };
        let graphs = InputLayout::of_step(limits.max_seqs, &limits);
        // Every step a graph may replay or capture (at most max_seqs rows) finds the same regions.
        assert!((0..=limits.max_seqs).all(|rows| InputLayout::of_step(rows, &limits) == graphs));
        // Longer steps move the tables later, never past the widest step's, whose size the buffer is.
        let widest = InputLayout::of_step(limits.max_tokens, &limits);
        let tables = (limits.max_seqs..=limits.max_tokens).map(|t| InputLayout::of_step(t, &limits).tables);
        assert!(tables.clone().zip(tables.skip(1)).all(|(a, b)| a <= b && b <= widest.tables));
    }
}

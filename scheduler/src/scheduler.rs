//! The continuous-batching policy: which sequences run in the next model step.

use std::collections::{HashMap, VecDeque};

use nanovllm_kv_cache::{BlockId, BlockManager};

use crate::{FinishReason, SamplingParams, ScheduleError, SeqId, Sequence, Status, StopReason};

/// Limits of the scheduler and the cache it manages.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Sequences in one step, and running at once (nano-vllm and vLLM: 512).
    pub max_num_seqs: usize,
    /// Tokens computed in one step, prefill and decode alike; longer prefills are split into
    /// chunks (nano-vllm: 16384).
    pub max_num_batched_tokens: usize,
    /// Longest sequence, prompt plus generated tokens (the model's context length or less).
    pub max_model_len: usize,
    /// Blocks in the KV cache.
    pub num_blocks: usize,
    /// Slots per block (nano-vllm: 256).
    pub block_size: usize,
    /// The model's end-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
    /// How prefill and decode share steps.
    pub step_policy: StepPolicy,
}

/// How prefill and decode share steps: for throughput, or for the time between tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepPolicy {
    /// nano-vllm's: a step prefills whenever a prompt is waiting and decodes otherwise. The
    /// fewest steps for a batch given at once, but each arriving prompt holds every running
    /// sequence back for a whole prefill.
    #[default]
    PrefillFirst,
    /// Sarathi-Serve's stall-free batching (vLLM's chunked prefill): every running sequence
    /// decodes in every step, and prompts are prefilled beside them, at most
    /// `max_prefill_tokens` plus [`StepPolicy::PREFILL_TOKENS_PER_DECODE`] per decoding sequence
    /// while any sequence decodes (`max_num_batched_tokens` when none does), so an arriving prompt
    /// delays the running ones by one bounded chunk.
    Mixed {
        /// Prompt tokens in a step that decodes one sequence.
        max_prefill_tokens: usize,
    },
}

impl StepPolicy {
    /// Prompt tokens a mixed step takes for each sequence it decodes, beyond `max_prefill_tokens`.
    /// A decode step's time grows with its batch (each sequence's attention), so the chunk that
    /// delays its tokens by a bounded share of a step grows too; without this, a step of 256
    /// streams would admit one 1,024-token prompt every two steps and the batch would drain.
    pub const PREFILL_TOKENS_PER_DECODE: usize = 8;

    /// Prompt tokens a step that decodes `decodes` sequences may compute, within `max_batched`.
    fn prefill_budget(&self, decodes: usize, max_batched: usize) -> usize {
        match *self {
            StepPolicy::Mixed { max_prefill_tokens } if decodes > 0 => {
                let tokens = max_prefill_tokens + Self::PREFILL_TOKENS_PER_DECODE * decodes;
                tokens.min(max_batched.saturating_sub(decodes))
            }
            _ => max_batched,
        }
    }
}

impl SchedulerConfig {
    /// nano-vllm's limits for a cache of `num_blocks` blocks of `block_size`.
    pub fn new(num_blocks: usize, block_size: usize, max_model_len: usize) -> Self {
        SchedulerConfig {
            max_num_seqs: 512,
            max_num_batched_tokens: 16384,
            max_model_len,
            num_blocks,
            block_size,
            eos_token_ids: Vec::new(),
            step_policy: StepPolicy::PrefillFirst,
        }
    }
}

/// What a step does: prefill steps compute prompts (in chunks), decode steps one token each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Prompt tokens, possibly in chunks, possibly after a prefix-cache hit (and, under
    /// [`StepPolicy::Mixed`], the running sequences' decode tokens beside them).
    Prefill,
    /// One new token per sequence.
    Decode,
}

/// One sequence's share of a step: compute the K/V of tokens `start..start + num_tokens`, and
/// draw `samples` tokens from the logits of the last of them: its next token, and at the end of
/// the prefill of a request with `n` samples, its siblings' first tokens too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The sequence.
    pub id: SeqId,
    /// First token to compute; earlier ones are read from the cache.
    pub start: usize,
    /// Tokens to compute.
    pub num_tokens: usize,
    /// Tokens drawn: 0 for a chunk short of the sequence's end, 1, or `n` when a request's prefill
    /// ends and its siblings fork.
    pub samples: usize,
}

/// The sequences of one model step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Prefill or decode.
    pub phase: Phase,
    /// The sequences, in the order the model sees them: the decoding ones first.
    pub seqs: Vec<ScheduledSeq>,
    /// How many of `seqs`, from the first, decode one token each: all of a decode step's, none
    /// of a prefill-first prefill step's.
    pub decodes: usize,
}

impl Batch {
    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Tokens the model computes in this step.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_tokens).sum()
    }

    /// Tokens of prompts (or of preempted sequences recomputed) in this step: all but the decodes.
    pub fn num_prefill_tokens(&self) -> usize {
        self.num_tokens() - self.decodes
    }

    /// Tokens drawn in this step.
    pub fn num_samples(&self) -> usize {
        self.seqs.iter().map(|s| s.samples).sum()
    }
}

/// nano-vllm's scheduler: prefill first, decode otherwise (or both in one step, under
/// [`StepPolicy::Mixed`]), preempting the newest running sequence (to be recomputed later) when
/// blocks run out. Requests that could never run are refused when added, so one bad request
/// never stalls the others.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    running: VecDeque<SeqId>,
    next_id: SeqId,
    num_preemptions: usize,
    /// Siblings not forked yet of the running sequences: the places in `max_num_seqs` they hold.
    reserved_seqs: usize,
    /// The forks of the last step, for the engine to copy their partly filled blocks.
    forks: Vec<Fork>,
}

/// A sibling forked from its parent at the end of the parent's prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    /// The parent.
    pub parent: SeqId,
    /// The new sequence.
    pub child: SeqId,
    /// Its place among the parent's samples (1 to n - 1; the parent is 0).
    pub index: usize,
    /// A block to copy in the KV cache (from, to): the parent's partly filled last block, which
    /// the child gets a copy of; `None` when the prompt fills whole blocks, or when no block was
    /// free and the child waits to be prefilled from the prefix cache instead.
    pub copy: Option<(BlockId, BlockId)>,
}

impl Scheduler {
    /// A scheduler with an empty cache of `config.num_blocks` blocks.
    pub fn new(config: SchedulerConfig) -> Result<Self, ScheduleError> {
        let max_prefill_tokens = match config.step_policy {
            StepPolicy::PrefillFirst => config.max_num_batched_tokens,
            StepPolicy::Mixed { max_prefill_tokens } => max_prefill_tokens,
        };
        for (field, value) in [
            ("max_num_seqs", config.max_num_seqs),
            ("max_num_batched_tokens", config.max_num_batched_tokens),
            ("max_model_len", config.max_model_len),
            ("max_prefill_tokens", max_prefill_tokens),
        ] {
            if value == 0 {
                return Err(ScheduleError::InvalidConfig { field, value });
            }
        }
        let blocks = BlockManager::new(config.num_blocks, config.block_size)?;
        Ok(Scheduler {
            config,
            blocks,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: VecDeque::new(),
            next_id: 0,
            num_preemptions: 0,
            reserved_seqs: 0,
            forks: Vec::new(),
        })
    }

    /// Queue a request, or refuse it (alone) if it could never complete.
    pub fn add(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<SeqId, ScheduleError> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(ScheduleError::EmptyPrompt);
        }
        let total = prompt.len().saturating_add(params.max_tokens);
        if total > self.config.max_model_len {
            return Err(ScheduleError::TooLong {
                prompt_len: prompt.len(),
                max_tokens: params.max_tokens,
                total,
                max_model_len: self.config.max_model_len,
            });
        }
        if params.n > self.config.max_num_seqs {
            return Err(ScheduleError::TooManySamples {
                n: params.n,
                max_num_seqs: self.config.max_num_seqs,
            });
        }
        let needed_blocks = self.blocks.blocks_for(total);
        if needed_blocks > self.blocks.num_blocks() {
            return Err(ScheduleError::NeverFits {
                tokens: total,
                needed_blocks,
                block_size: self.blocks.block_size(),
                total_blocks: self.blocks.num_blocks(),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.seqs.insert(id, Sequence::new(id, prompt, params));
        self.waiting.push_back(id);
        Ok(id)
    }

    /// Whether every request added has finished.
    pub fn is_finished(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// A sequence that has not finished yet.
    pub fn sequence(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// The block manager, for the cache geometry and its statistics.
    pub fn block_manager(&self) -> &BlockManager {
        &self.blocks
    }

    /// The limits this scheduler runs with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Drop every request, running or waiting, releasing their blocks (Ctrl-C). Returns their ids.
    pub fn abort_all(&mut self) -> Vec<SeqId> {
        let ids: Vec<SeqId> = self.running.drain(..).chain(self.waiting.drain(..)).collect();
        self.reserved_seqs = 0;
        for id in &ids {
            if let Some(mut seq) = self.seqs.remove(id) {
                self.blocks.deallocate(&mut seq.block_table);
            }
        }
        ids
    }

    /// End a running or waiting sequence now (its text reached a stop string, or it was
    /// aborted), releasing its blocks; `None` if it has already finished or never existed.
    pub fn finish(&mut self, id: SeqId, reason: FinishReason, stop: Option<StopReason>) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        if seq.status == Status::Running {
            self.reserved_seqs -= seq.pending_siblings;
        }
        self.running.retain(|&other| other != id);
        self.waiting.retain(|&other| other != id);
        self.blocks.deallocate(&mut seq.block_table);
        seq.status = Status::Finished;
        seq.finish_reason = Some(reason);
        seq.stop_reason = stop;
        Some(seq)
    }

    /// Forget cached prefixes of freed blocks (after the cache was written outside the scheduler).
    pub fn reset_prefix_cache(&mut self) {
        self.blocks.reset_prefix_cache();
    }

    /// Sequences preempted so far.
    pub fn num_preemptions(&self) -> usize {
        self.num_preemptions
    }

    /// Sequences holding blocks.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Sequences queued without blocks.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Choose the next step. Prefill first: unfinished prefills and new prompts, otherwise one
    /// decode token for each running sequence. Mixed: the decode tokens, and prefill chunks beside
    /// them. Empty when nothing can run.
    pub fn schedule(&mut self) -> Batch {
        let max_batched = self.config.max_num_batched_tokens;
        let mut seqs = match self.config.step_policy {
            StepPolicy::PrefillFirst => Vec::new(),
            StepPolicy::Mixed { .. } => self.schedule_decode(),
        };
        let decodes = seqs.len();
        let budget = self.config.step_policy.prefill_budget(decodes, max_batched);
        seqs.extend(self.schedule_prefill(budget, decodes));
        if seqs.len() > decodes {
            return Batch { phase: Phase::Prefill, seqs, decodes };
        }
        if decodes == 0 {
            seqs = self.schedule_decode();
        }
        Batch { phase: Phase::Decode, decodes: seqs.len(), seqs }
    }

    /// Record a step's results: `sampled` holds the tokens each scheduled sequence draws
    /// (`samples` of them), in batch order; a sequence drawing several forks its siblings, which
    /// get the others ([`Scheduler::forks`]). Returns the sequences that finished, which leave the
    /// scheduler.
    pub fn postprocess(&mut self, batch: &Batch, sampled: &[u32]) -> Result<Vec<Sequence>, ScheduleError> {
        if sampled.len() != batch.num_samples() {
            return Err(ScheduleError::StepOutput { expected: batch.num_samples(), got: sampled.len() });
        }
        self.forks.clear();
        let mut sampled = sampled.iter().copied();
        let mut finished = Vec::new();
        for item in &batch.seqs {
            let seq = self.seqs.get_mut(&item.id).expect("scheduled sequences are live");
            seq.num_computed_tokens = item.start + item.num_tokens;
            self.blocks.register_computed(&mut seq.block_table, &seq.token_ids, seq.num_computed_tokens);
            if item.samples == 0 {
                continue;
            }
            // Siblings fork before any token is added, while the parent holds its blocks.
            let mut ids = vec![item.id];
            if item.samples > 1 {
                let parent = seq.clone();
                ids.extend((1..item.samples).map(|index| self.fork(&parent, index)));
            }
            for (id, token) in ids.into_iter().zip(sampled.by_ref()) {
                let seq = self.seqs.get_mut(&id).expect("scheduled and forked sequences are live");
                seq.token_ids.push(token);
                if let Some((reason, stop)) = finish_reason(seq, token, &self.config.eos_token_ids) {
                    seq.finish_reason = Some(reason);
                    seq.stop_reason = stop;
                    seq.status = Status::Finished;
                    self.blocks.deallocate(&mut seq.block_table);
                    finished.push(id);
                }
            }
        }
        self.running.retain(|id| !finished.contains(id));
        self.waiting.retain(|id| !finished.contains(id));
        Ok(finished.iter().map(|id| self.seqs.remove(id).expect("finished sequences are live")).collect())
    }

    /// The forks of the last step, in the order of their samples.
    pub fn forks(&self) -> &[Fork] {
        &self.forks
    }

    /// Fork sibling `index` of `parent`, whose prompt's K/V are computed: it shares the parent's
    /// full blocks and gets a copy of the partly filled one, and runs next to it; when no block
    /// is free for the copy it waits, to be prefilled from the prefix cache.
    fn fork(&mut self, parent: &Sequence, index: usize) -> SeqId {
        let id = self.next_id;
        self.next_id += 1;
        let mut child = Sequence::new(id, parent.prompt().to_vec(), parent.params.clone());
        child.pending_siblings = 0;
        let copy = match self.blocks.fork(&parent.block_table, parent.prompt_len) {
            Ok((table, copy)) => {
                child.block_table = table;
                child.num_cached_tokens = parent.num_cached_tokens;
                child.cached_prompt_tokens = parent.cached_prompt_tokens;
                child.num_computed_tokens = parent.prompt_len;
                child.status = Status::Running;
                self.running.push_back(id);
                copy
            }
            Err(_) => {
                self.waiting.push_front(id);
                None
            }
        };
        let parent_seq = self.seqs.get_mut(&parent.id).expect("forking sequences are live");
        parent_seq.pending_siblings -= 1;
        self.reserved_seqs -= 1;
        self.seqs.insert(id, child);
        self.forks.push(Fork { parent: parent.id, child: id, index, copy });
        id
    }

    /// Continue chunked prefills, then admit waiting sequences while blocks, the token `budget`
    /// and `max_num_seqs` (beside the step's `decodes`) allow; the last one admitted may be
    /// chunked. A chunked prefill that leaves a single token is finished by the next decode step,
    /// which computes exactly that token.
    fn schedule_prefill(&mut self, mut budget: usize, decodes: usize) -> Vec<ScheduledSeq> {
        let max_items = self.config.max_num_seqs - decodes;
        let mut items = Vec::new();
        for &id in &self.running {
            let seq = &self.seqs[&id];
            if is_prefilling(seq) && budget > 0 && items.len() < max_items {
                items.push(chunk(seq, &mut budget));
            }
        }
        while let Some(&id) = self.waiting.front() {
            let seq = self.seqs.get_mut(&id).expect("waiting sequences are live");
            if budget == 0
                || items.len() >= max_items
                || self.running.len() + self.reserved_seqs + 1 + seq.pending_siblings
                    > self.config.max_num_seqs
            {
                break;
            }
            let Ok((table, cached)) = self.blocks.allocate(&seq.token_ids) else { break };
            seq.block_table = table;
            seq.num_cached_tokens = cached;
            seq.cached_prompt_tokens.get_or_insert(cached.min(seq.prompt_len));
            seq.num_computed_tokens = cached;
            seq.status = Status::Running;
            self.reserved_seqs += seq.pending_siblings;
            items.push(chunk(seq, &mut budget));
            self.waiting.pop_front();
            self.running.push_back(id);
        }
        items
    }

    /// One token for each running sequence that is not prefilling, oldest first, within
    /// `max_num_seqs` and the token budget; when blocks run out, preempt the newest (or the
    /// sequence itself when it is the only one left).
    fn schedule_decode(&mut self) -> Vec<ScheduledSeq> {
        let limit = self.config.max_num_seqs.min(self.config.max_num_batched_tokens);
        let mut items = Vec::new();
        let mut scheduled = VecDeque::new();
        while items.len() < limit {
            let Some(id) = self.running.pop_front() else { break };
            if is_prefilling(&self.seqs[&id]) {
                scheduled.push_back(id);
                continue;
            }
            let len = self.seqs[&id].len();
            loop {
                let seq = self.seqs.get_mut(&id).expect("running sequences are live");
                if self.blocks.may_append(&mut seq.block_table, len).is_ok() {
                    // A prefill whose last token is left to a decode step forks there.
                    let samples = 1 + seq.pending_siblings;
                    items.push(ScheduledSeq { id, start: len - 1, num_tokens: 1, samples });
                    scheduled.push_back(id);
                    break;
                }
                match self.running.pop_back() {
                    Some(victim) => self.preempt(victim),
                    None => {
                        self.preempt(id);
                        break;
                    }
                }
            }
        }
        scheduled.append(&mut self.running);
        self.running = scheduled;
        items
    }

    /// Release a sequence's blocks and queue it first, to be prefilled again from its tokens.
    fn preempt(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("preempted sequences are live");
        self.reserved_seqs -= seq.pending_siblings;
        self.blocks.deallocate(&mut seq.block_table);
        seq.status = Status::Waiting;
        seq.num_cached_tokens = 0;
        seq.num_computed_tokens = 0;
        self.waiting.push_front(id);
        self.num_preemptions += 1;
        tracing::debug!(
            seq = id,
            preemptions = self.num_preemptions,
            "KV cache full: preempted, to be recomputed"
        );
    }
}

/// Whether a running sequence has more than one token left to compute (its prompt, or what a
/// preemption made it recompute); the last one is computed by a decode.
fn is_prefilling(seq: &Sequence) -> bool {
    seq.num_computed_tokens + 1 < seq.len()
}

/// The next prefill chunk of `seq`, as much as `budget` allows.
fn chunk(seq: &Sequence, budget: &mut usize) -> ScheduledSeq {
    let remaining = seq.len() - seq.num_computed_tokens;
    let num_tokens = remaining.min(*budget);
    *budget -= num_tokens;
    let samples = if num_tokens == remaining { 1 + seq.pending_siblings } else { 0 };
    ScheduledSeq { id: seq.id, start: seq.num_computed_tokens, num_tokens, samples }
}

fn finish_reason(
    seq: &Sequence,
    token: u32,
    eos_token_ids: &[u32],
) -> Option<(FinishReason, Option<StopReason>)> {
    let params = &seq.params;
    let generated = seq.completion().len();
    // The first `min_tokens` tokens do not stop it (the sampler does not draw stop tokens there).
    if generated > params.min_tokens {
        if params.stop_token_ids.contains(&token) {
            return Some((FinishReason::Stop, Some(StopReason::Token(token))));
        }
        if !params.ignore_eos && eos_token_ids.contains(&token) {
            return Some((FinishReason::Stop, None));
        }
    }
    (generated >= params.max_tokens).then_some((FinishReason::Length, None))
}

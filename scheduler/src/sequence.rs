//! One request as the scheduler tracks it.

use nanovllm_kv_cache::BlockTable;

use crate::SamplingParams;

/// Identifies a request for its whole life, across preemptions.
pub type SeqId = u64;

/// Where a sequence is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Queued, holding no blocks (new, or preempted and waiting to be recomputed).
    Waiting,
    /// Holding blocks: being prefilled or decoded.
    Running,
    /// Done; its blocks are released.
    Finished,
}

/// Why a sequence stopped, as vLLM's `finish_reason` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced an EOS or stop token, or its text a stop string.
    Stop,
    /// It produced `max_tokens` tokens.
    Length,
    /// It was aborted before it finished.
    Abort,
}

impl FinishReason {
    /// `"stop"`, `"length"` or `"abort"`.
    pub const fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// What ended a request that finished with [`FinishReason::Stop`], other than EOS (vLLM's
/// `stop_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// One of its `stop_token_ids`.
    Token(u32),
    /// One of its `stop` strings.
    Text(String),
}

/// A request: its tokens so far, its place in the KV cache, and how to sample it.
#[derive(Debug, Clone)]
pub struct Sequence {
    /// This request's id.
    pub id: SeqId,
    /// Where it is in its life.
    pub status: Status,
    /// Prompt tokens followed by generated tokens.
    pub token_ids: Vec<u32>,
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Leading tokens whose K/V came from the prefix cache at the last admission.
    pub num_cached_tokens: usize,
    /// Prompt tokens that came from the prefix cache at its first admission (what vLLM reports
    /// as `usage.prompt_tokens_details.cached_tokens`; a preemption's recompute does not change
    /// it); `None` until admitted.
    pub cached_prompt_tokens: Option<usize>,
    /// Leading tokens whose K/V are in the cache (cached or computed).
    pub num_computed_tokens: usize,
    /// The blocks holding its K/V.
    pub block_table: BlockTable,
    /// How to sample it and when to stop.
    pub params: SamplingParams,
    /// Set once it has finished.
    pub finish_reason: Option<FinishReason>,
    /// The stop token or string that ended it, if one did.
    pub stop_reason: Option<StopReason>,
    /// Siblings (`n - 1`) still to be forked from it when its prefill ends, their first tokens
    /// drawn from the same logits; 0 once forked.
    pub pending_siblings: usize,
}

impl Sequence {
    pub(crate) fn new(id: SeqId, prompt: Vec<u32>, params: SamplingParams) -> Self {
        Sequence {
            id,
            pending_siblings: params.n.saturating_sub(1),
            status: Status::Waiting,
            prompt_len: prompt.len(),
            token_ids: prompt,
            num_cached_tokens: 0,
            cached_prompt_tokens: None,
            num_computed_tokens: 0,
            block_table: BlockTable::default(),
            params,
            finish_reason: None,
            stop_reason: None,
        }
    }

    /// Prompt plus generated tokens.
    pub fn len(&self) -> usize {
        self.token_ids.len()
    }

    /// Never true: a sequence has at least one prompt token.
    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty()
    }

    /// The prompt's tokens.
    pub fn prompt(&self) -> &[u32] {
        &self.token_ids[..self.prompt_len]
    }

    /// The generated tokens.
    pub fn completion(&self) -> &[u32] {
        &self.token_ids[self.prompt_len..]
    }

    /// The last token (the input of the next decode step).
    pub fn last_token(&self) -> u32 {
        *self.token_ids.last().expect("a sequence has at least one token")
    }
}

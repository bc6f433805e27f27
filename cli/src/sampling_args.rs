//! The sampling flags `generate` and `bench` share, with vLLM's names.

use clap::Args;
use nanovllm::SamplingParams;

#[derive(Args, Clone, Default)]
pub(crate) struct SamplingArgs {
    /// Sampling temperature (0: greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens (-1: all).
    #[arg(long)]
    top_k: Option<i64>,
    /// Nucleus sampling: keep the most likely tokens up to this probability, in (0, 1].
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the most likely one, in [0, 1].
    #[arg(long)]
    min_p: Option<f32>,
    /// Subtracted from the logit of every token already generated, in [-2, 2].
    #[arg(long)]
    presence_penalty: Option<f32>,
    /// Subtracted from a token's logit per time it was generated, in [-2, 2].
    #[arg(long)]
    frequency_penalty: Option<f32>,
    /// Above 1 discourages tokens of the prompt and the output (1: none).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Also report each token's log-probability and the N most likely tokens' (at most 20).
    #[arg(long, value_name = "N")]
    logprobs: Option<usize>,
}

impl SamplingArgs {
    /// These flags over `defaults`.
    pub(crate) fn over(&self, defaults: SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: match self.top_k {
                Some(k) if k < 0 => None,
                Some(k) => Some(k as usize),
                None => defaults.top_k,
            },
            top_p: self.top_p.unwrap_or(defaults.top_p),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            logprobs: self.logprobs.or(defaults.logprobs),
            ..defaults
        }
    }
}

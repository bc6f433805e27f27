//! How one request wants its tokens chosen and when it stops.

use crate::ScheduleError;

/// Most top log-probabilities a request may ask for (vLLM's default `max_logprobs`).
pub const MAX_LOGPROBS: usize = 20;

/// Sampling parameters of one request, with vLLM's names and meanings. The order in which they
/// act on the logits is vLLM's: penalties (repetition over prompt and output, then frequency and
/// presence over the output), temperature, `min_p`, `top_k`, then `top_p` over what is left.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Samples to draw from the prompt (vLLM's `n`).
    pub n: usize,
    /// Softmax temperature; 0 means greedy (nano-vllm forbids it, its users asked for it).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 keeps all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 keeps all).
    pub min_p: f32,
    /// Subtracted from the logit of every token the output already holds, in [-2, 2].
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time the output holds it, in [-2, 2].
    pub frequency_penalty: f32,
    /// Divides the positive logits (multiplies the negative ones) of tokens in the prompt or the
    /// output; 1 is none, above 1 discourages repeats.
    pub repetition_penalty: f32,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Tokens to generate before EOS, a stop token or a stop string may end the request.
    pub min_tokens: usize,
    /// Keep generating past the model's EOS tokens (benchmarks do).
    pub ignore_eos: bool,
    /// Strings that end the request where they appear in its text (not included in the text
    /// unless `include_stop_str_in_output`).
    pub stop: Vec<String>,
    /// Extra tokens that end the request, EOS or not.
    pub stop_token_ids: Vec<u32>,
    /// Keep the matched stop string at the end of the text.
    pub include_stop_str_in_output: bool,
    /// Return each sampled token's log-probability and this many top ones (0: the sampled one
    /// only; `None`: none). From the model's raw logits, as vLLM's default.
    pub logprobs: Option<usize>,
    /// Seed of this request's sampler: the same seed gives the same output. The `n` samples of a
    /// request use `seed`, `seed + 1`, ... (vLLM's rule).
    pub seed: Option<u64>,
    /// Decode the output into text (vLLM's `detokenize`). A front end that decodes off the
    /// engine's thread turns it off, and then looks for stop strings itself: the engine only
    /// takes stop strings from a request it detokenizes.
    pub detokenize: bool,
}

impl Default for SamplingParams {
    /// nano-vllm's defaults: temperature 1, 64 tokens; no truncation or penalty.
    fn default() -> Self {
        SamplingParams {
            n: 1,
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            max_tokens: 64,
            min_tokens: 0,
            ignore_eos: false,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            include_stop_str_in_output: false,
            logprobs: None,
            seed: None,
            detokenize: true,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_tokens, ..Self::default() }
    }

    /// Whether this request takes the most likely token (after penalties) every step.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == Some(1)
    }

    /// Whether a penalty changes the logits.
    pub fn penalizes(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 || self.repetition_penalty != 1.0
    }

    /// Whether sampling keeps only part of the distribution (`top_k`, `top_p` or `min_p`).
    pub fn truncates(&self) -> bool {
        !self.is_greedy() && (self.top_k.is_some() || self.top_p < 1.0 || self.min_p > 0.0)
    }

    /// `top_k` as vLLM takes it: -1 or 0 keeps every token (`None`), a positive `k` keeps `k`.
    pub fn top_k_from_vllm(k: i64) -> Result<Option<usize>, ScheduleError> {
        match k {
            -1 | 0 => Ok(None),
            k if k > 0 => Ok(Some(k as usize)),
            k => Err(ScheduleError::InvalidSampling {
                field: "top_k",
                value: k.to_string(),
                expected: "-1 or 0 (disabled), or at least 1",
            }),
        }
    }

    /// Reject values vLLM rejects, naming the field and the value.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let invalid = |field: &'static str, value: String, expected: &'static str| {
            Err(ScheduleError::InvalidSampling { field, value, expected })
        };
        if self.n == 0 {
            return invalid("n", "0".into(), "at least 1");
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return invalid("temperature", self.temperature.to_string(), "a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p", self.top_p.to_string(), "a number in (0, 1]");
        }
        if self.top_k == Some(0) {
            return invalid("top_k", "0".into(), "at least 1 (or unset for no limit)");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return invalid("min_p", self.min_p.to_string(), "a number in [0, 1]");
        }
        for (field, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !(-2.0..=2.0).contains(&value) {
                return invalid(field, value.to_string(), "a number in [-2, 2]");
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return invalid("repetition_penalty", self.repetition_penalty.to_string(), "a finite number > 0");
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens", "0".into(), "at least 1");
        }
        if self.min_tokens > self.max_tokens {
            return invalid("min_tokens", self.min_tokens.to_string(), "at most max_tokens");
        }
        if self.stop.iter().any(String::is_empty) {
            return invalid("stop", "\"\"".into(), "non-empty strings");
        }
        if !self.detokenize && !self.stop.is_empty() {
            return invalid("stop", format!("{:?}", self.stop), "none when detokenize is off");
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_LOGPROBS) {
            return invalid("logprobs", n.to_string(), "at most 20");
        }
        Ok(())
    }

    /// The tokens that end this request when sampled: `eos` (the model's) unless EOS is ignored,
    /// and `stop_token_ids`.
    pub fn stop_tokens(&self, eos: &[u32]) -> Vec<u32> {
        let eos = if self.ignore_eos { &[][..] } else { eos };
        eos.iter().chain(&self.stop_token_ids).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_reads_as_vllm_reads_it() {
        assert_eq!(SamplingParams::top_k_from_vllm(-1), Ok(None));
        assert_eq!(SamplingParams::top_k_from_vllm(0), Ok(None));
        assert_eq!(SamplingParams::top_k_from_vllm(20), Ok(Some(20)));
        let err = SamplingParams::top_k_from_vllm(-5).unwrap_err();
        assert!(matches!(err, ScheduleError::InvalidSampling { field: "top_k", .. }), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
            (SamplingParams { top_k: Some(0), ..Default::default() }, "top_k"),
            (SamplingParams { max_tokens: 0, ..Default::default() }, "max_tokens"),
            (SamplingParams { n: 0, ..Default::default() }, "n"),
            (SamplingParams { min_p: 1.5, ..Default::default() }, "min_p"),
            (SamplingParams { presence_penalty: 2.5, ..Default::default() }, "presence_penalty"),
            (SamplingParams { frequency_penalty: -3.0, ..Default::default() }, "frequency_penalty"),
            (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
            (SamplingParams { min_tokens: 65, ..Default::default() }, "min_tokens"),
            (SamplingParams { stop: vec![String::new()], ..Default::default() }, "stop"),
            (SamplingParams { logprobs: Some(21), ..Default::default() }, "logprobs"),
            (SamplingParams { stop: vec!["x".into()], detokenize: false, ..Default::default() }, "stop"),
        ];
        for (params, field) in cases {
            let err = params.validate().unwrap_err();
            assert!(matches!(err, ScheduleError::InvalidSampling { field: f, .. } if f == field), "{err}");
        }
        assert!(SamplingParams::greedy(1).validate().is_ok());
        assert_eq!(
            SamplingParams { top_p: 1.5, ..Default::default() }.validate().unwrap_err().to_string(),
            "invalid sampling parameter top_p = 1.5: expected a number in (0, 1]"
        );
    }
}

//! How one request wants its tokens chosen and when it stops.

use crate::ScheduleError;

/// Sampling parameters of one request, as vLLM's `SamplingParams`.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (nano-vllm forbids it, its users asked for it).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 keeps all).
    pub top_p: f32,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Keep generating past the model's EOS tokens (benchmarks do).
    pub ignore_eos: bool,
    /// Extra tokens that end the request, EOS or not.
    pub stop_token_ids: Vec<u32>,
    /// Seed of this request's sampler: the same seed gives the same output.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// nano-vllm's defaults: temperature 1, 64 tokens.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            max_tokens: 64,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_tokens, ..Self::default() }
    }

    /// Whether this request takes the most likely token every step.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == Some(1)
    }

    /// Reject values no sampler can honour, naming the field and the value.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let invalid = |field: &'static str, value: String, expected: &'static str| {
            Err(ScheduleError::InvalidSampling { field, value, expected })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return invalid("temperature", self.temperature.to_string(), "a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p", self.top_p.to_string(), "a number in (0, 1]");
        }
        if self.top_k == Some(0) {
            return invalid("top_k", "0".into(), "at least 1 (or unset for no limit)");
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens", "0".into(), "at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
            (SamplingParams { top_k: Some(0), ..Default::default() }, "top_k"),
            (SamplingParams { max_tokens: 0, ..Default::default() }, "max_tokens"),
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

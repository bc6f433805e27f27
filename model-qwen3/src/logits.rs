//! Reading the model's output: the most likely token, and log-probabilities.

/// The most likely token: the index of the largest value, the lowest among equals (as the GPU
/// sampler picks). An empty slice gives 0.
pub fn argmax<T: PartialOrd>(values: &[T]) -> u32 {
    let mut best = 0;
    for (i, value) in values.iter().enumerate() {
        if *value > values[best] {
            best = i;
        }
    }
    best as u32
}

/// `log softmax(logits)` in f64: each token's log-probability.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let log_total = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| l as f64 - max - log_total).collect()
}

/// A change to one token's logit before sampling, as the engine computes it for a request
/// (vLLM's repetition, frequency and presence penalties; `min_tokens` holding back stop tokens) and
/// as the CPU and the GPU apply it: `l / repetition` for positive `l` (`l * repetition`
/// otherwise), then minus `subtract` (infinite: the token cannot be drawn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitAdjustment {
    /// The token.
    pub token: u32,
    /// The repetition penalty (1: none).
    pub repetition: f32,
    /// `frequency_penalty * count + presence_penalty`, or infinity to mask the token.
    pub subtract: f32,
}

impl LogitAdjustment {
    /// The adjusted logit (the GPU rounds each operation the same way).
    pub fn apply(&self, logit: f32) -> f32 {
        let scaled = if logit > 0.0 { logit / self.repetition } else { logit * self.repetition };
        scaled - self.subtract
    }
}

/// A sampled token's log-probability and the most likely tokens', from the model's raw logits
/// (log-softmax before penalties and temperature: vLLM's default).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The sampled token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first (ties: lower id
    /// first); as many as the request asked for.
    pub top: Vec<(u32, f32)>,
}

/// What one draw gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token.
    pub token: u32,
    /// Its log-probabilities, when the request asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1f32, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[-2.0f64, -1.0]), 1);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        assert!((lp.iter().map(|l| l.exp()).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((lp[2] - lp[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn adjustments_divide_positive_logits_multiply_negative_ones_then_subtract() {
        let a = LogitAdjustment { token: 0, repetition: 2.0, subtract: 0.5 };
        assert_eq!(a.apply(3.0), 1.0);
        assert_eq!(a.apply(-3.0), -6.5);
        let mask = LogitAdjustment { token: 0, repetition: 1.0, subtract: f32::INFINITY };
        assert_eq!(mask.apply(7.0), f32::NEG_INFINITY);
    }
}

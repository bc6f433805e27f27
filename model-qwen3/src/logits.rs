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
}

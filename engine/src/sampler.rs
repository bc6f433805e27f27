//! Choosing the next token from logits: greedy, temperature, top-k, top-p.

use nanovllm_qwen3::argmax;
use nanovllm_scheduler::SamplingParams;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// One request's sampler. It owns its random generator, so a request's output depends on its seed
/// and its logits only, not on what else is batched with it.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_k: Option<usize>,
    top_p: f32,
    seed: u64,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `params`, seeded from `params.seed`, or from `fallback_seed` when unset.
    pub fn new(params: &SamplingParams, fallback_seed: u64) -> Self {
        let temperature = if params.is_greedy() { 0.0 } else { params.temperature };
        let seed = params.seed.unwrap_or(fallback_seed);
        Sampler {
            temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            seed,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Temperature, 0 for greedy.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// The seed this request samples from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether the sampler needs the whole sorted distribution (top-k or top-p), rather than a
    /// draw from softmax(logits / T) that the GPU can make.
    pub fn truncates(&self) -> bool {
        self.temperature > 0.0 && (self.top_k.is_some() || self.top_p < 1.0)
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        if self.top_k.is_none() && self.top_p >= 1.0 {
            return self.sample_all(logits);
        }
        let mut candidates: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l / self.temperature)).collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.top_k {
            candidates.truncate(k.max(1));
        }
        let max = candidates[0].1;
        let mut total = 0.0f64;
        let mut probs: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| {
                let p = ((l - max) as f64).exp();
                total += p;
                p
            })
            .collect();
        probs.iter_mut().for_each(|p| *p /= total);
        let mut keep = probs.len();
        if self.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cumulative += p;
                if cumulative >= self.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept: f64 = probs[..keep].iter().sum();
        let mut draw = self.rng.random::<f64>() * kept;
        for (i, p) in probs[..keep].iter().enumerate() {
            if draw < *p {
                return candidates[i].0;
            }
            draw -= p;
        }
        candidates[keep - 1].0
    }
}

impl Sampler {
    /// Sampling from the whole distribution needs no sort: one pass for the normalizer, one to draw.
    fn sample_all(&mut self, logits: &[f32]) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weight = |l: f32| (((l - max) / self.temperature) as f64).exp();
        let total: f64 = logits.iter().map(|&l| weight(l)).sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (i, &l) in logits.iter().enumerate() {
            let w = weight(l);
            if draw < w {
                return i as u32;
            }
            draw -= w;
        }
        argmax(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: Option<usize>, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed: Some(seed), ..SamplingParams::default() }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&SamplingParams::greedy(1), 0);
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [5.0, 4.9, 0.0, -1.0, 4.8];
        for seed in 0..200 {
            let token = Sampler::new(&params(1.0, Some(2), 1.0, seed), 0).sample(&logits);
            assert!(token == 0 || token == 1);
            // The two best hold about 68% of the mass: top_p 0.5 keeps them only.
            let token = Sampler::new(&params(1.0, None, 0.5, seed), 0).sample(&logits);
            assert!(token == 0 || token == 1, "{token}");
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4 and 3/4
        let mut s = Sampler::new(&params(1.0, None, 1.0, 7), 0);
        let ones = (0..4000).filter(|_| s.sample(&logits) == 1).count();
        assert!((2800..3200).contains(&ones), "{ones}");
        let run = |seed| {
            let mut s = Sampler::new(&params(0.8, None, 0.9, seed), 0);
            (0..50).map(|_| s.sample(&[0.3, 0.1, 0.2, 0.25])).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}

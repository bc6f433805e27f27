//! Choosing the next token from logits, as vLLM does: penalties, temperature, `min_p`, `top_k`,
//! `top_p`, and the log-probabilities a request asks for. No step sorts the vocabulary: the
//! truncations are thresholds found by partial selection, and the draw walks the tokens in id
//! order, so the same seed and logits give the same token.

use std::cell::RefCell;
use std::collections::HashMap;

use nanovllm_qwen3::{LogitAdjustment, Sampled, TokenLogprobs, argmax};
use nanovllm_scheduler::SamplingParams;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// One request's sampler. It owns its random generator and its token counts, so a request's
/// output depends on its seed, its tokens and its logits only, not on its batch.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: StdRng,
    /// Tokens that end the request (EOS unless ignored, and its stop tokens), each once: not drawn
    /// before `min_tokens` tokens.
    stop_tokens: Vec<u32>,
    /// Tokens drawn so far.
    generated: usize,
    /// The tokens a penalty applies to (the prompt's for the repetition penalty, and every token
    /// drawn), each once, in the order first seen; empty when the request has no penalty.
    penalized: Vec<Penalized>,
    /// Where each token of `penalized` is.
    penalized_at: HashMap<u32, usize>,
}

/// A token a penalty applies to.
#[derive(Debug, Clone, Copy)]
struct Penalized {
    token: u32,
    /// Times drawn.
    count: u32,
}

thread_local! {
    /// The logits after penalties and masks, and the adjustments, reused from draw to draw on
    /// each thread.
    static ADJUSTED: RefCell<(Vec<f32>, Vec<LogitAdjustment>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl Sampler {
    /// A sampler for `params` over a request whose prompt is `prompt` and which ends at
    /// `stop_tokens`; seeded from `params.seed`, or from `fallback_seed` when unset.
    pub fn new(
        params: &SamplingParams,
        prompt: &[u32],
        mut stop_tokens: Vec<u32>,
        fallback_seed: u64,
    ) -> Self {
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        let mut sampler = Sampler {
            params: params.clone(),
            seed: params.seed.unwrap_or(fallback_seed),
            rng: StdRng::seed_from_u64(params.seed.unwrap_or(fallback_seed)),
            stop_tokens,
            generated: 0,
            penalized: Vec::new(),
            penalized_at: HashMap::new(),
        };
        if params.repetition_penalty != 1.0 {
            for &token in prompt {
                sampler.penalize(token, 0);
            }
        }
        sampler
    }

    /// Count `token` as seen `times` more (0: seen in the prompt).
    fn penalize(&mut self, token: u32, times: u32) {
        let at = *self.penalized_at.entry(token).or_insert_with(|| {
            self.penalized.push(Penalized { token, count: 0 });
            self.penalized.len() - 1
        });
        self.penalized[at].count += times;
    }

    /// The sampler of sample `index` of the same request (vLLM's `n`), before any draw: its seed
    /// is this one's plus `index`.
    pub fn sibling(&self, index: usize) -> Sampler {
        let seed = self.seed.wrapping_add(index as u64);
        Sampler { seed, rng: StdRng::seed_from_u64(seed), ..self.clone() }
    }

    /// Temperature, 0 for greedy.
    pub fn temperature(&self) -> f32 {
        if self.params.is_greedy() { 0.0 } else { self.params.temperature }
    }

    /// The seed this request samples from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether the next draw goes beyond a draw from the truncated softmax(logits / T): penalties,
    /// log-probabilities, or stop tokens held off by `min_tokens` (one GPU does these too; a
    /// tensor-parallel group, whose ranks hold slices of the vocabulary, leaves them to the host).
    pub fn needs_whole_rows(&self) -> bool {
        self.params.penalizes() || self.params.logprobs.is_some() || self.holds_stops()
    }

    /// Whether the draw keeps only part of the distribution (`top_k`, `top_p`, `min_p`).
    pub fn truncates(&self) -> bool {
        self.params.truncates()
    }

    /// This draw as the GPU makes it: the token at `step` (its position) of this request.
    #[cfg(feature = "cuda")]
    pub(crate) fn gpu_sample(&self, step: u64) -> nanovllm_qwen3::cuda::GpuSample {
        let p = &self.params;
        nanovllm_qwen3::cuda::GpuSample {
            top_k: p.top_k.map_or(0, |k| k.min(u32::MAX as usize) as u32),
            top_p: p.top_p,
            min_p: p.min_p,
            logprobs: p.logprobs.map(|n| n.min(u32::MAX as usize) as u32),
            ..nanovllm_qwen3::cuda::GpuSample::new(self.temperature(), self.seed, step)
        }
    }

    /// The next draw's changes to the logits (penalties, and stop tokens masked while
    /// `min_tokens` holds them off), each token once, appended to `out`.
    pub fn adjustments(&self, out: &mut Vec<LogitAdjustment>) {
        let p = &self.params;
        let first = out.len();
        out.extend(self.penalized.iter().map(|e| LogitAdjustment {
            token: e.token,
            repetition: p.repetition_penalty,
            subtract: if e.count > 0 {
                p.frequency_penalty * e.count as f32 + p.presence_penalty
            } else {
                0.0
            },
        }));
        if self.holds_stops() {
            for &token in &self.stop_tokens {
                match self.penalized_at.get(&token) {
                    Some(&at) => out[first + at].subtract = f32::INFINITY,
                    None => out.push(LogitAdjustment { token, repetition: 1.0, subtract: f32::INFINITY }),
                }
            }
        }
    }

    /// Whether stop tokens may not be drawn yet.
    fn holds_stops(&self) -> bool {
        self.generated < self.params.min_tokens && !self.stop_tokens.is_empty()
    }

    /// Count a token drawn elsewhere (on the GPU) as this sampler's.
    pub fn record(&mut self, token: u32) {
        self.generated += 1;
        if self.params.penalizes() {
            self.penalize(token, 1);
        }
    }

    /// The next token, and its log-probabilities if the request asked for them.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let logprobs = self.params.logprobs.map(|n| (n, nanovllm_qwen3::log_softmax(logits)));
        let token = if self.params.penalizes() || self.holds_stops() {
            ADJUSTED.with_borrow_mut(|(adjusted, adjustments)| {
                adjusted.clear();
                adjusted.extend_from_slice(logits);
                adjustments.clear();
                self.adjustments(adjustments);
                for a in adjustments.iter() {
                    if let Some(l) = adjusted.get_mut(a.token as usize) {
                        *l = a.apply(*l);
                    }
                }
                self.draw(adjusted)
            })
        } else {
            self.draw(logits)
        };
        self.record(token);
        let logprobs = logprobs.map(|(n, all)| TokenLogprobs {
            token,
            logprob: all[token as usize] as f32,
            top: top_n(&all, n).into_iter().map(|i| (i, all[i as usize] as f32)).collect(),
        });
        Sampled { token, logprobs }
    }

    /// Greedy, or a draw from softmax(logits / T) restricted to the tokens at or above the
    /// truncation threshold.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let t = self.temperature();
        if t == 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let threshold = truncation_threshold(logits, max, t, &self.params);
        let weight = |l: f32| if l >= threshold { (((l - max) / t) as f64).exp() } else { 0.0 };
        let total: f64 = logits.iter().map(|&l| weight(l)).sum();
        let mut draw = self.rng.random::<f64>() * total;
        // Rounding may leave a sliver of the draw past the last kept token: it takes that token.
        let mut last = None;
        for (i, &l) in logits.iter().enumerate() {
            let w = weight(l);
            if w > 0.0 {
                if draw < w {
                    return i as u32;
                }
                draw -= w;
                last = Some(i as u32);
            }
        }
        last.unwrap_or_else(|| argmax(logits))
    }
}

/// The lowest logit kept by `min_p`, `top_k` and `top_p` (in that order, each over what the one
/// before left, as vLLM applies them), at temperature `t`; every token at or above it is kept, so
/// tokens tied with the last one kept are kept too (as vLLM's top-k keeps them).
fn truncation_threshold(logits: &[f32], max: f32, t: f32, p: &SamplingParams) -> f32 {
    // min_p: probability >= min_p * the top probability, i.e. logit >= max + T ln(min_p).
    let mut threshold = if p.min_p > 0.0 { max + t * p.min_p.ln() } else { f32::NEG_INFINITY };
    if p.top_k.is_none() && p.top_p >= 1.0 {
        return threshold;
    }
    let mut kept: Vec<f32> =
        logits.iter().copied().filter(|&l| l >= threshold && l > f32::NEG_INFINITY).collect();
    if let Some(k) = p.top_k.filter(|&k| k < kept.len()) {
        let (_, kth, _) = kept.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        threshold = threshold.max(*kth);
        kept.retain(|&l| l >= threshold);
    }
    if p.top_p < 1.0 {
        let weights: f64 = kept.iter().map(|&l| (((l - max) / t) as f64).exp()).sum();
        threshold = threshold.max(top_p_threshold(kept, max, t, weights * p.top_p as f64));
    }
    threshold
}

/// The logit of the token at which the tokens' weight, most likely first, reaches `target`:
/// the most likely tokens are found a chunk at a time by partial selection, so only the part of
/// the vocabulary the nucleus holds is ever sorted.
fn top_p_threshold(mut rest: Vec<f32>, max: f32, t: f32, target: f64) -> f32 {
    let mut cumulative = 0.0f64;
    let mut chunk = 64;
    let mut last = f32::NEG_INFINITY;
    while !rest.is_empty() {
        let m = chunk.min(rest.len());
        if m < rest.len() {
            rest.select_nth_unstable_by(m - 1, |a, b| b.total_cmp(a));
        }
        let (head, tail) = rest.split_at_mut(m);
        head.sort_unstable_by(|a, b| b.total_cmp(a));
        for &l in head.iter() {
            cumulative += (((l - max) / t) as f64).exp();
            last = l;
            if cumulative >= target {
                return l;
            }
        }
        rest = tail.to_vec();
        chunk *= 4;
    }
    last
}

/// The `n` largest values' indices, largest first, ties to the lower index.
fn top_n(values: &[f64], n: usize) -> Vec<u32> {
    let mut top: Vec<u32> = Vec::with_capacity(n + 1);
    if n == 0 {
        return top;
    }
    for (i, &v) in values.iter().enumerate() {
        if top.len() == n && v <= values[top[n - 1] as usize] {
            continue;
        }
        let at = top.partition_point(|&j| values[j as usize] >= v);
        top.insert(at, i as u32);
        top.truncate(n);
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: Option<usize>, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed: Some(seed), ..SamplingParams::default() }
    }

    fn sampler(params: &SamplingParams) -> Sampler {
        Sampler::new(params, &[], Vec::new(), 0)
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = sampler(&SamplingParams::greedy(1));
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]).token, 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [5.0, 4.9, 0.0, -1.0, 4.8];
        for seed in 0..200 {
            let token = sampler(&params(1.0, Some(2), 1.0, seed)).sample(&logits).token;
            assert!(token == 0 || token == 1);
            // The two best hold about 68% of the mass: top_p 0.5 keeps them only.
            let token = sampler(&params(1.0, None, 0.5, seed)).sample(&logits).token;
            assert!(token == 0 || token == 1, "{token}");
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4 and 3/4
        let mut s = sampler(&params(1.0, None, 1.0, 7));
        let ones = (0..4000).filter(|_| s.sample(&logits).token == 1).count();
        assert!((2800..3200).contains(&ones), "{ones}");
        let run = |seed| {
            let mut s = sampler(&params(0.8, None, 0.9, seed));
            (0..50).map(|_| s.sample(&[0.3, 0.1, 0.2, 0.25]).token).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn top_n_is_the_largest_first_with_ties_to_the_lower_index() {
        assert_eq!(top_n(&[1.0, 3.0, 2.0, 3.0, 0.0], 3), [1, 3, 2]);
        assert_eq!(top_n(&[1.0, 2.0], 5), [1, 0]);
        assert!(top_n(&[1.0], 0).is_empty());
    }

    #[test]
    fn top_p_over_a_long_tail_finds_the_nucleus_a_chunk_at_a_time() {
        // 10,000 equal tokens: the nucleus of 0.5 is 5,000 of them, past several chunks.
        let logits = vec![0.0f32; 10_000];
        let mut p = params(1.0, None, 0.5, 1);
        assert_eq!(truncation_threshold(&logits, 0.0, 1.0, &p), 0.0, "ties at the boundary are kept");
        let logits: Vec<f32> = (0..10_000).map(|i| -(i as f32) * 1e-3).collect();
        let threshold = truncation_threshold(&logits, 0.0, 1.0, &p);
        let kept: Vec<f64> = logits.iter().filter(|&&l| l >= threshold).map(|&l| (l as f64).exp()).collect();
        let total: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let mass: f64 = kept.iter().sum::<f64>() / total;
        let without_last = (kept.iter().sum::<f64>() - kept.last().unwrap()) / total;
        assert!(mass >= 0.5 && without_last < 0.5, "{mass} {without_last}");
        p.top_p = 1.0;
        assert_eq!(truncation_threshold(&logits, 0.0, 1.0, &p), f32::NEG_INFINITY);
    }
}

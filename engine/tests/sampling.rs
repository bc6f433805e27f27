//! The sampler against the exact truncated, renormalized distribution: many draws from fixed
//! logits, their frequencies within a total-variation bound that a wrong threshold (one token too
//! many or too few, of at least 5% of the mass) fails. The reference sorts the whole vocabulary,
//! as the sampler never does.

mod sampling_reference;

use nanovllm::{Sampler, SamplingParams, log_softmax};
use sampling_reference::{BOUND, exact, total_variation};

const DRAWS: usize = 20_000;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn frequencies(logits: &[f32], p: &SamplingParams, seed: u64) -> Vec<f64> {
    let mut sampler = Sampler::new(&SamplingParams { seed: Some(seed), ..p.clone() }, &[], Vec::new(), 0);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[sampler.sample(logits).token as usize] += 1;
    }
    counts.into_iter().map(|c| c as f64 / DRAWS as f64).collect()
}

fn params(temperature: f32, top_k: Option<usize>, top_p: f32, min_p: f32) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, min_p, ..SamplingParams::default() }
}

#[test]
fn truncated_draws_follow_the_exact_distribution() {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    // Probabilities at T = 1 of about .30 .22 .16 .12 .09 .06 .05 ... : every boundary below moves
    // at least 5% of the mass if it is one token off.
    let logits: Vec<f32> = [0.0f32, -0.3, -0.6, -0.9, -1.2, -1.6, -1.8, -2.5, -3.0, -3.5, -4.0, -6.0]
        .iter()
        .map(|l| l + 1.7)
        .collect();
    let cases = [
        ("temperature only", params(1.0, None, 1.0, 0.0)),
        ("temperature 0.6", params(0.6, None, 1.0, 0.0)),
        ("top_k 3", params(1.0, Some(3), 1.0, 0.0)),
        ("top_k 5 at 0.7", params(0.7, Some(5), 1.0, 0.0)),
        ("top_p 0.6", params(1.0, None, 0.6, 0.0)),
        ("top_p 0.9 at 1.3", params(1.3, None, 0.9, 0.0)),
        ("min_p 0.3", params(1.0, None, 1.0, 0.3)),
        ("min_p 0.15 at 0.8", params(0.8, None, 1.0, 0.15)),
        ("top_k 6, top_p 0.8", params(1.0, Some(6), 0.8, 0.0)),
        ("min_p 0.2, top_k 4, top_p 0.7", params(0.9, Some(4), 0.7, 0.2)),
        ("Qwen3's defaults", params(0.6, Some(20), 0.95, 0.0)),
    ];
    for (name, p) in cases {
        let expected = exact(&logits, &p);
        let seen = frequencies(&logits, &p, seed);
        let tv = total_variation(&expected, &seen);
        eprintln!("{name}: total variation {tv:.4}");
        assert!(tv < BOUND, "{name}: total variation {tv:.4}\n expected {expected:.3?}\n seen {seen:.3?}");
        for (i, (&e, &s)) in expected.iter().zip(&seen).enumerate() {
            assert!(e > 0.0 || s == 0.0, "{name}: token {i} is outside the kept set but was drawn");
        }
    }
}

#[test]
fn a_wrong_threshold_fails_the_bound() {
    // The check itself: the distribution of top_k 3 seen through top_k 4 is far from it.
    let logits = [1.7f32, 1.4, 1.1, 0.8, 0.5, 0.1];
    let seen = frequencies(&logits, &params(1.0, Some(4), 1.0, 0.0), 1);
    assert!(total_variation(&exact(&logits, &params(1.0, Some(3), 1.0, 0.0)), &seen) > BOUND);
}

#[test]
fn random_logits_over_a_large_vocabulary() {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    // 2,000 tokens, a few likely ones over a long tail: the nucleus spans many chunks of the
    // partial selection. Compare over the 10 most likely tokens plus the tail as one bucket.
    let mut logits: Vec<f32> = (0..2000).map(|_| rng.random_range(-4.0f32..0.0)).collect();
    for l in logits.iter_mut().take(10) {
        *l += 6.0;
    }
    for p in [params(1.0, None, 0.9, 0.0), params(0.8, Some(200), 0.95, 0.0), params(1.0, None, 1.0, 0.01)] {
        let expected = exact(&logits, &p);
        let seen = frequencies(&logits, &p, seed);
        let bucket = |probs: &[f64]| {
            let mut out = probs[..10].to_vec();
            out.push(probs[10..].iter().sum());
            out
        };
        let tv = total_variation(&bucket(&expected), &bucket(&seen));
        assert!(tv < BOUND, "{p:?}: total variation {tv:.4}");
        let drawn_outside = (0..logits.len()).any(|i| expected[i] == 0.0 && seen[i] > 0.0);
        assert!(!drawn_outside, "{p:?}: a token outside the kept set was drawn");
    }
}

#[test]
fn top_k_1_is_greedy() {
    let logits = [0.2f32, 1.5, 1.49, -3.0];
    for seed in 0..50 {
        let mut sampler = Sampler::new(
            &SamplingParams { top_k: Some(1), seed: Some(seed), ..params(1.2, None, 1.0, 0.0) },
            &[],
            Vec::new(),
            0,
        );
        assert_eq!(sampler.sample(&logits).token, 1);
    }
}

#[test]
fn penalties_match_a_direct_computation_from_the_token_counts() {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    // Greedy after penalties is the argmax of the penalized logits: over many random logits and
    // token histories, the sampler's choice must be the direct computation's.
    for _ in 0..500 {
        let vocab = 8;
        let logits: Vec<f32> = (0..vocab).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let prompt: Vec<u32> = (0..3).map(|_| rng.random_range(0..vocab as u32)).collect();
        let output: Vec<u32> = (0..4).map(|_| rng.random_range(0..vocab as u32)).collect();
        let p = SamplingParams {
            repetition_penalty: rng.random_range(0.5f32..2.0),
            frequency_penalty: rng.random_range(-2.0f32..2.0),
            presence_penalty: rng.random_range(-2.0f32..2.0),
            ..SamplingParams::greedy(10)
        };
        let direct: Vec<f32> = (0..vocab as u32)
            .map(|token| {
                let l = logits[token as usize];
                let count = output.iter().filter(|&&t| t == token).count() as f32;
                let seen = prompt.contains(&token) || count > 0.0;
                let l = if !seen {
                    l
                } else if l > 0.0 {
                    l / p.repetition_penalty
                } else {
                    l * p.repetition_penalty
                };
                l - p.frequency_penalty * count - if count > 0.0 { p.presence_penalty } else { 0.0 }
            })
            .collect();
        let mut sampler = Sampler::new(&p, &prompt, Vec::new(), 0);
        for &token in &output {
            sampler.record(token);
        }
        assert_eq!(
            sampler.sample(&logits).token,
            nanovllm::argmax(&direct),
            "{logits:?} {prompt:?} {output:?} {p:?}"
        );
    }
}

#[test]
fn min_tokens_holds_off_the_stop_tokens() {
    let p = SamplingParams { min_tokens: 3, ..SamplingParams::greedy(10) };
    let mut sampler = Sampler::new(&p, &[], vec![0], 0);
    let logits = [5.0f32, 1.0, 0.5];
    let drawn: Vec<u32> = (0..4).map(|_| sampler.sample(&logits).token).collect();
    assert_eq!(drawn, [1, 1, 1, 0], "EOS (token 0) only once three tokens are out");
}

#[test]
fn logprobs_are_the_raw_log_softmax_with_the_top_n() {
    let logits = [0.5f32, 2.0, -1.0, 2.0, 1.0];
    let p = SamplingParams { logprobs: Some(3), repetition_penalty: 2.0, ..params(0.7, Some(2), 1.0, 0.0) };
    let mut sampler = Sampler::new(&p, &[1], Vec::new(), 9);
    let drawn = sampler.sample(&logits);
    let reference = log_softmax(&logits);
    let logprobs = drawn.logprobs.unwrap();
    assert_eq!(logprobs.token, drawn.token);
    assert_eq!(logprobs.logprob, reference[drawn.token as usize] as f32, "before penalties and temperature");
    let top: Vec<u32> = logprobs.top.iter().map(|&(t, _)| t).collect();
    assert_eq!(top, [1, 3, 4]);
    for (t, l) in logprobs.top {
        assert_eq!(l, reference[t as usize] as f32);
    }
}

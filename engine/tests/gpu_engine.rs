//! The whole engine on the GPU (`--features cuda`), both cache dtypes, against HF transformers'
//! greedy continuations, in a batch that exercises prefix-cache hits, chunked prefill, preemption
//! and decode replayed from CUDA graphs; and the engine split over two GPUs (tensor parallelism)
//! against HF on the trained KJV model. ignored by default: on a machine with a GPU,
//! `cargo test --release -p nanovllm --features cuda --test gpu_engine -- --ignored` (`--skip
//! two_gpus` on one GPU), or the test binary it builds, run with `--ignored`.
#![cfg(feature = "cuda")]

mod common;
mod kjv_reference;
mod sampling_reference;

use std::sync::{Mutex, MutexGuard, PoisonError};

use common::{fixture, hf_greedy, settings};
use nanovllm::{
    CacheDtype, Device, DeviceChoice, EngineConfig, LLM, LoadFormat, Prompt, SamplingParams, StepPolicy,
};

const FIXTURE: &str = "head-dim-128";

/// A turn on the GPUs, one test at a time: the harness runs tests in parallel threads, and one
/// test's allocations break another's CUDA graph capture in the same context (seen in gpu_model).
fn turn() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_engine_on_the_gpu_follows_hf_greedy_with_prefix_hits_preemption_and_graphs() {
    let _turn = turn();
    if let Err(e) = nanovllm::resolve_device(DeviceChoice::Cuda) {
        panic!("this test needs a CUDA GPU: {e}");
    }
    // Prompts whose HF greedy continuations have no close call: prompt 2's first token has a top-2
    // margin of 0.014, inside bf16 activations' noise (measured on the H200 when the GPU model was first checked).
    let cases: Vec<(Vec<u32>, Vec<u32>)> =
        hf_greedy(FIXTURE).into_iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, c)| c).collect();
    let mixed = StepPolicy::Mixed { max_prefill_tokens: 24 };
    for (dtype, step_policy) in [
        (CacheDtype::Bf16, StepPolicy::PrefillFirst),
        (CacheDtype::Int8, StepPolicy::PrefillFirst),
        (CacheDtype::Bf16, mixed),
        (CacheDtype::Int8, mixed),
    ] {
        // Three copies of every prompt in one batch, chunks of 64 tokens, a cache of 512 tokens for
        // about 900: later copies hit the prefix cache, long prompts are chunked, sequences are
        // preempted and recomputed; under the mixed policy, decodes ride beside prefill chunks.
        let settings = EngineConfig {
            device: Device::Cuda,
            max_num_batched_tokens: 64,
            step_policy,
            ..settings(FIXTURE, dtype, 512)
        };
        let mut llm = LLM::load(&fixture(FIXTURE), settings, LoadFormat::Safetensors).unwrap();
        eprintln!("{}", llm.describe_cache());
        let prompts: Vec<Prompt> =
            (0..3).flat_map(|_| cases.iter().map(|(p, _)| Prompt::Tokens(p.clone()))).collect();
        let prompt_tokens: usize =
            prompts.len() / cases.len() * cases.iter().map(|(p, _)| p.len()).sum::<usize>();
        let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(24) };
        let outputs = llm.generate(prompts, &params).unwrap();
        let stats = llm.stats().clone();
        eprintln!(
            "{dtype}: {} of {prompt_tokens} prompt tokens computed (the rest prefix-cache hits), {} preemptions",
            stats.schedule.prefill_tokens,
            llm.scheduler().num_preemptions()
        );
        assert!(stats.schedule.prefill_tokens < prompt_tokens, "{dtype}: no prefix-cache hit");
        assert!(llm.scheduler().num_preemptions() > 0, "{dtype}: the budget is meant to preempt");
        assert!(llm.describe_cache().contains("CUDA graphs for"), "{dtype}: decode is meant to use graphs");
        // bf16 reproduces HF exactly; INT8 rounds K/V, so a later close call may go the other way
        // (on the CPU too: docs/ACCURACY.md): its every output must agree for 16 tokens or more.
        let leading: Vec<usize> = outputs
            .iter()
            .zip(cases.iter().cycle())
            .map(|(o, (_, hf))| {
                o.as_ref().unwrap().token_ids.iter().zip(hf).take_while(|(a, b)| a == b).count()
            })
            .collect();
        eprintln!(
            "{dtype}: tokens agreeing with HF before the first difference, per output: {leading:?} of 24"
        );
        let needed = if dtype == CacheDtype::Bf16 { 24 } else { 16 };
        assert!(leading.iter().all(|&n| n >= needed), "{dtype} {step_policy:?}: {leading:?}");
    }
}

/// `n` samples on the GPU: the prompt computed once, the siblings forked from its blocks with a
/// copy of the partly filled one (bf16 rows, and INT8 rows with their scales), so the greedy
/// samples are alike and follow the single request's greedy output; with penalties and logprobs (drawn on the GPU),
/// each sample has its logprobs and the four samples are not all alike.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_n_samples_fork_the_prompt_once() {
    let _turn = turn();
    if let Err(e) = nanovllm::resolve_device(DeviceChoice::Cuda) {
        panic!("this test needs a CUDA GPU: {e}");
    }
    let (prompt, _) = hf_greedy(FIXTURE).into_iter().next().unwrap();
    assert!(prompt.len() % 16 != 0, "the prompt ends in a partly filled block, which siblings copy");
    for dtype in [CacheDtype::Bf16, CacheDtype::Int8] {
        let load = || {
            let config = EngineConfig { device: Device::Cuda, ..settings(FIXTURE, dtype, 512) };
            LLM::load(&fixture(FIXTURE), config, LoadFormat::Safetensors).unwrap()
        };
        let greedy = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(24) };
        let alone = load().generate(vec![Prompt::Tokens(prompt.clone())], &greedy).unwrap();
        let alone = alone[0].as_ref().unwrap().token_ids.clone();
        let four = SamplingParams { n: 4, ..greedy.clone() };
        // A fresh engine: a prefix-cache hit would hide the fork.
        let mut llm = load();
        let outputs = llm.generate(vec![Prompt::Tokens(prompt.clone())], &four).unwrap();
        assert_eq!(llm.stats().schedule.prefill_tokens, prompt.len(), "{dtype}: the prompt once");
        let samples: Vec<_> = outputs.into_iter().map(|o| o.unwrap()).collect();
        for (index, sample) in samples.iter().enumerate() {
            assert_eq!(sample.index, index);
            // Same inputs in one batch: the same tokens. Against the request alone (a batch of
            // one), within the GPU's batch-invariance bound: agreement up to a close call.
            assert_eq!(sample.token_ids, samples[0].token_ids, "{dtype}: greedy sample {index}");
        }
        let agree = samples[0].token_ids.iter().zip(&alone).take_while(|(a, b)| a == b).count();
        eprintln!("{dtype}: greedy samples agree with the request alone for {agree} of 24 tokens");
        assert!(agree >= 16, "{dtype}: {:?} against {alone:?}", samples[0].token_ids);
        let penalized = SamplingParams {
            n: 4,
            temperature: 0.8,
            top_k: Some(20),
            presence_penalty: 0.5,
            frequency_penalty: 0.5,
            repetition_penalty: 1.1,
            logprobs: Some(3),
            seed: Some(5),
            ..greedy
        };
        let outputs = llm.generate(vec![Prompt::Tokens(prompt.clone())], &penalized).unwrap();
        let samples: Vec<_> = outputs.into_iter().map(|o| o.unwrap()).collect();
        for sample in &samples {
            let logprobs = sample.logprobs.as_ref().unwrap();
            assert_eq!(logprobs.len(), 24);
            assert!(logprobs.iter().zip(&sample.token_ids).all(|(l, &t)| l.token == t && l.top.len() == 3));
        }
        assert!(samples.iter().any(|s| s.token_ids != samples[0].token_ids), "{dtype}: samples draw apart");
        let blocks = llm.scheduler().block_manager();
        assert_eq!(blocks.num_free_blocks(), blocks.num_blocks());
    }
}

/// Tensor parallelism through the whole engine: the trained KJV model (4 query heads on
/// 2 kv heads: one kv head per GPU) on 1 and on 2 GPUs, both cache dtypes, its prompts twice over
/// in a cache too small for them all (preemption and recompute), decode in CUDA graphs; every
/// output against HF's greedy tokens up to HF's first close call. The margin is wider than the
/// CPU test's (0.05): GPU logits carry bf16 activations' noise, about 2% of the largest logit.
#[test]
#[ignore = "needs two CUDA GPUs"]
fn the_engine_tensor_parallel_over_two_gpus_writes_hfs_greedy_text_until_a_close_call() {
    let _turn = turn();
    let gpus = nanovllm_cuda::Gpu::count().unwrap_or(0);
    assert!(gpus >= 2, "this test needs two CUDA GPUs; this machine has {gpus}");
    const NOISE: f64 = 0.1;
    let cases: Vec<kjv_reference::Case> =
        kjv_reference::hf_cases().into_iter().chain(kjv_reference::hf_cases()).collect();
    let c = nanovllm_qwen3::Qwen3Config::from_file(&kjv_reference::model_dir().join("config.json")).unwrap();
    for world in [1, 2] {
        for dtype in [CacheDtype::Bf16, CacheDtype::Int8] {
            // 12 blocks of 16 tokens per GPU for 8 sequences of about 55 tokens.
            let config = EngineConfig {
                device: Device::Cuda,
                tensor_parallel_size: world,
                kv_cache_dtype: dtype,
                block_size: 16,
                max_model_len: Some(64),
                ..EngineConfig::default()
            };
            let config = EngineConfig {
                kv_cache_memory_bytes: Some(12 * 16 * config.kv_bytes_per_token(&c)),
                ..config
            };
            let mut llm = LLM::load(&kjv_reference::model_dir(), config, LoadFormat::Safetensors).unwrap();
            eprintln!("{}", llm.describe_cache());
            let outputs = kjv_reference::generate(&mut llm, &cases);
            let preemptions = llm.scheduler().num_preemptions();
            let leading: Vec<usize> = outputs
                .iter()
                .zip(&cases)
                .map(|(o, case)| o.iter().zip(&case.greedy).take_while(|(a, b)| a == b).count())
                .collect();
            let needed: Vec<usize> =
                cases.iter().map(|case| kjv_reference::comparable(case, NOISE)).collect();
            eprintln!(
                "{world} GPU(s), {dtype}: {preemptions} preemptions; tokens agreeing with HF {leading:?}, needed {needed:?}"
            );
            assert!(preemptions > 0, "{world} GPU(s), {dtype}: the budget is meant to preempt");
            assert!(
                leading.iter().zip(&needed).all(|(l, n)| l >= n),
                "{world} GPU(s) {dtype}: differs from HF"
            );
            assert!(needed.iter().sum::<usize>() >= 100, "too few comparable tokens to mean anything");
        }
    }
}

/// Rows of logits the sampling tests draw from: `ROWS` copies of one short prompt.
const ROWS: usize = 16;
const SAMPLING_PROMPT: [u32; 4] = [5, 9, 2, 7];

/// A one-layer random model of `vocab` tokens (weights of scale `scale`) on the GPU, and `ROWS`
/// block tables for `SAMPLING_PROMPT`.
fn sampling_model(
    gpu: &nanovllm_cuda::Gpu,
    vocab: usize,
    scale: f32,
) -> (nanovllm_qwen3::cuda::GpuQwen3, Vec<nanovllm_kv_cache::BlockTable>) {
    use nanovllm_qwen3::cuda::{GpuLimits, GpuQwen3};
    use nanovllm_qwen3::{Qwen3Config, Qwen3Model};
    let config = Qwen3Config::from_json_str(&format!(
        r#"{{"model_type": "qwen3", "hidden_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 64, "intermediate_size": 256, "vocab_size": {vocab},
            "max_position_embeddings": 256, "tie_word_embeddings": true}}"#
    ))
    .unwrap();
    let model = Qwen3Model::random(config, 5, scale);
    let limits = GpuLimits { max_tokens: 256, max_seqs: ROWS, max_model_len: 256, cuda_graphs: false };
    let mut gpu_model = GpuQwen3::new(gpu, &model, CacheDtype::Bf16, 16, limits).unwrap();
    gpu_model.allocate_cache(ROWS).unwrap();
    let mut blocks = nanovllm_kv_cache::BlockManager::new(ROWS, 16).unwrap();
    let tables = (0..ROWS).map(|_| blocks.allocate(&SAMPLING_PROMPT).unwrap().0).collect();
    (gpu_model, tables)
}

/// The GPU's truncated sampling (min_p, top_k, top_p) against the exact distribution the CPU
/// sampler follows: 6,400 draws per setting from one row of logits (16 sequences a step, each its
/// own seed), within the distribution tests' bound, never a token outside the kept set, and the
/// same seed twice the same token. Vocabularies of 300 (the candidates' fast path) and 5,000
/// with a flat top (top_p alone over more tokens than the fast path gathers: the bisection path).
/// Kept sets of more than 64 tokens are compared in ten buckets of a tenth of the mass each, most
/// likely first, so that a nucleus cut too early or too late moves a bucket's share.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_truncated_sampling_follows_the_exact_distribution() {
    use nanovllm_qwen3::SeqInput;
    use nanovllm_qwen3::cuda::{GpuSample, SampleBatch};
    let _turn = turn();
    let gpu = nanovllm_cuda::Gpu::open().unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"));
    for (vocab, scale) in [(300, 0.1f32), (5000, 0.02)] {
        let (mut gpu_model, tables) = sampling_model(&gpu, vocab, scale);
        let inputs: Vec<SeqInput<'_>> = tables
            .iter()
            .map(|t| SeqInput { tokens: &SAMPLING_PROMPT, start: 0, block_table: t, logits: 1 })
            .collect();
        let logits = gpu_model.forward(&inputs[..1]).unwrap().pop().unwrap();
        let cases: Vec<(u32, f32, f32, f32)> = if vocab == 300 {
            vec![
                (20, 1.0, 0.0, 0.6),
                (5, 0.8, 0.0, 1.0),
                (0, 0.7, 0.0, 1.0),
                (0, 1.0, 0.05, 0.8),
                (50, 0.9, 0.02, 1.3),
            ]
        } else {
            vec![(0, 0.9, 0.0, 1.0), (20, 0.95, 0.0, 0.6)]
        };
        for (top_k, top_p, min_p, temperature) in cases {
            let params = SamplingParams {
                temperature,
                top_k: (top_k > 0).then_some(top_k as usize),
                top_p,
                min_p,
                ..SamplingParams::default()
            };
            let expected = sampling_reference::exact(&logits, &params);
            let mut counts = vec![0usize; vocab];
            let mut draws = 0;
            for round in 0..400u64 {
                let samples: Vec<GpuSample> = (0..ROWS as u64)
                    .map(|i| GpuSample {
                        top_k,
                        top_p,
                        min_p,
                        ..GpuSample::new(temperature, round * 64 + i, 4)
                    })
                    .collect();
                for token in gpu_model.forward_sampled(&inputs, &SampleBatch::from(&samples[..])).unwrap() {
                    let token = token.token;
                    assert!(
                        expected[token as usize] > 0.0,
                        "{params:?}: drew token {token}, outside the kept set"
                    );
                    counts[token as usize] += 1;
                    draws += 1;
                }
            }
            let seen: Vec<f64> = counts.iter().map(|&c| c as f64 / draws as f64).collect();
            let kept = expected.iter().filter(|&&p| p > 0.0).count();
            let (expected, seen, bound) = if kept <= 64 {
                // 6,400 draws: about 0.5 sqrt(kept / draws) of noise.
                (expected, seen, sampling_reference::BOUND.max(0.6 * (kept as f64 / draws as f64).sqrt()))
            } else {
                let mut order: Vec<usize> = (0..vocab).filter(|&i| expected[i] > 0.0).collect();
                order.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]));
                let (mut e, mut o, mut before) = (vec![0.0; 10], vec![0.0; 10], 0.0);
                for i in order {
                    let bucket = ((before * 10.0) as usize).min(9);
                    e[bucket] += expected[i];
                    o[bucket] += seen[i];
                    before += expected[i];
                }
                (e, o, 0.04)
            };
            let tv = sampling_reference::total_variation(&expected, &seen);
            eprintln!(
                "vocab {vocab}, T {temperature}, top_k {top_k}, top_p {top_p}, min_p {min_p}: {kept} tokens kept, total variation {tv:.4} over {draws} draws"
            );
            assert!(tv < bound, "vocab {vocab}, {params:?}: total variation {tv:.4} (bound {bound:.4})");
            let spec = SampleBatch::from(
                &[GpuSample { top_k, top_p, min_p, ..GpuSample::new(temperature, 77, 4) }][..],
            );
            assert_eq!(
                gpu_model.forward_sampled(&inputs[..1], &spec).unwrap(),
                gpu_model.forward_sampled(&inputs[..1], &spec).unwrap()
            );
        }
    }
}

/// Penalties, masks and log-probabilities on the GPU against the host. Two random sets of
/// adjustments, fresh each run (a repetition penalty over a random half of the vocabulary,
/// frequency and presence penalties from random counts; the first set also masks the most likely
/// token), alternate over 16 rows: 2,400 draws of each follow the exact distribution of its
/// adjusted logits, never a masked token; every draw's log-probabilities are the log-softmax of the
/// raw logits (the adjustments undone after the draw), its top 5 the raw logits' five largest; and
/// a greedy draw is the adjusted argmax.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_penalties_and_logprobs_match_the_host() {
    use nanovllm::{LogitAdjustment, argmax, log_softmax};
    use nanovllm_qwen3::SeqInput;
    use nanovllm_qwen3::cuda::{GpuSample, SampleBatch};
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let _turn = turn();
    let gpu = nanovllm_cuda::Gpu::open().unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"));
    let vocab = 300;
    let (mut gpu_model, tables) = sampling_model(&gpu, vocab, 0.1);
    let inputs: Vec<SeqInput<'_>> = tables
        .iter()
        .map(|t| SeqInput { tokens: &SAMPLING_PROMPT, start: 0, block_table: t, logits: 1 })
        .collect();
    let raw = gpu_model.forward(&inputs[..1]).unwrap().pop().unwrap();
    let raw_logprobs = log_softmax(&raw);
    let mut top5: Vec<u32> = (0..vocab as u32).collect();
    top5.sort_by(|&a, &b| raw[b as usize].total_cmp(&raw[a as usize]).then(a.cmp(&b)));
    top5.truncate(5);

    let seed = rand::random::<u64>();
    eprintln!("adjustments from seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let sets: Vec<Vec<LogitAdjustment>> = (0..2)
        .map(|set| {
            let mut tokens: Vec<u32> = (0..vocab as u32).filter(|_| rng.random_bool(0.5)).collect();
            if set == 0 && !tokens.contains(&top5[0]) {
                tokens.push(top5[0]);
            }
            tokens
                .into_iter()
                .map(|token| LogitAdjustment {
                    token,
                    repetition: rng.random_range(1.0f32..2.0),
                    subtract: if set == 0 && token == top5[0] {
                        f32::INFINITY
                    } else {
                        0.5 * rng.random_range(0..4) as f32 + 0.2
                    },
                })
                .collect()
        })
        .collect();
    let adjusted: Vec<Vec<f32>> = sets
        .iter()
        .map(|adjustments| {
            let mut l = raw.clone();
            for a in adjustments {
                l[a.token as usize] = a.apply(l[a.token as usize]);
            }
            l
        })
        .collect();
    let params = SamplingParams { temperature: 1.0, top_k: Some(20), ..SamplingParams::default() };
    let expected: Vec<Vec<f64>> = adjusted.iter().map(|l| sampling_reference::exact(l, &params)).collect();
    let unadjusted = sampling_reference::exact(&raw, &params);
    let batch = |round: u64, temperature: f32| {
        let mut batch = SampleBatch::default();
        for i in 0..ROWS {
            let sample = GpuSample {
                top_k: 20,
                logprobs: Some(5),
                ..GpuSample::new(temperature, round * 64 + i as u64, 4)
            };
            batch.push(sample, |out| out.extend_from_slice(&sets[i % 2]));
        }
        batch
    };
    let mut counts = vec![vec![0usize; vocab]; 2];
    let rounds = 300;
    for round in 0..rounds {
        let drawn = gpu_model.forward_sampled(&inputs, &batch(round, 1.0)).unwrap();
        for (row, sampled) in drawn.iter().enumerate() {
            let token = sampled.token as usize;
            assert!(expected[row % 2][token] > 0.0, "row {row}: drew token {token}, outside the kept set");
            counts[row % 2][token] += 1;
            let logprobs = sampled.logprobs.as_ref().expect("logprobs were asked for");
            assert_eq!(logprobs.token, sampled.token);
            assert!((logprobs.logprob as f64 - raw_logprobs[token]).abs() < 1e-4, "row {row}: {logprobs:?}");
            let top: Vec<u32> = logprobs.top.iter().map(|&(id, _)| id).collect();
            assert_eq!(top, top5, "row {row}: the raw logits' five largest");
            for &(id, lp) in &logprobs.top {
                assert!((lp as f64 - raw_logprobs[id as usize]).abs() < 1e-4, "row {row}: {logprobs:?}");
            }
        }
    }
    let draws = rounds as f64 * (ROWS / 2) as f64;
    // 2,400 draws over at most 20 tokens: about 0.5 sqrt(20 / 2400) = 0.045 of noise.
    let bound = 0.08;
    for (set, (expected, counts)) in expected.iter().zip(&counts).enumerate() {
        let seen: Vec<f64> = counts.iter().map(|&c| c as f64 / draws).collect();
        let tv = sampling_reference::total_variation(expected, &seen);
        let moved = sampling_reference::total_variation(expected, &unadjusted);
        eprintln!("set {set}: total variation {tv:.4} over {draws} draws; the adjustments move {moved:.4}");
        assert!(moved > 2.0 * bound, "set {set}: adjustments too weak for the test to see them");
        assert!(tv < bound, "set {set}: total variation {tv:.4} (bound {bound})");
    }
    let greedy = gpu_model.forward_sampled(&inputs, &batch(0, 0.0)).unwrap();
    for (row, sampled) in greedy.iter().enumerate() {
        assert_eq!(sampled.token, argmax(&adjusted[row % 2]), "row {row}: greedy after adjustments");
    }
}

//! The whole engine (scheduler, paged cache, model, sampler) against HF transformers' greedy
//! continuations, and its promises: reproducible seeds, batch invariance, bad requests refused
//! alone, a budget too small refused at start, a schedule that its replay predicts.

mod common;

use std::path::Path;

use common::{fixture, hf_greedy, settings};
use nanovllm::{
    CacheDtype, EngineConfig, EngineError, LLM, LoadFormat, Prompt, SamplingParams, SchedulerConfig,
    StepPolicy, replay,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;

fn greedy_ignoring_eos(max_tokens: usize) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) }
}

#[test]
fn greedy_generation_matches_hf_through_the_whole_engine() {
    for name in ["gqa-tied", "mha-untied-sharded", "head-dim-128"] {
        let cases = hf_greedy(name);
        // Three copies of every prompt in one batch: prefix-cache hits, chunked prefill, and, in a
        // cache of 512 tokens for about 700, preemption.
        let prompts: Vec<Prompt> =
            (0..3).flat_map(|_| cases.iter().map(|(p, _)| Prompt::Tokens(p.clone()))).collect();
        let mut llm =
            LLM::load(&fixture(name), settings(name, CacheDtype::F32, 512), LoadFormat::Safetensors).unwrap();
        let outputs = llm.generate(prompts, &greedy_ignoring_eos(24)).unwrap();
        assert!(llm.scheduler().num_preemptions() > 0, "{name}: the budget is meant to preempt");
        for (output, (_, expected)) in outputs.iter().zip(cases.iter().cycle()) {
            assert_eq!(&output.as_ref().unwrap().token_ids, expected, "{name}");
        }
    }
}

#[test]
fn the_int8_cache_mostly_agrees_with_hf_greedy() {
    let cases = hf_greedy("gqa-tied");
    let prompts = cases.iter().map(|(p, _)| Prompt::Tokens(p.clone())).collect();
    let mut llm = LLM::load(
        &fixture("gqa-tied"),
        settings("gqa-tied", CacheDtype::Int8, 4096),
        LoadFormat::Safetensors,
    )
    .unwrap();
    let outputs = llm.generate(prompts, &greedy_ignoring_eos(24)).unwrap();
    // Tokens up to the first disagreement: with a bf16 scale per row the first steps agree.
    let agreeing: usize = outputs
        .iter()
        .zip(&cases)
        .map(|(o, (_, hf))| o.as_ref().unwrap().token_ids.iter().zip(hf).take_while(|(a, b)| a == b).count())
        .sum();
    assert!(agreeing >= cases.len() * 12, "only {agreeing} leading tokens agree");
}

fn sampled(llm_seed: u64, prompts: &[Vec<u32>], request_seed: Option<u64>) -> Vec<Vec<u32>> {
    let config = EngineConfig { seed: llm_seed, ..settings("gqa-tied", CacheDtype::Bf16, 2048) };
    let mut llm = LLM::load(&fixture("gqa-tied"), config, LoadFormat::Safetensors).unwrap();
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        top_k: Some(50),
        seed: request_seed,
        max_tokens: 16,
        ignore_eos: true,
        ..Default::default()
    };
    let prompts = prompts.iter().map(|p| Prompt::Tokens(p.clone())).collect();
    llm.generate(prompts, &params).unwrap().into_iter().map(|o| o.unwrap().token_ids).collect()
}

#[test]
fn a_seed_fixes_the_output_whatever_else_is_batched() {
    let alone = sampled(1, &[vec![5, 6, 7]], Some(42));
    let batched = sampled(2, &[vec![9; 40], vec![5, 6, 7], vec![1, 2]], Some(42));
    assert_eq!(alone[0], batched[1], "same request, same seed, other company");
    // In a batch of 256.
    let mut crowd: Vec<Vec<u32>> = (0..255u32).map(|i| vec![1 + i % 50, 2 + i % 7, 3]).collect();
    crowd.insert(128, vec![5, 6, 7]);
    assert_eq!(sampled(3, &crowd, Some(42))[128], alone[0], "same seed in a batch of 256");
    assert_ne!(sampled(1, &[vec![5, 6, 7]], Some(43))[0], alone[0], "another seed, another sample");
    // Without per-request seeds, the engine seed fixes the run.
    assert_eq!(sampled(7, &[vec![5, 6, 7], vec![8]], None), sampled(7, &[vec![5, 6, 7], vec![8]], None));
}

#[test]
fn greedy_output_does_not_depend_on_the_batch() {
    let mixed = StepPolicy::Mixed { max_prefill_tokens: 16 };
    for (dtype, step_policy) in [
        (CacheDtype::Bf16, StepPolicy::PrefillFirst),
        (CacheDtype::Int8, StepPolicy::PrefillFirst),
        (CacheDtype::Bf16, mixed),
        (CacheDtype::Int8, mixed),
    ] {
        let run = |prompts: Vec<Vec<u32>>| {
            let settings = EngineConfig { step_policy, ..settings("mha-untied-sharded", dtype, 2048) };
            let mut llm =
                LLM::load(&fixture("mha-untied-sharded"), settings, LoadFormat::Safetensors).unwrap();
            let prompts = prompts.into_iter().map(Prompt::Tokens).collect();
            llm.generate(prompts, &greedy_ignoring_eos(20))
                .unwrap()
                .into_iter()
                .map(|o| o.unwrap().token_ids)
                .collect::<Vec<_>>()
        };
        let alone = run(vec![vec![3, 1, 4, 1, 5, 9, 2, 6]]);
        let batched = run(vec![vec![7; 30], vec![3, 1, 4, 1, 5, 9, 2, 6], (0..100).collect()]);
        assert_eq!(alone[0], batched[1], "{dtype} {step_policy:?}");
    }
}

#[test]
fn bad_requests_are_refused_alone_and_the_others_finish() {
    let mut llm = LLM::load(
        &fixture("gqa-tied"),
        settings("gqa-tied", CacheDtype::Bf16, 1024),
        LoadFormat::Safetensors,
    )
    .unwrap();
    let prompts = vec![
        Prompt::Tokens(vec![1, 2, 3]),
        Prompt::Tokens(vec![1; 500]),
        Prompt::Tokens(vec![]),
        Prompt::Tokens(vec![600]),
        Prompt::Text("no tokenizer here".into()),
        Prompt::Tokens(vec![4, 5]),
    ];
    let outputs = llm.generate(prompts, &greedy_ignoring_eos(16)).unwrap();
    let messages: Vec<String> =
        outputs.iter().map(|o| o.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into())).collect();
    assert_eq!(messages[0], "ok");
    assert_eq!(
        messages[1],
        "request too long: prompt of 500 tokens + max_tokens 16 = 516 > max_model_len 512"
    );
    assert_eq!(messages[2], "empty prompt: a request needs at least one token");
    assert_eq!(messages[3], "invalid prompt: token id 600 is outside the vocabulary of 512");
    assert!(messages[4].starts_with("text prompts need a tokenizer"));
    assert_eq!(messages[5], "ok");
}

#[test]
fn a_kv_budget_below_one_sequence_lowers_the_models_context_or_refuses_a_given_one() {
    // 500 tokens of budget are 31 blocks of 16; the model's context is 512.
    let small = settings("gqa-tied", CacheDtype::Bf16, 500);
    let llm = LLM::load(&fixture("gqa-tied"), small.clone(), LoadFormat::Safetensors).unwrap();
    assert_eq!(llm.scheduler().config().max_model_len, 496);
    assert!(llm.describe_cache().contains("max_model_len 496 (lowered from the model's 512"));
    let too_long = llm.scheduler().config().max_model_len + 1;
    let mut llm = llm;
    assert!(matches!(
        llm.add_request(Prompt::Tokens(vec![1; too_long - 8]), greedy_ignoring_eos(9)),
        Err(EngineError::ContextLength(_))
    ));

    let given = EngineConfig { max_model_len: Some(512), ..small };
    let err = LLM::load(&fixture("gqa-tied"), given, LoadFormat::Safetensors).unwrap_err();
    assert!(matches!(err, EngineError::Config { field: "kv_cache_memory", .. }));
    assert!(err.to_string().contains("less than one sequence of max_model_len 512"), "{err}");
}

#[test]
fn the_engine_schedules_a_benchmark_as_its_replay_predicts() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<(Vec<u32>, usize)> = (0..16)
        .map(|_| {
            let prompt = (0..rng.random_range(40..100)).map(|_| rng.random_range(1..512)).collect();
            (prompt, rng.random_range(30..60))
        })
        .collect();
    let settings = settings("gqa-tied", CacheDtype::Int8, 512);
    let mut llm = LLM::load(&fixture("gqa-tied"), settings.clone(), LoadFormat::Safetensors).unwrap();
    for (prompt, max_tokens) in &requests {
        let params =
            SamplingParams { max_tokens: *max_tokens, ignore_eos: true, ..SamplingParams::default() };
        llm.add_request(Prompt::Tokens(prompt.clone()), params).unwrap();
    }
    while !llm.is_finished() {
        llm.step().unwrap();
    }
    let model_config = llm.model_config();
    let predicted_config = settings.scheduler_config(model_config, settings.kv_cache_memory_bytes.unwrap());
    let engine_config = llm.scheduler().config();
    assert_eq!(predicted_config.unwrap(), SchedulerConfig { eos_token_ids: vec![], ..engine_config.clone() });
    let predicted = replay(engine_config.clone(), requests).unwrap();
    assert!(predicted.preemptions > 0, "seed {seed}: the budget is meant to preempt");
    assert_eq!(llm.stats().schedule, predicted, "seed {seed}");
}

#[test]
fn dummy_weights_need_only_the_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-random-qwen3");
    let config =
        EngineConfig { kv_cache_memory_bytes: Some(64 << 20), block_size: 16, ..EngineConfig::default() };
    let mut llm = LLM::load(&dir, config, LoadFormat::Dummy).unwrap();
    let prompt = llm.chat_prompt("Hello", false).unwrap();
    let outputs = llm.generate(vec![Prompt::Text(prompt)], &greedy_ignoring_eos(5)).unwrap();
    let completion = outputs[0].as_ref().unwrap();
    assert_eq!(completion.token_ids.len(), 5);
    assert!(completion.text.is_some());
}

#[test]
fn scoring_gives_hf_logits_at_every_prompt_end() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gqa-tied").join("hf_reference.json")).unwrap(),
    )
    .unwrap();
    let mut llm =
        LLM::load(&fixture("gqa-tied"), settings("gqa-tied", CacheDtype::F32, 1024), LoadFormat::Safetensors)
            .unwrap();
    let case = &reference["prompts"][4]; // 150 tokens
    let prompt: Vec<u32> =
        case["prompt"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let hf: Vec<f32> =
        case["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let rows = llm.score(&prompt).unwrap();
    assert_eq!(rows.len(), prompt.len());
    let scale = hf.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let error = rows[prompt.len() - 1].iter().zip(&hf).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(error <= 1e-4, "{error}");
    // Causal: the scores of a prefix are the first rows of the whole prompt's scores.
    let prefix = llm.score(&prompt[..40]).unwrap();
    for (a, b) in prefix.iter().zip(&rows) {
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * scale));
    }
}

#[test]
fn an_aborted_request_frees_its_blocks_at_once_and_the_others_finish() {
    let name = "gqa-tied";
    let mut llm =
        LLM::load(&fixture(name), settings(name, CacheDtype::Int8, 512), LoadFormat::Safetensors).unwrap();
    let cases = hf_greedy(name);
    let ids: Vec<_> = cases
        .iter()
        .take(3)
        .map(|(prompt, _)| llm.add_request(Prompt::Tokens(prompt.clone()), greedy_ignoring_eos(24)).unwrap())
        .collect();
    llm.step().unwrap();
    llm.step().unwrap();
    let blocks = llm.scheduler().block_manager();
    let free_before = blocks.num_free_blocks();
    let aborted = llm.abort(ids[1]).unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!(aborted[0].finish_reason, nanovllm::FinishReason::Abort);
    assert!(llm.scheduler().block_manager().num_free_blocks() > free_before, "its blocks are free at once");
    assert!(llm.abort(ids[1]).unwrap().is_empty(), "a second abort finds nothing");
    let mut finished = Vec::new();
    while !llm.is_finished() {
        finished.extend(llm.step().unwrap().finished);
    }
    assert_eq!(finished.len(), 2);
    assert!(
        finished.iter().all(|c| c.finish_reason == nanovllm::FinishReason::Length && c.token_ids.len() == 24)
    );
    let blocks = llm.scheduler().block_manager();
    assert_eq!(blocks.num_free_blocks(), blocks.num_blocks());
}

/// `n` samples of one prompt: the prompt's tokens are computed once (the engine's prefill count),
/// the siblings read the parent's shared blocks and a copy of its partly filled one, so greedy
/// samples are all HF's greedy continuation, in both dtypes; and sampled ones are, sample by sample,
/// what a single request with seed + i draws (vLLM's rule).
#[test]
fn n_samples_compute_the_prompt_once_and_draw_from_seed_plus_index() {
    let name = "gqa-tied";
    let (prompt, hf) = hf_greedy(name).into_iter().nth(1).unwrap();
    assert!(prompt.len() % 16 != 0, "the prompt ends in a partly filled block, which siblings copy");
    for dtype in [CacheDtype::F32, CacheDtype::Int8] {
        let mut llm =
            LLM::load(&fixture(name), settings(name, dtype, 1024), LoadFormat::Safetensors).unwrap();
        let params = SamplingParams { n: 4, ..greedy_ignoring_eos(hf.len()) };
        let outputs = llm.generate(vec![Prompt::Tokens(prompt.clone())], &params).unwrap();
        assert_eq!(outputs.len(), 4);
        assert_eq!(llm.stats().schedule.prefill_tokens, prompt.len(), "{dtype}: the prompt once");
        for (index, output) in outputs.into_iter().enumerate() {
            let output = output.unwrap();
            assert_eq!(output.index, index);
            if dtype == CacheDtype::F32 {
                assert_eq!(output.token_ids, hf, "{dtype}: sample {index} is HF's greedy continuation");
            }
        }
        let blocks = llm.scheduler().block_manager();
        assert_eq!(blocks.num_free_blocks(), blocks.num_blocks());
    }
    let sampling = SamplingParams {
        temperature: 1.0,
        seed: Some(9),
        max_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    };
    let run = |params: SamplingParams| {
        let config = settings(name, CacheDtype::F32, 1024);
        let mut llm = LLM::load(&fixture(name), config, LoadFormat::Safetensors).unwrap();
        let outputs = llm.generate(vec![Prompt::Tokens(prompt.clone())], &params).unwrap();
        outputs.into_iter().map(|o| o.unwrap().token_ids).collect::<Vec<_>>()
    };
    let together = run(SamplingParams { n: 3, ..sampling.clone() });
    for (index, sample) in together.iter().enumerate() {
        let alone = run(SamplingParams { seed: Some(9 + index as u64), ..sampling.clone() });
        assert_eq!(sample, &alone[0], "sample {index} draws as a request with seed 9 + {index}");
    }
    assert_ne!(together[0], together[1], "samples draw apart");
}

#[test]
fn aborting_a_request_ends_all_its_samples() {
    let name = "gqa-tied";
    let mut llm =
        LLM::load(&fixture(name), settings(name, CacheDtype::Int8, 512), LoadFormat::Safetensors).unwrap();
    let (prompt, _) = hf_greedy(name).into_iter().next().unwrap();
    let id = llm
        .add_request(Prompt::Tokens(prompt.clone()), SamplingParams { n: 3, ..greedy_ignoring_eos(20) })
        .unwrap();
    // Before its prefill: the samples never forked are aborted too.
    let aborted = llm.abort(id).unwrap();
    assert_eq!(aborted.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 1, 2]);
    let id =
        llm.add_request(Prompt::Tokens(prompt), SamplingParams { n: 3, ..greedy_ignoring_eos(20) }).unwrap();
    while llm.step().unwrap().phase != Some(nanovllm::Phase::Decode) {}
    let aborted = llm.abort(id).unwrap();
    assert_eq!(aborted.len(), 3);
    assert!(
        aborted.iter().all(|c| c.finish_reason == nanovllm::FinishReason::Abort && !c.token_ids.is_empty())
    );
    assert!(llm.is_finished());
    let blocks = llm.scheduler().block_manager();
    assert_eq!(blocks.num_free_blocks(), blocks.num_blocks());
}

#[test]
fn a_front_end_finishes_one_sample_and_the_others_run_on() {
    let name = "gqa-tied";
    let mut llm =
        LLM::load(&fixture(name), settings(name, CacheDtype::Int8, 512), LoadFormat::Safetensors).unwrap();
    let (prompt, _) = hf_greedy(name).into_iter().next().unwrap();
    let params = SamplingParams { n: 2, detokenize: false, ..greedy_ignoring_eos(12) };
    let id = llm.add_request(Prompt::Tokens(prompt), params).unwrap();
    let mut drawn = 0;
    while drawn < 6 {
        drawn += llm.step().unwrap().tokens.iter().filter(|t| t.index == 1).count();
    }
    let reason = nanovllm::StopReason::Text("found".into());
    let stopped = llm.finish(id, 1, reason.clone()).unwrap().expect("sample 1 was running");
    assert_eq!((stopped.index, stopped.finish_reason), (1, nanovllm::FinishReason::Stop));
    assert_eq!((stopped.stop_reason, stopped.token_ids.len(), stopped.text), (Some(reason.clone()), 6, None));
    assert_eq!(llm.finish(id, 1, reason).unwrap(), None, "already finished");
    let mut rest = Vec::new();
    while !llm.is_finished() {
        rest.extend(llm.step().unwrap().finished);
    }
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0].index, rest[0].token_ids.len()), (0, 12));
    let blocks = llm.scheduler().block_manager();
    assert_eq!(blocks.num_free_blocks(), blocks.num_blocks());
}

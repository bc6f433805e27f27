//! End-to-end greedy regressions on the trained KJV model (models/kjv-qwen3): text prompts through
//! the tokenizer, the engine and each cache dtype, against the greedy continuations HF transformers
//! produced for the same checkpoint (hf_reference.json, written by train.py).
//!
//! A trained model has close calls (two tokens within 0.001 of each other), where a different but
//! correct summation order may pick the other token. Each run is compared token for token up to
//! the first step whose HF margin (top-1 minus top-2 logit) is below the dtype's noise; the test
//! also requires that the compared prefix is long, so that it cannot pass by comparing nothing.

mod kjv_reference;

use kjv_reference::{Case, comparable, generate, hf_cases, model_dir};
use nanovllm::{CacheDtype, EngineConfig, LLM, LoadFormat, Prompt, SamplingParams};

fn engine(dtype: CacheDtype) -> LLM {
    let config = EngineConfig {
        kv_cache_dtype: dtype,
        kv_cache_memory_bytes: Some(8 << 20),
        block_size: 16,
        ..EngineConfig::default()
    };
    LLM::load(&model_dir(), config, LoadFormat::Safetensors).unwrap()
}

fn check(dtype: CacheDtype, noise: f64, min_compared: usize) {
    let cases = hf_cases();
    let outputs = generate(&mut engine(dtype), &cases);
    let mut compared = 0;
    for (case, output) in cases.iter().zip(&outputs) {
        let n = comparable(case, noise);
        assert_eq!(
            output[..n],
            case.greedy[..n],
            "{dtype}, {:?}: differs from HF's greedy tokens",
            case.text
        );
        compared += n;
    }
    assert!(compared >= min_compared, "{dtype}: only {compared} tokens were comparable");
}

#[test]
fn the_f32_cache_writes_hfs_greedy_text() {
    // f32 logits match HF's to about 1e-5 here (docs/ACCURACY.md).
    check(CacheDtype::F32, 1e-3, 150);
}

#[test]
fn the_bf16_and_int8_caches_write_hfs_greedy_text_until_a_close_call() {
    // Measured on the held-out books: mean KL from the f32 cache 2.6e-6 (bf16), 2.9e-5 (int8).
    check(CacheDtype::Bf16, 0.05, 90);
    check(CacheDtype::Int8, 0.05, 90);
}

#[test]
fn the_fp8_cache_writes_hfs_greedy_text_until_a_close_call() {
    // Mean KL from the f32 cache 5.8e-4 on the held-out books (docs/ACCURACY.md), 20x INT8's; the
    // greedy text still holds to the same close-call margin.
    check(CacheDtype::Fp8PerTokenHead, 0.05, 90);
}

#[test]
fn the_int4_cache_writes_hfs_greedy_text_until_a_close_call() {
    // Mean KL from the f32 cache 6.1e-3 on the held-out books (docs/ACCURACY.md), 200x INT8's: a
    // margin of 0.05 is within its noise (it flips one such token), 0.1 is not.
    check(CacheDtype::Int4, 0.1, 60);
}

#[test]
fn the_demo_prompt_continues_as_genesis_does_in_the_training_text() {
    let cases = hf_cases();
    let demo: Vec<Case> = cases.into_iter().filter(|c| c.text == "In the beginning").collect();
    let mut llm = engine(CacheDtype::Int8);
    let output = generate(&mut llm, &demo);
    let text = llm.tokenizer().unwrap().decode(&output[0]).unwrap();
    assert!(text.contains("LORD"), "{text:?}");
}

/// The text of greedy `prompt` under `params` (max 40 tokens, EOS ignored), with its completion.
fn greedy_text(llm: &mut LLM, prompt: &str, params: SamplingParams) -> nanovllm::Completion {
    let params = SamplingParams { ignore_eos: true, ..SamplingParams { max_tokens: 40, ..params } };
    llm.generate(vec![Prompt::from(prompt)], &params).unwrap().remove(0).unwrap()
}

#[test]
fn stop_strings_cut_the_text_where_they_begin_even_across_tokens() {
    let mut llm = engine(CacheDtype::F32);
    let prompt = "And God said";
    let full = greedy_text(&mut llm, prompt, SamplingParams::greedy(40));
    let text = full.text.clone().unwrap();
    let tokenizer = llm.tokenizer().unwrap();
    // A stop string that straddles two tokens: the end of one token's text and the start of the
    // next's, taken from the middle of the text.
    let pieces: Vec<String> = full.token_ids.iter().map(|&t| tokenizer.decode(&[t]).unwrap()).collect();
    let k = pieces.len() / 2;
    let before: String = pieces[..k].concat();
    let tail = pieces[k - 1].chars().rev().take(2).collect::<String>().chars().rev().collect::<String>();
    let head: String = pieces[k].chars().take(2).collect();
    let straddling = format!("{tail}{head}");
    let at = text.find(&straddling).unwrap();
    assert!(at <= before.len(), "the first occurrence is at or before the boundary");
    let stopped = greedy_text(
        &mut llm,
        prompt,
        SamplingParams { stop: vec![straddling.clone()], ..SamplingParams::greedy(40) },
    );
    assert_eq!(stopped.text.as_deref(), Some(&text[..at]), "{straddling:?}");
    assert_eq!(stopped.finish_reason, nanovllm::FinishReason::Stop);
    assert_eq!(stopped.stop_reason, Some(nanovllm::StopReason::Text(straddling.clone())));
    assert!(stopped.token_ids.len() < full.token_ids.len());
    let kept = greedy_text(
        &mut llm,
        prompt,
        SamplingParams {
            stop: vec![straddling.clone()],
            include_stop_str_in_output: true,
            ..SamplingParams::greedy(40)
        },
    );
    assert_eq!(kept.text.as_deref(), Some(&text[..at + straddling.len()]));
    // A stop string that is in the prompt only does not stop the output.
    assert!(!text.contains("God said"));
    let unstopped = greedy_text(
        &mut llm,
        prompt,
        SamplingParams { stop: vec!["God said".into()], ..SamplingParams::greedy(40) },
    );
    assert_eq!(unstopped.text, full.text);
    assert_eq!(unstopped.finish_reason, nanovllm::FinishReason::Length);
}

#[test]
fn logprobs_are_the_log_softmax_of_the_models_logits() {
    let mut llm = engine(CacheDtype::F32);
    let params = SamplingParams { logprobs: Some(4), ..SamplingParams::greedy(12) };
    let completion = greedy_text(&mut llm, "In the beginning", params);
    let logprobs = completion.logprobs.as_ref().unwrap();
    assert_eq!(logprobs.len(), completion.token_ids.len());
    let all: Vec<u32> = completion.prompt_token_ids.iter().chain(&completion.token_ids).copied().collect();
    let logits = llm.score(&all).unwrap();
    let start = completion.prompt_token_ids.len() - 1;
    for (i, token) in logprobs.iter().enumerate() {
        let reference = nanovllm::log_softmax(&logits[start + i]);
        assert_eq!(token.token, completion.token_ids[i]);
        assert!((token.logprob as f64 - reference[token.token as usize]).abs() < 1e-4, "token {i}");
        assert_eq!(token.top.len(), 4);
        assert_eq!(token.top[0].0, token.token, "greedy takes the most likely token");
        for &(t, l) in &token.top {
            assert!((l as f64 - reference[t as usize]).abs() < 1e-4);
        }
    }
}

//! The CPU forward pass against HF transformers' fp32 logits and greedy continuations, on the
//! random-weight fixtures made by `tests/fixtures/make_fixtures.py`; and the bf16/INT8 caches,
//! prefix-cache hits, chunked prefill and batching against the exact f32-cache run.

use std::path::{Path, PathBuf};

use nanovllm_kv_cache::{Bf16, BlockManager, BlockTable, F32, Int8, KvCache, StorageDtype};
use nanovllm_qwen3::{Qwen3Model, SeqInput, argmax, log_softmax};
use serde_json::Value;

const FIXTURES: [&str; 4] = ["gqa-tied", "mha-untied-sharded", "head-dim-128", "yarn"];
const BLOCK_SIZE: usize = 16;
const NUM_BLOCKS: usize = 64;

struct Case {
    prompt: Vec<u32>,
    logits: Vec<f32>,
    greedy: Vec<u32>,
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load(name: &str) -> (Qwen3Model, Vec<Case>) {
    let dir = fixture_dir(name);
    let model = Qwen3Model::load(&dir).unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hf_reference.json")).unwrap()).unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let cases = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Case {
            prompt: ids(&p["prompt"]),
            logits: p["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            greedy: ids(&p["greedy"]),
        })
        .collect();
    (model, cases)
}

fn new_cache<T: StorageDtype>(model: &Qwen3Model) -> (BlockManager, KvCache<T>) {
    (
        BlockManager::new(NUM_BLOCKS, BLOCK_SIZE).unwrap(),
        KvCache::new(model.cache_layout(NUM_BLOCKS, BLOCK_SIZE)).unwrap(),
    )
}

/// Prefill `prompt` in chunks of `chunk` tokens after any prefix-cache hit, returning the last
/// token's logits, the table, and the number of tokens served from the cache.
fn prefill<T: StorageDtype>(
    model: &Qwen3Model,
    blocks: &mut BlockManager,
    cache: &mut KvCache<T>,
    prompt: &[u32],
    chunk: usize,
) -> (Vec<f32>, BlockTable, usize) {
    let (mut table, cached) = blocks.allocate(prompt).unwrap();
    let mut logits = Vec::new();
    let mut start = cached;
    while start < prompt.len() {
        let end = start.saturating_add(chunk).min(prompt.len());
        let input = SeqInput {
            tokens: &prompt[start..end],
            start,
            block_table: &table,
            logits: usize::from(end == prompt.len()),
        };
        logits = model.forward(&[input], cache).unwrap().pop().unwrap_or_default();
        start = end;
    }
    blocks.register_computed(&mut table, prompt, prompt.len());
    (logits, table, cached)
}

/// Decoding through the paged cache: a prefill, then one token per step, each step's token chosen
/// by `choose` from the step's logits. Returns the chosen tokens and every step's logits.
fn decode<T: StorageDtype>(
    model: &Qwen3Model,
    prompt: &[u32],
    steps: usize,
    mut choose: impl FnMut(usize, &[f32]) -> u32,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let (mut blocks, mut cache) = new_cache::<T>(model);
    let (mut logits, mut table, _) = prefill(model, &mut blocks, &mut cache, prompt, usize::MAX);
    let mut tokens = prompt.to_vec();
    let mut all_logits = vec![logits.clone()];
    for step in 0..steps {
        tokens.push(choose(step, &logits));
        if step + 1 == steps {
            break;
        }
        blocks.may_append(&mut table, tokens.len()).unwrap();
        let input = SeqInput {
            tokens: &tokens[tokens.len() - 1..],
            start: tokens.len() - 1,
            block_table: &table,
            logits: 1,
        };
        logits = model.forward(&[input], &mut cache).unwrap().pop().unwrap();
        all_logits.push(logits.clone());
    }
    (tokens[prompt.len()..].to_vec(), all_logits)
}

fn greedy<T: StorageDtype>(model: &Qwen3Model, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    decode::<T>(model, prompt, steps, |_, logits| argmax(logits))
}

/// Every step's logits when the continuation is forced to `tokens` (teacher forcing), so that
/// caches of different dtypes are compared on the same sequence.
fn forced<T: StorageDtype>(model: &Qwen3Model, prompt: &[u32], tokens: &[u32]) -> Vec<Vec<f32>> {
    decode::<T>(model, prompt, tokens.len(), |step, _| tokens[step]).1
}

/// `max |a - b| / max |b|`.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// KL(softmax(p) || softmax(q)) in nats.
fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

#[test]
fn logits_match_hf_transformers_fp32() {
    for name in FIXTURES {
        let (model, cases) = load(name);
        for case in &cases {
            let (mut blocks, mut cache) = new_cache::<F32>(&model);
            let (logits, _, _) = prefill(&model, &mut blocks, &mut cache, &case.prompt, usize::MAX);
            let error = relative_error(&logits, &case.logits);
            assert!(error <= 1e-4, "{name}, prompt of {}: relative error {error:e}", case.prompt.len());
        }
    }
}

#[test]
fn greedy_continuations_match_hf_token_for_token() {
    for name in FIXTURES {
        let (model, cases) = load(name);
        for case in &cases {
            let (tokens, _) = greedy::<F32>(&model, &case.prompt, case.greedy.len());
            assert_eq!(tokens, case.greedy, "{name}, prompt of {}", case.prompt.len());
        }
    }
}

/// The bound we state for the INT8 cache on these fixtures: mean KL(f32 cache || int8 cache), in
/// nats per token, over every step of the f32 cache's greedy continuation, with both runs fed the
/// same tokens. The bf16 cache is measured beside it for comparison.
const INT8_MEAN_KL_BOUND: f64 = 1e-3;

#[test]
fn int8_and_bf16_caches_stay_close_to_the_exact_cache() {
    for name in FIXTURES {
        let (model, cases) = load(name);
        let (mut kl_int8, mut kl_bf16, mut agree, mut count) = (0.0, 0.0, 0, 0);
        for case in &cases {
            let (tokens, exact) = greedy::<F32>(&model, &case.prompt, case.greedy.len());
            let int8 = forced::<Int8>(&model, &case.prompt, &tokens);
            let bf16 = forced::<Bf16>(&model, &case.prompt, &tokens);
            for ((e, i), b) in exact.iter().zip(&int8).zip(&bf16) {
                kl_int8 += kl_divergence(e, i);
                kl_bf16 += kl_divergence(e, b);
                agree += usize::from(argmax(e) == argmax(i));
                count += 1;
            }
        }
        let (kl_int8, kl_bf16) = (kl_int8 / count as f64, kl_bf16 / count as f64);
        eprintln!(
            "{name}: mean KL vs the f32 cache over {count} steps: int8 {kl_int8:.2e}, bf16 {kl_bf16:.2e} nats; int8 top-1 agreement {agree}/{count}"
        );
        assert!(kl_int8 <= INT8_MEAN_KL_BOUND, "{name}: int8 mean KL {kl_int8:e}");
    }
}

fn check_chunked_and_prefix_cached<T: StorageDtype>() {
    let (model, cases) = load("gqa-tied");
    let prompt = &cases.last().unwrap().prompt; // 150 tokens: many blocks
    let (mut blocks, mut cache) = new_cache::<T>(&model);
    let (plain, _, _) = prefill(&model, &mut blocks, &mut cache, prompt, usize::MAX);
    for chunk in [1, 7, 16, 33] {
        let (mut blocks, mut cache) = new_cache::<T>(&model);
        let (chunked, _, _) = prefill(&model, &mut blocks, &mut cache, prompt, chunk);
        assert!(relative_error(&chunked, &plain) <= 1e-5, "chunk {chunk}");
    }
    // A second prompt sharing the first 100 tokens hits 6 cached blocks of the first one.
    let mut other = prompt[..100].to_vec();
    other.extend([3, 1, 4, 1, 5, 9, 2, 6]);
    let (mut fresh_blocks, mut fresh_cache) = new_cache::<T>(&model);
    let (expected, _, _) = prefill(&model, &mut fresh_blocks, &mut fresh_cache, &other, usize::MAX);
    let (hit, _, cached) = prefill(&model, &mut blocks, &mut cache, &other, usize::MAX);
    assert_eq!(cached, 96, "the six shared blocks are served from the cache");
    assert!(relative_error(&hit, &expected) <= 1e-5);
}

#[test]
fn chunked_and_prefix_cached_prefills_equal_plain_ones() {
    check_chunked_and_prefix_cached::<F32>();
    check_chunked_and_prefix_cached::<Bf16>();
    check_chunked_and_prefix_cached::<Int8>();
}

#[test]
fn a_batch_gives_each_sequence_its_own_logits() {
    let (model, cases) = load("mha-untied-sharded");
    let (mut blocks, mut cache) = new_cache::<F32>(&model);
    let tables: Vec<BlockTable> = cases.iter().map(|c| blocks.allocate(&c.prompt).unwrap().0).collect();
    let inputs: Vec<SeqInput> = cases
        .iter()
        .zip(&tables)
        .map(|(c, t)| SeqInput { tokens: &c.prompt, start: 0, block_table: t, logits: 1 })
        .collect();
    let logits = model.forward(&inputs, &mut cache).unwrap();
    for (case, logits) in cases.iter().zip(&logits) {
        assert!(relative_error(logits, &case.logits) <= 1e-4);
    }
}

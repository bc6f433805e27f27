//! Accuracy of candidate KV-cache formats on a trained model, before any of them gets kernels:
//! each format's round trip (quantize, read back) is applied to every K and V row as it is stored,
//! and the model scores a text with that cache against the f32 cache: perplexity, mean
//! KL(f32 || format) per token, top-1 agreement. The formats: INT8 and FP8 (the cache's own, as
//! a check against `nanovllm-cli eval`), and 4-bit codes per row or per group of 32, symmetric or
//! asymmetric, with and without a Hadamard rotation of every row (undone as it is read; in a
//! kernel the queries would be rotated instead for keys, and the output for values); and KIVI's
//! layout: a sequence's newest tokens, up to a group of 32 positions, stay full precision, and a
//! group that fills is quantized, keys per channel over its 32 tokens (a scale per channel per
//! group, which lives per block rather than per row) and values per row in groups of 32. The same
//! full-precision window with keys per row tells the window's share from the key axis's.
//!
//! `cargo run --release -p nanovllm --example cache_format_study -- models/kjv-qwen3 models/kjv-qwen3/data/heldout.txt [max_tokens]`
//! (the held-out text is written by `models/kjv-qwen3/prepare_data.py`). Windows of 512 tokens,
//! stride 256, as `nanovllm-cli eval --context 512`. One JSON line per format.

use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;

use nanovllm::{Tokenizer, argmax, log_softmax};
use nanovllm_kv_cache::{BlockManager, BlockTable, F32, KvCache, Row, StorageDtype};
use nanovllm_kv_quant::{
    CacheDtype, F8E4M3, INT4_GROUP, Int4Group, Int4Scheme, dequantize_row, dequantize_row_fp8,
    dequantize_row_int4, hadamard_in_place, quantize_row, quantize_row_fp8, quantize_row_int4,
};
use nanovllm_qwen3::{Qwen3Model, SeqInput};

const CONTEXT: usize = 512;
const STRIDE: usize = 256;
const BLOCK: usize = 16;
/// One-token queries per forward pass when the cache is not changed between passes.
const SCORE_BATCH: usize = 256;
/// Positions per KIVI group: the full-precision window, and the tokens a key channel's scale
/// spans.
const KIVI_GROUP: usize = 32;

/// A format's round trip of one row, in place.
trait RoundTrip: Send + Sync + 'static {
    fn round_trip(row: &mut [f32]);
}

/// Rows stored as f32 after the round trip of `R`: attention then reads exactly the values the
/// format gives back (the bytes are the f32 cache's; only accuracy is measured here).
struct Simulated<R>(PhantomData<R>);

impl<R: RoundTrip> StorageDtype for Simulated<R> {
    type Elem = f32;
    type Side = ();
    const DTYPE: CacheDtype = CacheDtype::F32;

    fn store_row(src: &[f32], dst: &mut [f32], _: &mut [()]) {
        dst.copy_from_slice(src);
        R::round_trip(dst);
    }
    fn dot(row: &[f32], side: &[()], q: &[f32]) -> f32 {
        F32::dot(row, side, q)
    }
    fn add_scaled(row: &[f32], side: &[()], weight: f32, acc: &mut [f32]) {
        F32::add_scaled(row, side, weight, acc)
    }
}

struct Int8;
impl RoundTrip for Int8 {
    fn round_trip(row: &mut [f32]) {
        let mut codes = vec![0i8; row.len()];
        let scale = quantize_row(row, &mut codes).expect("same lengths");
        dequantize_row(&codes, scale, row).expect("same lengths");
    }
}

struct Fp8;
impl RoundTrip for Fp8 {
    fn round_trip(row: &mut [f32]) {
        let mut codes = vec![F8E4M3::ZERO; row.len()];
        let scale = quantize_row_fp8(row, &mut codes).expect("same lengths");
        dequantize_row_fp8(&codes, scale, row).expect("same lengths");
    }
}

/// 4-bit codes in groups of `GROUP` values (0: the whole row), asymmetric if `ASYMMETRIC`, the
/// row rotated first if `ROTATED`.
struct Int4<const GROUP: usize, const ASYMMETRIC: bool, const ROTATED: bool>;
impl<const GROUP: usize, const ASYMMETRIC: bool, const ROTATED: bool> RoundTrip
    for Int4<GROUP, ASYMMETRIC, ROTATED>
{
    fn round_trip(row: &mut [f32]) {
        if ROTATED {
            hadamard_in_place(row).expect("head_dim is a power of two");
        }
        let group = if GROUP == 0 { row.len() } else { GROUP };
        let scheme = if ASYMMETRIC { Int4Scheme::Asymmetric } else { Int4Scheme::Symmetric };
        int4_round_trip(row, group, scheme);
        if ROTATED {
            hadamard_in_place(row).expect("head_dim is a power of two");
        }
    }
}

/// The logits at every position of each window, as `LLM::score` computes them: one-token queries
/// over a fresh cache of `T`, `chunk` positions per forward pass, with `after_chunk` applied to
/// the cache after each pass (to the chunk's positions).
fn score<T: StorageDtype>(
    model: &Qwen3Model,
    windows: &[(usize, &[u32])],
    chunk: usize,
    after_chunk: impl Fn(&mut KvCache<T>, &BlockTable, Range<usize>),
) -> Vec<Vec<Vec<f32>>> {
    let blocks = CONTEXT.div_ceil(BLOCK);
    windows
        .iter()
        .map(|&(_, window)| {
            let mut cache = KvCache::<T>::new(model.cache_layout(blocks, BLOCK)).expect("a valid layout");
            let mut manager = BlockManager::new(blocks, BLOCK).expect("blocks");
            let (table, _) = manager.allocate(window).expect("one window fits");
            let mut logits = Vec::new();
            for start in (0..window.len()).step_by(chunk) {
                let positions = start..(start + chunk).min(window.len());
                let inputs: Vec<SeqInput<'_>> = positions
                    .clone()
                    .map(|pos| SeqInput {
                        tokens: &window[pos..pos + 1],
                        start: pos,
                        block_table: &table,
                        logits: 1,
                    })
                    .collect();
                logits.extend(model.forward(&inputs, &mut cache).expect("forward"));
                after_chunk(&mut cache, &table, positions);
            }
            logits
        })
        .collect()
}

/// Nothing between forward passes: the format's round trip happens as rows are stored.
fn unchanged<T: StorageDtype>(_: &mut KvCache<T>, _: &BlockTable, _: Range<usize>) {}

/// The 4-bit round trip of `values` in groups of `group` (in place).
fn int4_round_trip(values: &mut [f32], group: usize, scheme: Int4Scheme) {
    let mut codes = vec![0u8; values.len()];
    let mut groups = vec![Int4Group::default(); values.len().div_ceil(group)];
    quantize_row_int4(values, group, scheme, &mut codes, &mut groups).expect("shapes fit");
    dequantize_row_int4(&codes, group, scheme, &groups, values).expect("shapes fit");
}

/// KIVI's step: once `positions` fill a whole group, quantize that group's K and V in every layer
/// of an f32 cache (the rows of a partial group, the newest tokens, stay as they are). Values are
/// quantized per row in groups of 32; keys per channel over the group's tokens if
/// `keys_per_channel`, else per row as the values.
fn quantize_full_group(
    cache: &mut KvCache<F32>,
    table: &BlockTable,
    positions: Range<usize>,
    keys_per_channel: bool,
    scheme: Int4Scheme,
) {
    if positions.len() < KIVI_GROUP {
        return;
    }
    let layout = *cache.layout();
    let (heads, dim) = (layout.kv_heads, layout.head_dim);
    let slots = table.slot_mapping(positions.clone(), BLOCK).expect("the window's blocks");
    let read = |rows: &mut Vec<f32>, row: Row<'_, F32>| rows.extend(row.to_f32());
    for layer in 0..layout.num_layers {
        // [token][kv_head][head_dim], as `KvCache::write` takes them.
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for pos in positions.clone() {
            for head in 0..heads {
                read(&mut keys, cache.key(layer, table, pos, head).expect("stored"));
                read(&mut values, cache.value(layer, table, pos, head).expect("stored"));
            }
        }
        for row in values.chunks_exact_mut(dim) {
            int4_round_trip(row, INT4_GROUP, scheme);
        }
        if keys_per_channel {
            let mut channel = vec![0.0f32; KIVI_GROUP];
            for head in 0..heads {
                for c in 0..dim {
                    let at = |token: usize| (token * heads + head) * dim + c;
                    channel.iter_mut().enumerate().for_each(|(t, x)| *x = keys[at(t)]);
                    int4_round_trip(&mut channel, KIVI_GROUP, scheme);
                    channel.iter().enumerate().for_each(|(t, &x)| keys[at(t)] = x);
                }
            }
        } else {
            for row in keys.chunks_exact_mut(dim) {
                int4_round_trip(row, INT4_GROUP, scheme);
            }
        }
        cache.write(layer, &slots, &keys, &values).expect("the group's slots");
    }
}

/// Score every window's `logits`, each token once (in the first window that predicts it), against
/// the f32 cache's; print one JSON line.
fn report(
    name: &str,
    tokens: &[u32],
    windows: &[(usize, &[u32])],
    logits: &[Vec<Vec<f32>>],
    reference: &[Vec<Vec<f32>>],
) {
    let (mut nll, mut reference_nll, mut kl, mut agree, mut count) = (0.0f64, 0.0f64, 0.0f64, 0usize, 0usize);
    let mut scored_until = 1;
    for ((&(begin, window), got), expected) in windows.iter().zip(logits).zip(reference) {
        let end = begin + window.len();
        for target in scored_until.max(begin + 1)..end {
            let row = target - begin - 1;
            let (p, q) = (log_softmax(&expected[row]), log_softmax(&got[row]));
            nll -= q[tokens[target] as usize];
            reference_nll -= p[tokens[target] as usize];
            kl += p.iter().zip(&q).map(|(r, t)| r.exp() * (r - t)).sum::<f64>();
            agree += usize::from(argmax(&p) == argmax(&q));
            count += 1;
        }
        scored_until = end;
    }
    let (ppl, reference_ppl) = ((nll / count as f64).exp(), (reference_nll / count as f64).exp());
    println!(
        "{}",
        serde_json::json!({
            "format": name, "tokens": count, "perplexity": ppl, "f32_perplexity": reference_ppl,
            "perplexity_change_percent": 100.0 * (ppl / reference_ppl - 1.0),
            "mean_kl_nats": kl / count as f64, "top1_agreement": agree as f64 / count as f64,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model_dir), Some(text)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: cache_format_study MODEL_DIR TEXT [max_tokens]");
        std::process::exit(2);
    };
    let model = Qwen3Model::load(Path::new(model_dir)).expect("model");
    let tokenizer = Tokenizer::from_file(&Path::new(model_dir).join("tokenizer.json")).expect("tokenizer");
    let mut tokens = tokenizer.encode(&std::fs::read_to_string(text).expect("text")).expect("tokens");
    tokens.truncate(args.get(3).map_or(usize::MAX, |n| n.parse().expect("max_tokens")));
    let mut windows = Vec::new();
    for begin in (0..tokens.len()).step_by(STRIDE) {
        let end = (begin + CONTEXT).min(tokens.len());
        windows.push((begin, &tokens[begin..end]));
        if end == tokens.len() {
            break;
        }
    }
    let reference = score::<F32>(&model, &windows, SCORE_BATCH, unchanged);
    let run = |name: &str, logits: Vec<Vec<Vec<f32>>>| report(name, &tokens, &windows, &logits, &reference);
    let (m, w) = (&model, &windows[..]);
    run("int8, per row", score::<Simulated<Int8>>(m, w, SCORE_BATCH, unchanged));
    run("fp8_per_token_head, per row", score::<Simulated<Fp8>>(m, w, SCORE_BATCH, unchanged));
    run(
        "int4 symmetric, per row (66 B)",
        score::<Simulated<Int4<0, false, false>>>(m, w, SCORE_BATCH, unchanged),
    );
    run(
        "int4 symmetric, groups of 32 (72 B)",
        score::<Simulated<Int4<32, false, false>>>(m, w, SCORE_BATCH, unchanged),
    );
    run(
        "int4 asymmetric, groups of 32 (80 B)",
        score::<Simulated<Int4<32, true, false>>>(m, w, SCORE_BATCH, unchanged),
    );
    run(
        "int4 symmetric, per row, Hadamard (66 B)",
        score::<Simulated<Int4<0, false, true>>>(m, w, SCORE_BATCH, unchanged),
    );
    run(
        "int4 symmetric, groups of 32, Hadamard (72 B)",
        score::<Simulated<Int4<32, false, true>>>(m, w, SCORE_BATCH, unchanged),
    );
    run(
        "int4 asymmetric, groups of 32, Hadamard (80 B)",
        score::<Simulated<Int4<32, true, true>>>(m, w, SCORE_BATCH, unchanged),
    );
    let kivi = |name: &str, keys_per_channel: bool, scheme: Int4Scheme| {
        let group = |cache: &mut KvCache<F32>, table: &BlockTable, positions: Range<usize>| {
            quantize_full_group(cache, table, positions, keys_per_channel, scheme)
        };
        run(name, score::<F32>(m, w, KIVI_GROUP, group))
    };
    kivi("window of 32, int4 symmetric, groups of 32 (72 B)", false, Int4Scheme::Symmetric);
    kivi("window of 32, keys per channel, int4 symmetric (72 B)", true, Int4Scheme::Symmetric);
    kivi("window of 32, keys per channel, int4 asymmetric (KIVI, 80 B)", true, Int4Scheme::Asymmetric);
}

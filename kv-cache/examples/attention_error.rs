//! Attention-output error of each cache dtype against exact f32 K/V, with and without outlier
//! channels in the keys (real keys have a few large fixed channels).
//!
//! `cargo run --release -p kv-cache --example attention_error [contexts] [seed]`
//!
//! For each context: random Gaussian q, K, V (head_dim 128); with outliers, 4 fixed key channels are
//! scaled by 20. Keys are scaled so that attention is peaked (scores' std about 3). Prints the
//! relative L2 error of the attention output, mean over 64 queries, per dtype.

use nanovllm_kv_cache::{Bf16, BlockManager, CacheLayout, F32, Int8, KvCache, StorageDtype};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

const HEAD_DIM: usize = 128;
const OUTLIERS: [usize; 4] = [3, 17, 64, 100];
const BLOCK: usize = 16;

/// Attention of `q` over the first `len` rows of the cache, reading rows in place.
fn attend<T: StorageDtype>(
    cache: &KvCache<T>,
    table: &nanovllm_kv_cache::BlockTable,
    q: &[f32],
    len: usize,
) -> Vec<f32> {
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let scores: Vec<f32> = (0..len).map(|j| cache.key(0, table, j, 0).unwrap().dot(q) * scale).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = weights.iter().sum();
    let mut out = vec![0.0; HEAD_DIM];
    for (j, w) in weights.iter().enumerate() {
        cache.value(0, table, j, 0).unwrap().add_scaled(w / total, &mut out);
    }
    out
}

fn filled<T: StorageDtype>(layout: CacheLayout, slots: &[usize], keys: &[f32], values: &[f32]) -> KvCache<T> {
    let mut cache = KvCache::<T>::new(layout).expect("small layout");
    cache.write(0, slots, keys, values).expect("shapes match");
    cache
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    let err: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (err / norm).sqrt()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let contexts: Vec<usize> = args
        .next()
        .map_or(vec![256, 4096], |a| a.split(',').map(|c| c.parse().expect("contexts: N,M,...")).collect());
    let seed: u64 = args.next().map_or(0, |a| a.parse().expect("seed"));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| StandardNormal.sample(&mut rng)).collect() };
    println!("| context | keys | bf16 | int8 |");
    println!("|---|---|---|---|");
    for &len in &contexts {
        for outliers in [false, true] {
            let layout = CacheLayout {
                num_layers: 1,
                num_blocks: len.div_ceil(BLOCK),
                block_size: BLOCK,
                kv_heads: 1,
                head_dim: HEAD_DIM,
            };
            let tokens: Vec<u32> = (0..len as u32).collect();
            let (table, _) = BlockManager::new(layout.num_blocks, BLOCK).unwrap().allocate(&tokens).unwrap();
            let slots = table.slot_mapping(0..len, BLOCK).unwrap();
            let mut keys: Vec<f32> = normal(len * HEAD_DIM).iter().map(|k| k * 0.3).collect();
            if outliers {
                for row in keys.chunks_mut(HEAD_DIM) {
                    for &c in &OUTLIERS {
                        row[c] *= 20.0;
                    }
                }
            }
            let values = normal(len * HEAD_DIM);
            let exact = filled::<F32>(layout, &slots, &keys, &values);
            let bf16 = filled::<Bf16>(layout, &slots, &keys, &values);
            let int8 = filled::<Int8>(layout, &slots, &keys, &values);
            let (mut e_bf16, mut e_int8) = (0.0, 0.0);
            let queries = 64;
            for _ in 0..queries {
                let q = normal(HEAD_DIM);
                let reference = attend(&exact, &table, &q, len);
                e_bf16 += relative(&attend(&bf16, &table, &q, len), &reference);
                e_int8 += relative(&attend(&int8, &table, &q, len), &reference);
            }
            println!(
                "| {len} | {} | {:.3}% | {:.3}% |",
                if outliers { "4 outlier channels x20" } else { "Gaussian" },
                100.0 * e_bf16 / queries as f64,
                100.0 * e_int8 / queries as f64
            );
        }
    }
}

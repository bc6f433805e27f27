//! The CUDA store and attention kernels (decode and prefill), for bf16, INT8, FP8 (per token-head
//! and per-tensor) and INT4 rows, against the CPU reference, on fresh random inputs each run, with
//! outputs poisoned first. Ignored by default: on a machine with a GPU,
//! `cargo test --release -p nanovllm-kv-cache --features cuda --test gpu_kernels -- --ignored`
//! (or the test binary it builds, run with `--ignored`).
#![cfg(feature = "cuda")]

use half::bf16;
use nanovllm_cuda::Gpu;
use nanovllm_kv_cache::cuda::{
    AttentionQueries, CacheKernels, DecodeWorkspace, GpuKvCache, cache_row, to_gpu_row,
};
use nanovllm_kv_cache::{CacheLayout, Int4, StorageDtype};
use nanovllm_kv_quant::{CacheDtype, F8E4M3};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The GPU; these tests are ignored by default, and one run with `--ignored` where there is no GPU
/// fails rather than passes.
fn gpu() -> Gpu {
    Gpu::open().unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"))
}

fn rng() -> StdRng {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// `rows` rows of `dim` values, each row with its own magnitude (2^-8 to 2^8).
fn random_rows(rng: &mut StdRng, rows: usize, dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let magnitude = 2f32.powi(rng.random_range(-8..=8));
        out.extend((0..dim).map(|_| rng.random_range(-1.0f32..1.0) * magnitude));
    }
    out
}

fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&x| bf16::from_f32(x)).collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn store_matches_the_reference_bit_for_bit() {
    let gpu = gpu();
    let mut rng = rng();
    for dtype in
        [CacheDtype::Int8, CacheDtype::Fp8PerTokenHead, CacheDtype::Fp8, CacheDtype::Int4, CacheDtype::Bf16]
    {
        let head_dims: &[usize] =
            if dtype == CacheDtype::Int4 { &[64, 128, 256] } else { &[32, 64, 128, 256] };
        for &head_dim in head_dims {
            let (kv_heads, q_heads, tokens) = (8, 16, 333);
            let layout = CacheLayout { num_layers: 2, num_blocks: 80, block_size: 16, kv_heads, head_dim };
            // Tokens come as rows of a packed [q | k | v] projection, as the model produces them.
            let stride = (q_heads + 2 * kv_heads) * head_dim;
            let mut qkv = to_bf16(&random_rows(&mut rng, tokens * (stride / head_dim), head_dim));
            let row_start = |t: usize, is_value: bool, h: usize| {
                t * stride + (q_heads + h + if is_value { kv_heads } else { 0 }) * head_dim
            };
            qkv[row_start(0, false, 3)..][..head_dim].fill(bf16::ZERO);
            qkv[row_start(5, true, 0) + 7] = bf16::NAN;
            qkv[row_start(6, false, 1) + 2] = bf16::INFINITY;
            // Ties: a largest magnitude of 127 makes the scale 1, so every x.5 rounds to even.
            for (i, x) in qkv[row_start(7, true, 2)..][..head_dim].iter_mut().enumerate() {
                *x = bf16::from_f32(if i == 0 { 127.0 } else { (i % 254) as f32 * 0.5 - 63.5 });
            }
            // INT4 ties: groups whose largest magnitude is 7 have scale 1, and their x.5 round to even.
            for (i, x) in qkv[row_start(9, true, 5)..][..head_dim].iter_mut().enumerate() {
                *x = bf16::from_f32(if i % 32 == 0 { 7.0 } else { (i % 15) as f32 * 0.5 - 3.5 });
            }
            // The largest bf16s: the scale saturates at its cap (INT8 and INT4 2^121, FP8 2^119) and
            // the codes clamp at 127 (INT4: 7; FP8: saturate at 448).
            for (i, x) in qkv[row_start(8, false, 4)..][..head_dim].iter_mut().enumerate() {
                *x = if i % 3 == 0 { -bf16::MAX } else { bf16::MAX };
            }
            let mut all_slots: Vec<i64> = (0..layout.num_slots() as i64).collect();
            all_slots.shuffle(&mut rng);
            let mut slots = all_slots[..tokens].to_vec();
            for s in slots.iter_mut().step_by(17) {
                *s = -1; // padding
            }
            let mut cache = GpuKvCache::new(&gpu, layout, dtype).unwrap();
            let (row_bytes, groups) = (dtype.code_bytes(head_dim), dtype.row_layout().groups(head_dim));
            let poison = vec![0x5Au8; cache.keys[1].data.len()];
            let poison_scales = vec![bf16::from_bits(0x5A5A); cache.keys[1].scales.len()];
            for plane in [&mut cache.keys[1], &mut cache.values[1]] {
                gpu.stream.memcpy_htod(&poison, &mut plane.data).unwrap();
                gpu.stream.memcpy_htod(&poison_scales, &mut plane.scales).unwrap();
            }
            let kernels = CacheKernels::new(&gpu, dtype, head_dim, q_heads / kv_heads, 16).unwrap();
            let qkv_gpu = gpu.stream.clone_htod(&qkv).unwrap();
            let slots_gpu = gpu.stream.clone_htod(&slots).unwrap();
            let key = qkv_gpu.slice(q_heads * head_dim..);
            let value = qkv_gpu.slice((q_heads + kv_heads) * head_dim..);
            // SAFETY: the slots are distinct slots of this cache's layout, or -1.
            #[allow(unsafe_code)]
            unsafe { kernels.store(&gpu, &mut cache, 1, &key, &value, stride, &slots_gpu.slice(..), tokens) }
                .unwrap();
            for (is_value, plane) in [(false, &cache.keys[1]), (true, &cache.values[1])] {
                let data = gpu.stream.clone_dtoh(&plane.data).unwrap();
                let scales = gpu.stream.clone_dtoh(&plane.scales).unwrap();
                let mut written = vec![false; layout.num_slots()];
                for (t, &slot) in slots.iter().enumerate() {
                    if slot < 0 {
                        continue;
                    }
                    written[slot as usize] = true;
                    for h in 0..kv_heads {
                        let src = &qkv[row_start(t, is_value, h)..][..head_dim];
                        let row = cache_row(&layout, slot as usize, h);
                        match dtype {
                            CacheDtype::Int8 => {
                                let mut codes = vec![0i8; head_dim];
                                let scale = nanovllm_kv_quant::quantize_row(src, &mut codes).unwrap();
                                let got: Vec<i8> =
                                    data[row * head_dim..][..head_dim].iter().map(|&b| b as i8).collect();
                                assert_eq!(
                                    got, codes,
                                    "{dtype} d{head_dim} token {t} head {h} value {is_value}"
                                );
                                assert_eq!(
                                    scales[h * layout.num_slots() + slot as usize].to_bits(),
                                    scale.to_bits(),
                                    "scale of token {t} head {h}"
                                );
                            }
                            CacheDtype::Int4 => {
                                // The CPU cache's store: the reference's codes, packed.
                                let values: Vec<f32> = src.iter().map(|x| x.to_f32()).collect();
                                let mut packed = vec![0u8; row_bytes];
                                let mut expected_scales = vec![bf16::ZERO; groups];
                                Int4::store_row(&values, &mut packed, &mut expected_scales);
                                let mut expected = vec![0u8; row_bytes];
                                to_gpu_row(dtype, head_dim, &packed, &mut expected);
                                assert_eq!(
                                    &data[row * row_bytes..][..row_bytes],
                                    &expected[..],
                                    "{dtype} d{head_dim} token {t} head {h} value {is_value}"
                                );
                                let at = (h * layout.num_slots() + slot as usize) * groups;
                                let got: Vec<u16> =
                                    scales[at..][..groups].iter().map(|s| s.to_bits()).collect();
                                let want: Vec<u16> = expected_scales.iter().map(|s| s.to_bits()).collect();
                                assert_eq!(got, want, "scales of token {t} head {h}");
                            }
                            CacheDtype::Fp8 => {
                                // The values themselves: saturating at 448, NaN staying NaN.
                                let expected: Vec<u8> =
                                    src.iter().map(|x| F8E4M3::from_f32(x.to_f32()).to_bits()).collect();
                                assert_eq!(
                                    &data[row * head_dim..][..head_dim],
                                    &expected[..],
                                    "{dtype} d{head_dim} token {t} head {h} value {is_value}"
                                );
                            }
                            CacheDtype::Fp8PerTokenHead => {
                                let mut codes = vec![F8E4M3::ZERO; head_dim];
                                let scale = nanovllm_kv_quant::quantize_row_fp8(src, &mut codes).unwrap();
                                let expected: Vec<u8> = codes.iter().map(|c| c.to_bits()).collect();
                                assert_eq!(
                                    &data[row * head_dim..][..head_dim],
                                    &expected[..],
                                    "{dtype} d{head_dim} token {t} head {h} value {is_value}"
                                );
                                assert_eq!(
                                    scales[h * layout.num_slots() + slot as usize].to_bits(),
                                    scale.to_bits(),
                                    "scale of token {t} head {h}"
                                );
                            }
                            _ => {
                                let got: Vec<u16> = data[row * head_dim * 2..][..head_dim * 2]
                                    .chunks_exact(2)
                                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                                    .collect();
                                let expected: Vec<u16> = src.iter().map(|x| x.to_bits()).collect();
                                assert_eq!(got, expected);
                            }
                        }
                    }
                }
                for (slot, _) in written.iter().enumerate().filter(|(_, w)| !**w) {
                    for h in 0..kv_heads {
                        let bytes = &data[cache_row(&layout, slot, h) * row_bytes..][..row_bytes];
                        assert!(bytes.iter().all(|&b| b == 0x5A), "slot {slot} head {h} was written");
                    }
                }
            }
        }
    }
}

#[derive(Clone)]
struct DecodeCase {
    dtype: CacheDtype,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    /// Each sequence's context length.
    contexts: Vec<usize>,
    /// Queries per sequence: 1 is decode; more is a prefill chunk, the last `queries` positions of
    /// the sequence, each with its own causal context, attending in groups.
    queries: usize,
}

/// The reference: each query head over its kv head's rows, as the CPU reads them, in f64. Query
/// `b` has context `contexts[b]` through table `tables[b]`.
fn reference(
    case: &DecodeCase,
    q: &[bf16],
    keys: &[f32],
    values: &[f32],
    contexts: &[usize],
    tables: &[&Vec<i32>],
) -> Vec<f32> {
    let (d, group) = (case.head_dim, case.heads / case.kv_heads);
    let mut out = Vec::new();
    for (b, &context) in contexts.iter().enumerate() {
        for h in 0..case.heads {
            let kv_head = h / group;
            let query = &q[(b * case.heads + h) * d..][..d];
            let rows: Vec<usize> = (0..context)
                .map(|pos| {
                    (tables[b][pos / case.block_size] as usize * case.block_size + pos % case.block_size)
                        * case.kv_heads
                        + kv_head
                })
                .collect();
            let scores: Vec<f64> = rows
                .iter()
                .map(|&r| {
                    let dot: f64 =
                        keys[r * d..][..d].iter().zip(query).map(|(&k, q)| k as f64 * q.to_f64()).sum();
                    dot / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for i in 0..d {
                let o: f64 = rows.iter().zip(&weights).map(|(&r, w)| w * values[r * d + i] as f64).sum();
                out.push((o / total) as f32);
            }
        }
    }
    out
}

/// Random rows stored as the cache stores them: the device bytes, the scales (`[rows][groups]`)
/// and the rows as f32.
fn stored_rows(rng: &mut StdRng, dtype: CacheDtype, rows: usize, d: usize) -> (Vec<u8>, Vec<bf16>, Vec<f32>) {
    let raw = random_rows(rng, rows, d);
    match dtype {
        CacheDtype::Int4 => {
            let (row_bytes, groups) = (Int4::row_elems(d), Int4::row_sides(d));
            let mut codes = vec![0u8; rows * row_bytes];
            let mut scales = vec![bf16::ZERO; rows * groups];
            let mut back = vec![0f32; rows * d];
            for (((row, codes), scales), back) in raw
                .chunks_exact(d)
                .zip(codes.chunks_exact_mut(row_bytes))
                .zip(scales.chunks_exact_mut(groups))
                .zip(back.chunks_exact_mut(d))
            {
                Int4::store_row(row, codes, scales);
                Int4::load_row(codes, scales, back);
            }
            (codes, scales, back)
        }
        CacheDtype::Int8 => {
            let mut codes = vec![0i8; rows * d];
            let mut scales = vec![bf16::ZERO; rows];
            nanovllm_kv_quant::quantize_rows(&raw, d, &mut codes, &mut scales).unwrap();
            let mut back = vec![0f32; rows * d];
            nanovllm_kv_quant::dequantize_rows(&codes, &scales, d, &mut back).unwrap();
            (codes.iter().map(|&c| c as u8).collect(), scales, back)
        }
        CacheDtype::Fp8 => {
            let codes: Vec<F8E4M3> = raw.iter().map(|&x| F8E4M3::from_f32(x)).collect();
            let back = codes.iter().map(|c| c.to_f32()).collect();
            (codes.iter().map(|c| c.to_bits()).collect(), vec![bf16::ZERO], back)
        }
        CacheDtype::Fp8PerTokenHead => {
            let mut codes = vec![F8E4M3::ZERO; rows * d];
            let mut scales = vec![bf16::ZERO; rows];
            let mut back = vec![0f32; rows * d];
            for (((row, codes), scale), back) in raw
                .chunks_exact(d)
                .zip(codes.chunks_exact_mut(d))
                .zip(&mut scales)
                .zip(back.chunks_exact_mut(d))
            {
                *scale = nanovllm_kv_quant::quantize_row_fp8(row, codes).unwrap();
                nanovllm_kv_quant::dequantize_row_fp8(codes, *scale, back).unwrap();
            }
            (codes.iter().map(|c| c.to_bits()).collect(), scales, back)
        }
        _ => {
            let values = to_bf16(&raw);
            let bytes = values.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
            (bytes, vec![bf16::ZERO], values.iter().map(|v| v.to_f32()).collect())
        }
    }
}

/// Rows in the CPU cache's `[slots][kv_heads]` order (`row_bytes` each) placed as the GPU cache
/// places them ([`cache_row`], [`to_gpu_row`]).
fn gpu_order(bytes: &[u8], dtype: CacheDtype, layout: &CacheLayout, row_bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    for (row, src) in bytes.chunks_exact(row_bytes).enumerate() {
        let at = cache_row(layout, row / layout.kv_heads, row % layout.kv_heads);
        to_gpu_row(dtype, layout.head_dim, src, &mut out[at * row_bytes..][..row_bytes]);
    }
    out
}

/// Scales in the CPU cache's `[slots][kv_heads][groups]` order as the GPU cache keeps them,
/// `[kv_heads][slots][groups]` (a bf16 cache's single dummy scale stays as it is).
fn head_major(scales: &[bf16], kv_heads: usize, groups: usize) -> Vec<bf16> {
    let slots = scales.len() / (kv_heads * groups.max(1));
    if slots == 0 {
        return scales.to_vec();
    }
    (0..kv_heads)
        .flat_map(|h| (0..slots).flat_map(move |s| (0..groups).map(move |g| (s * kv_heads + h) * groups + g)))
        .map(|i| scales[i])
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_kernels_match_the_reference() {
    let gpu = gpu();
    let mut rng = rng();
    let contexts = vec![1, 17, 511, 512, 513, 1500, 3000];
    let short_contexts: Vec<usize> = (0..200).map(|i| 1 + (i * 613) % 1024).collect();
    let cases = [
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            contexts: contexts.clone(),
            queries: 1,
        },
        DecodeCase {
            dtype: CacheDtype::Bf16,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            contexts: contexts.clone(),
            queries: 1,
        },
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 256,
            contexts: vec![5, 700, 2049],
            queries: 1,
        },
        DecodeCase {
            dtype: CacheDtype::Bf16,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 64,
            contexts: vec![5, 700, 2049],
            queries: 1,
        },
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 4,
            kv_heads: 4,
            head_dim: 64,
            block_size: 32,
            contexts: vec![3, 1025],
            queries: 1,
        },
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 64,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            contexts: vec![2, 600],
            queries: 1,
        },
        // Short contexts: one split each, so the partial kernel writes the output itself.
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            contexts: vec![1, 5, 16, 17, 33, 64],
            queries: 1,
        },
        // A batch of 150 contexts of every length: more thread blocks than the GPU runs at once.
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 256,
            contexts: (0..150).map(|i| 1 + (i * 389) % 2100).collect(),
            queries: 1,
        },
        // 200 contexts of at most 1,024 keys, one split each: enough blocks that they run as
        // two-warp blocks.
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            block_size: 256,
            contexts: short_contexts.clone(),
            queries: 1,
        },
        DecodeCase {
            dtype: CacheDtype::Bf16,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 64,
            contexts: short_contexts.clone(),
            queries: 1,
        },
        // 24 long contexts: more (sequence, kv head) pairs than an H200 has SMs, so four-warp
        // blocks, each context split in two there (the few contexts above take eight-warp blocks).
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            contexts: (0..24).map(|i| 1500 + i * 61).collect(),
            queries: 1,
        },
        DecodeCase {
            dtype: CacheDtype::Bf16,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 64,
            contexts: (0..24).map(|i| 1500 + i * 61).collect(),
            queries: 1,
        },
        // Prefill chunks: the last 37 (or fewer) positions of each sequence, in groups.
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            contexts: vec![1, 20, 37, 600, 1100],
            queries: 37,
        },
        DecodeCase {
            dtype: CacheDtype::Bf16,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            block_size: 32,
            contexts: vec![9, 530],
            queries: 37,
        },
        // One query head per kv head (64 queries per prefill group), and eight (8 per group).
        DecodeCase {
            dtype: CacheDtype::Int8,
            heads: 4,
            kv_heads: 4,
            head_dim: 64,
            block_size: 32,
            contexts: vec![3, 70, 300],
            queries: 70,
        },
        DecodeCase {
            dtype: CacheDtype::Bf16,
            heads: 64,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            contexts: vec![2, 45, 300],
            queries: 20,
        },
    ];
    // Every INT8 case again with FP8 rows (scaled per row, and the values themselves) and with INT4
    // rows: the same kernels with E4M3 codes, and with packed 4-bit codes and a scale per group.
    let requantized =
        [CacheDtype::Fp8PerTokenHead, CacheDtype::Fp8, CacheDtype::Int4].into_iter().flat_map(|dtype| {
            cases
                .iter()
                .filter(|c| c.dtype == CacheDtype::Int8)
                .map(move |c| DecodeCase { dtype, ..c.clone() })
        });
    let cases: Vec<DecodeCase> = cases.iter().cloned().chain(requantized).collect();
    for case in &cases {
        let bs = case.block_size;
        let needed: usize = case.contexts.iter().map(|c| c.div_ceil(bs)).sum();
        let num_blocks = needed + 3;
        let mut free: Vec<i32> = (0..num_blocks as i32).collect();
        free.shuffle(&mut rng);
        let max_blocks = case.contexts.iter().map(|c| c.div_ceil(bs)).max().unwrap();
        let tables: Vec<Vec<i32>> =
            case.contexts.iter().map(|c| free.drain(..c.div_ceil(bs)).collect()).collect();
        let layout = CacheLayout {
            num_layers: 1,
            num_blocks,
            block_size: bs,
            kv_heads: case.kv_heads,
            head_dim: case.head_dim,
        };
        let rows = layout.num_slots() * case.kv_heads;
        let (k_bytes, k_scales, keys) = stored_rows(&mut rng, case.dtype, rows, case.head_dim);
        let (v_bytes, v_scales, values) = stored_rows(&mut rng, case.dtype, rows, case.head_dim);
        let mut cache = GpuKvCache::new(&gpu, layout, case.dtype).unwrap();
        let row_bytes = case.dtype.code_bytes(case.head_dim);
        let groups = case.dtype.row_layout().groups(case.head_dim);
        gpu.stream
            .memcpy_htod(&gpu_order(&k_bytes, case.dtype, &layout, row_bytes), &mut cache.keys[0].data)
            .unwrap();
        gpu.stream
            .memcpy_htod(&gpu_order(&v_bytes, case.dtype, &layout, row_bytes), &mut cache.values[0].data)
            .unwrap();
        gpu.stream
            .memcpy_htod(&head_major(&k_scales, case.kv_heads, groups), &mut cache.keys[0].scales)
            .unwrap();
        gpu.stream
            .memcpy_htod(&head_major(&v_scales, case.kv_heads, groups), &mut cache.values[0].scales)
            .unwrap();
        // Each sequence's queries: the last `case.queries` positions, in order.
        let (mut query_seq, mut query_contexts) = (Vec::new(), Vec::new());
        for (seq, &context) in case.contexts.iter().enumerate() {
            for c in (context + 1).saturating_sub(case.queries).max(1)..=context {
                query_seq.push(seq);
                query_contexts.push(c);
            }
        }
        let batch = query_seq.len();
        let q = to_bf16(&random_rows(&mut rng, batch * case.heads, case.head_dim));
        let query_tables: Vec<&Vec<i32>> = query_seq.iter().map(|&s| &tables[s]).collect();
        // One table row per sequence, padded with -1 (never read), as the model lays them out.
        let flat_tables: Vec<i32> = tables
            .iter()
            .flat_map(|t| t.iter().copied().chain(std::iter::repeat(-1)).take(max_blocks))
            .collect();
        let lens: Vec<i32> = query_contexts.iter().map(|&c| c as i32).collect();
        let kernels =
            CacheKernels::new(&gpu, case.dtype, case.head_dim, case.heads / case.kv_heads, bs).unwrap();
        let expected = reference(case, &q, &keys, &values, &query_contexts, &query_tables);
        let q_gpu = gpu.stream.clone_htod(&q).unwrap();
        let tables_gpu = gpu.stream.clone_htod(&flat_tables).unwrap();
        let lens_gpu = gpu.stream.clone_htod(&lens).unwrap();
        // Both kernels on the same queries: the decode kernel (groups of up to 8 / GROUP queries,
        // splits) and the prefill kernel (groups of up to 64 / GROUP, one block per context).
        for prefill in [false, true] {
            let per_group =
                if prefill { kernels.prefill_queries_per_group() } else { kernels.queries_per_group() };
            let mut groups: Vec<i32> = Vec::new();
            for i in 0..batch {
                let group_start = groups.last().map_or(0, |&g| g as usize);
                if i == 0 || query_seq[i - 1] != query_seq[i] || i - group_start == per_group {
                    groups.push(i as i32);
                }
            }
            let group_tables: Vec<i32> = groups.iter().map(|&g| query_seq[g as usize] as i32).collect();
            groups.push(batch as i32);
            let groups_gpu = gpu.stream.clone_htod(&groups).unwrap();
            let group_tables_gpu = gpu.stream.clone_htod(&group_tables).unwrap();
            let num_groups = groups.len() - 1;
            let max_context = *query_contexts.iter().max().unwrap();
            let mut workspace =
                DecodeWorkspace::new(&gpu, batch, batch, case.heads, case.head_dim, 4 * max_context).unwrap();
            let planner = kernels.split_planner(&cache, &workspace);
            let split = planner.eager(num_groups, batch, max_context);
            // These queries over tables of this geometry (the tables' width and a split length).
            let with_geometry = |geometry| AttentionQueries {
                block_tables: tables_gpu.slice(..),
                geometry,
                context_lens: lens_gpu.slice(..),
                groups: groups_gpu.slice(..),
                group_tables: group_tables_gpu.slice(..),
                num_queries: batch,
                num_groups,
            };
            let geometry = gpu.stream.clone_htod(&split.geometry(max_blocks)).unwrap();
            let queries = with_geometry(geometry.slice(..));
            let mut out = gpu.stream.clone_htod(&vec![bf16::NAN; q.len()]).unwrap();
            let stride = case.heads * case.head_dim;
            // SAFETY (this and the launches below): the tables hold blocks of this cache, each
            // context fits its table, and the groups were laid out as the kernels require.
            #[allow(unsafe_code)]
            if prefill {
                unsafe {
                    kernels.prefill_attention(&gpu, &cache, 0, &q_gpu.slice(..), stride, &queries, &mut out)
                }
                .unwrap();
            } else {
                let q = q_gpu.slice(..);
                let ws = &mut workspace;
                unsafe { kernels.attention(&gpu, &cache, 0, &q, stride, &queries, split, ws, &mut out) }
                    .unwrap();
                // Again into poisoned memory, on the same workspace: nothing a launch leaves
                // behind may change the next one's result.
                let first = gpu.stream.clone_dtoh(&out).unwrap();
                out = gpu.stream.clone_htod(&vec![bf16::NAN; out.len()]).unwrap();
                unsafe { kernels.attention(&gpu, &cache, 0, &q, stride, &queries, split, ws, &mut out) }
                    .unwrap();
                let second = gpu.stream.clone_dtoh(&out).unwrap();
                assert!(
                    first.iter().zip(&second).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "a second launch on the same workspace differs"
                );
                // As a CUDA graph replays it: the grid captured for contexts up to four times as
                // long, the split length chosen for these contexts within it. A decode graph's
                // rows are its queries (one per sequence), so the graph is planned for `batch`
                // rows, whose results the workspace holds, though groups here may hold several.
                let captured = planner.graph(batch, 0, 4 * max_context);
                let replay = planner.replay(captured, num_groups, max_context);
                let geometry = gpu.stream.clone_htod(&replay.geometry(max_blocks)).unwrap();
                let replayed = with_geometry(geometry.slice(..));
                let mut graph_out = gpu.stream.clone_htod(&vec![bf16::NAN; out.len()]).unwrap();
                unsafe {
                    kernels.attention(&gpu, &cache, 0, &q, stride, &replayed, replay, ws, &mut graph_out)
                }
                .unwrap();
                let graph_out: Vec<f32> =
                    gpu.stream.clone_dtoh(&graph_out).unwrap().iter().map(|x| x.to_f32()).collect();
                let err = relative_error(&graph_out, &expected);
                let used = max_context.div_ceil(replay.partition);
                eprintln!(
                    "decode kernel as a graph replays it, {} d{} block {bs}: {used} of {} splits, relative L2 error {err:.2e}",
                    case.dtype, case.head_dim, replay.splits
                );
                assert!(err < 1e-2, "replayed: relative L2 error {err:.3e}");
            }
            let got: Vec<f32> = gpu.stream.clone_dtoh(&out).unwrap().iter().map(|x| x.to_f32()).collect();
            let err = relative_error(&got, &expected);
            eprintln!(
                "{} kernel, {} heads {}/{} d{} block {}, {} queries in {} groups: relative L2 error {:.2e}",
                if prefill { "prefill" } else { "decode" },
                case.dtype,
                case.heads,
                case.kv_heads,
                case.head_dim,
                bs,
                batch,
                num_groups,
                err
            );
            assert!(err < 1e-2, "relative L2 error {err:.3e}");
        }
    }
}

/// The relative L2 error of `got` against `expected`, after checking that every output was
/// written and finite.
fn relative_error(got: &[f32], expected: &[f32]) -> f64 {
    assert!(got.iter().all(|x| x.is_finite()), "unwritten or NaN outputs");
    let err: f64 = got.iter().zip(expected).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = expected.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    err / norm
}

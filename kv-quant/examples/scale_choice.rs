//! Measures the round-trip error of candidate INT8 row formats, to choose the scale's storage type.
//!
//! `cargo run --release -p kv-quant --example scale_choice [rows] [seed]`
//!
//! Rows are 128 Gaussian values (as K/V rows after normalization), and the same rows with 4 outlier
//! channels 20x larger (real keys have a few large fixed channels). Prints relative L2 error
//! `||x - x̂|| / ||x||` over all rows, per format.

use half::{bf16, f16};
use nanovllm_kv_quant::{dequantize_rows, quantize_rows};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

const HEAD_DIM: usize = 128;
const OUTLIER_CHANNELS: [usize; 4] = [3, 17, 64, 100];

/// A row format: how the scale is stored, and how `x / s` becomes a code.
struct Candidate {
    name: &'static str,
    bytes_per_row: usize,
    round_trip: fn(&[f32]) -> Vec<f32>,
}

fn per_row(rows: &[f32], store_scale: fn(f32) -> f32, to_code: fn(f32) -> f32) -> Vec<f32> {
    rows.chunks(HEAD_DIM)
        .flat_map(|row| {
            let amax = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let s = store_scale(amax / 127.0);
            row.iter()
                .map(move |&x| if s == 0.0 { 0.0 } else { to_code(x / s).clamp(-127.0, 127.0) * s })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ours(rows: &[f32]) -> Vec<f32> {
    let count = rows.len() / HEAD_DIM;
    let mut codes = vec![0i8; rows.len()];
    let mut scales = vec![bf16::ZERO; count];
    quantize_rows(rows, HEAD_DIM, &mut codes, &mut scales).expect("shapes match");
    let mut back = vec![0f32; rows.len()];
    dequantize_rows(&codes, &scales, HEAD_DIM, &mut back).expect("shapes match");
    back
}

fn per_tensor(rows: &[f32]) -> Vec<f32> {
    let amax = rows.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let s = amax / 127.0;
    rows.iter().map(|&x| (x / s).round_ties_even().clamp(-127.0, 127.0) * s).collect()
}

const CANDIDATES: [Candidate; 5] = [
    Candidate { name: "round, bf16 scale (ours)", bytes_per_row: HEAD_DIM + 2, round_trip: ours },
    Candidate {
        name: "round, f32 scale",
        bytes_per_row: HEAD_DIM + 4,
        round_trip: |r| per_row(r, |s| s, f32::round_ties_even),
    },
    Candidate {
        name: "round, f16 scale",
        bytes_per_row: HEAD_DIM + 2,
        round_trip: |r| per_row(r, |s| f16::from_f32(s).to_f32(), f32::round_ties_even),
    },
    Candidate {
        name: "truncate, f32 scale (PR #184)",
        bytes_per_row: HEAD_DIM + 4,
        round_trip: |r| per_row(r, |s| s, f32::trunc),
    },
    Candidate { name: "round, one scale per tensor", bytes_per_row: HEAD_DIM, round_trip: per_tensor },
];

fn relative_l2(x: &[f32], y: &[f32]) -> f64 {
    let (mut err, mut norm) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        err += (a as f64 - b as f64).powi(2);
        norm += (a as f64).powi(2);
    }
    (err / norm).sqrt()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(100_000, |a| a.parse().expect("rows: a whole number"));
    let seed: u64 = args.next().map_or(0, |a| a.parse().expect("seed: a whole number"));
    let mut rng = StdRng::seed_from_u64(seed);
    let gaussian: Vec<f32> = (0..rows * HEAD_DIM).map(|_| StandardNormal.sample(&mut rng)).collect();
    let mut outliers = gaussian.clone();
    for row in outliers.chunks_mut(HEAD_DIM) {
        for &c in &OUTLIER_CHANNELS {
            row[c] *= 20.0;
        }
    }
    println!("{rows} rows of {HEAD_DIM}, seed {seed}: relative L2 error of the round trip\n");
    println!("| format | bytes/row | capacity vs bf16 | Gaussian rows | rows with 4 outlier channels x20 |");
    println!("|---|---|---|---|---|");
    for candidate in &CANDIDATES {
        let capacity = (2 * HEAD_DIM) as f64 / candidate.bytes_per_row as f64;
        let plain = relative_l2(&gaussian, &(candidate.round_trip)(&gaussian));
        let skewed = relative_l2(&outliers, &(candidate.round_trip)(&outliers));
        println!(
            "| {} | {} | {capacity:.3}x | {:.4}% | {:.4}% |",
            candidate.name,
            candidate.bytes_per_row,
            plain * 100.0,
            skewed * 100.0
        );
    }
}

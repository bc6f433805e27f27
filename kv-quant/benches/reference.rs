//! Rows per second of the CPU reference: `cargo bench -p kv-quant`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use nanovllm_kv_quant::{dequantize_rows, quantize_rows};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::hint::black_box;

const HEAD_DIM: usize = 128;

fn random_rows(count: usize) -> Vec<bf16> {
    let mut rng = StdRng::seed_from_u64(0);
    (0..count * HEAD_DIM).map(|_| bf16::from_f32(rng.random_range(-4.0..4.0))).collect()
}

fn reference(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv-quant reference, head_dim 128");
    // One decode step of one layer (256 sequences x 8 kv heads), and a 16k-token prefill.
    for rows in [2048, 16384 * 8] {
        let input = random_rows(rows);
        let mut codes = vec![0i8; rows * HEAD_DIM];
        let mut scales = vec![bf16::ZERO; rows];
        let mut out = vec![bf16::ZERO; rows * HEAD_DIM];
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::new("quantize_rows bf16", rows), &rows, |b, _| {
            b.iter(|| quantize_rows(black_box(&input), HEAD_DIM, &mut codes, &mut scales).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("dequantize_rows bf16", rows), &rows, |b, _| {
            b.iter(|| dequantize_rows(black_box(&codes), &scales, HEAD_DIM, &mut out).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, reference);
criterion_main!(benches);

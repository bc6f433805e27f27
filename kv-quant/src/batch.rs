//! Many rows at once, in parallel: what the CPU cache store and the benches call.

use half::bf16;
use rayon::prelude::*;

use crate::{Element, QuantError, dequantize_row, quantize_row};

/// Rows per rayon task: small batches (one decode token) stay on the calling thread.
const ROWS_PER_TASK: usize = 256;

/// Quantize `rows.len() / head_dim` contiguous rows into `codes` and `scales`.
pub fn quantize_rows<E: Element>(
    rows: &[E],
    head_dim: usize,
    codes: &mut [i8],
    scales: &mut [bf16],
) -> Result<(), QuantError> {
    let count = row_count(rows.len(), head_dim, "rows")?;
    check_len("codes", codes.len(), count * head_dim, count, head_dim)?;
    check_len("scales", scales.len(), count, count, head_dim)?;
    let chunk = ROWS_PER_TASK * head_dim;
    rows.par_chunks(chunk)
        .zip(codes.par_chunks_mut(chunk))
        .zip(scales.par_chunks_mut(ROWS_PER_TASK))
        .try_for_each(|((rows, codes), scales)| {
            for ((row, codes), scale) in
                rows.chunks_exact(head_dim).zip(codes.chunks_exact_mut(head_dim)).zip(scales)
            {
                *scale = quantize_row(row, codes)?;
            }
            Ok(())
        })
}

/// Dequantize `scales.len()` contiguous rows of `head_dim` codes into `out`.
pub fn dequantize_rows<E: Element>(
    codes: &[i8],
    scales: &[bf16],
    head_dim: usize,
    out: &mut [E],
) -> Result<(), QuantError> {
    let count = row_count(codes.len(), head_dim, "codes")?;
    check_len("scales", scales.len(), count, count, head_dim)?;
    check_len("out", out.len(), count * head_dim, count, head_dim)?;
    let chunk = ROWS_PER_TASK * head_dim;
    codes.par_chunks(chunk).zip(out.par_chunks_mut(chunk)).zip(scales.par_chunks(ROWS_PER_TASK)).try_for_each(
        |((codes, out), scales)| {
            for ((codes, out), &scale) in
                codes.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim)).zip(scales)
            {
                dequantize_row(codes, scale, out)?;
            }
            Ok(())
        },
    )
}

fn row_count(len: usize, head_dim: usize, what: &'static str) -> Result<usize, QuantError> {
    if head_dim == 0 {
        return Err(QuantError::ZeroHeadDim);
    }
    let rows = len / head_dim;
    check_len(what, len, rows * head_dim, rows, head_dim)?;
    Ok(rows)
}

fn check_len(
    what: &'static str,
    len: usize,
    expected: usize,
    rows: usize,
    head_dim: usize,
) -> Result<(), QuantError> {
    if len == expected { Ok(()) } else { Err(QuantError::BatchShape { what, len, expected, rows, head_dim }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_equals_row_by_row() {
        let head_dim = 8;
        let rows: Vec<f32> = (0..head_dim * 1000).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1).collect();
        let mut codes = vec![0i8; rows.len()];
        let mut scales = vec![bf16::ZERO; 1000];
        quantize_rows(&rows, head_dim, &mut codes, &mut scales).unwrap();
        for (r, row) in rows.chunks(head_dim).enumerate() {
            let mut expected = vec![0i8; head_dim];
            let scale = quantize_row(row, &mut expected).unwrap();
            assert_eq!(scale, scales[r]);
            assert_eq!(expected, codes[r * head_dim..(r + 1) * head_dim]);
        }
        let mut back = vec![0f32; rows.len()];
        dequantize_rows(&codes, &scales, head_dim, &mut back).unwrap();
        for (r, out) in back.chunks(head_dim).enumerate() {
            let mut expected = vec![0f32; head_dim];
            dequantize_row(&codes[r * head_dim..(r + 1) * head_dim], scales[r], &mut expected).unwrap();
            assert_eq!(expected, out);
        }
    }

    #[test]
    fn shape_errors_name_the_buffer() {
        let mut codes = vec![0i8; 16];
        let mut scales = vec![bf16::ZERO; 3];
        let err = quantize_rows(&[0f32; 16], 8, &mut codes, &mut scales).unwrap_err();
        assert_eq!(err.to_string(), "batch shape mismatch: scales has 3 elements, expected 2 (2 rows of 8)");
        assert_eq!(quantize_rows(&[0f32; 16], 0, &mut codes, &mut scales), Err(QuantError::ZeroHeadDim));
        assert!(matches!(
            quantize_rows(&[0f32; 15], 8, &mut codes, &mut scales),
            Err(QuantError::BatchShape { what: "rows", .. })
        ));
    }
}

//! 4-bit rows, the CPU reference of the candidates for a 4-bit cache: codes per group of values,
//! with a bf16 scale per group (symmetric) or a scale and a minimum (asymmetric). Codes are kept
//! one per byte here; a cache packs two per byte.
//!
//! - Symmetric: `s = bf16(amax_g / 7)`, `q = clamp(round_half_even(x / s), -7, 7)`, stored as
//!   `q + 8` (1 to 15), read back as `(code - 8) * s`.
//! - Asymmetric: `m = bf16(min_g)`, `s = bf16((max_g - m) / 15)`, `q = clamp(round_half_even((x -
//!   m) / s), 0, 15)`, read back as `m + q * s`.
//!
//! The asymmetric minimum is rounded to bf16 like the scales, so a group whose span is small against
//! its values' magnitude may err by up to 2^-9 of that magnitude rather than half a step; the
//! `int4` cache dtype is symmetric.
//!
//! As INT8's: a group holding NaN or ±Inf poisons its row (every scale NaN, codes 0), and a group
//! whose scale is below the smallest normal f32 reads back as zeros (symmetric) or its minimum.

use half::bf16;

use crate::row::{check_lengths, row_amax, scale_for};
use crate::{Element, MAX_SCALE, QuantError};

/// Values per group of the `int4` cache dtype: one bf16 scale each, symmetric (chosen by the
/// accuracy table in docs/ACCURACY.md: within the 4-bit goal at 72 bytes per row of 128).
pub const INT4_GROUP: usize = 32;

/// How a group's codes map to values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Int4Scheme {
    /// Codes -7..=7 times the group's scale.
    Symmetric,
    /// The group's minimum plus codes 0..=15 times its scale.
    Asymmetric,
}

/// One group's side data: its scale, and for [`Int4Scheme::Asymmetric`] its minimum (zero
/// otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Int4Group {
    /// The step between codes.
    pub scale: bf16,
    /// The value of code 0 (asymmetric only).
    pub min: bf16,
}

/// Quantize one row in groups of `group` values into `codes` (one per byte) and `groups`.
pub fn quantize_row_int4<E: Element>(
    row: &[E],
    group: usize,
    scheme: Int4Scheme,
    codes: &mut [u8],
    groups: &mut [Int4Group],
) -> Result<(), QuantError> {
    check_shape(row.len(), codes.len(), group, groups.len())?;
    if row_amax(row).is_nan() {
        codes.fill(0);
        groups.fill(Int4Group { scale: bf16::NAN, min: bf16::NAN });
        return Ok(());
    }
    for ((values, codes), side) in row.chunks(group).zip(codes.chunks_mut(group)).zip(groups.iter_mut()) {
        *side = match scheme {
            Int4Scheme::Symmetric => symmetric_group(values, codes),
            Int4Scheme::Asymmetric => asymmetric_group(values, codes),
        };
    }
    Ok(())
}

/// Read one row back: `out[i]` from its code and its group's side data, in f32, rounded to `E`.
pub fn dequantize_row_int4<E: Element>(
    codes: &[u8],
    group: usize,
    scheme: Int4Scheme,
    groups: &[Int4Group],
    out: &mut [E],
) -> Result<(), QuantError> {
    check_shape(out.len(), codes.len(), group, groups.len())?;
    for ((codes, out), side) in codes.chunks(group).zip(out.chunks_mut(group)).zip(groups) {
        let (step, min) = (side.scale.to_f32(), side.min.to_f32());
        for (y, &code) in out.iter_mut().zip(codes) {
            *y = E::from_f32(match scheme {
                Int4Scheme::Symmetric => (f32::from(code) - 8.0) * step,
                Int4Scheme::Asymmetric => min + f32::from(code) * step,
            });
        }
    }
    Ok(())
}

fn symmetric_group<E: Element>(values: &[E], codes: &mut [u8]) -> Int4Group {
    let scale = scale_for(row_amax(values), 7.0, MAX_SCALE);
    let step = scale.to_f32();
    for (code, x) in codes.iter_mut().zip(values) {
        let q = if step == 0.0 { 0.0 } else { (x.to_f32() / step).round_ties_even().clamp(-7.0, 7.0) };
        *code = (q + 8.0) as u8;
    }
    Int4Group { scale, min: bf16::ZERO }
}

fn asymmetric_group<E: Element>(values: &[E], codes: &mut [u8]) -> Int4Group {
    let low = values.iter().map(|x| x.to_f32()).fold(f32::INFINITY, f32::min);
    let high = values.iter().map(|x| x.to_f32()).fold(f32::NEG_INFINITY, f32::max);
    let min = bf16::from_f32(low);
    let scale = scale_for((high - min.to_f32()).max(0.0), 15.0, MAX_SCALE);
    let step = scale.to_f32();
    for (code, x) in codes.iter_mut().zip(values) {
        let q = if step == 0.0 { 0.0 } else { ((x.to_f32() - min.to_f32()) / step).round_ties_even() };
        *code = q.clamp(0.0, 15.0) as u8;
    }
    Int4Group { scale, min }
}

fn check_shape(values: usize, codes: usize, group: usize, groups: usize) -> Result<(), QuantError> {
    check_lengths(values, codes)?;
    if group == 0 {
        return Err(QuantError::ZeroGroup);
    }
    check_lengths(values.div_ceil(group), groups)
}

/// The orthonormal Walsh-Hadamard transform of `x` in place (its length a power of two): its own
/// inverse, so rows rotated before they are quantized are rotated back after they are read. It
/// spreads a few large channels (keys' outliers) over all of them, which a per-row or per-group
/// scale then represents with fewer wasted levels.
pub fn hadamard_in_place(x: &mut [f32]) -> Result<(), QuantError> {
    let n = x.len();
    if !n.is_power_of_two() {
        return Err(QuantError::NotPowerOfTwo(n));
    }
    let mut half = 1;
    while half < n {
        for block in x.chunks_mut(2 * half) {
            let (low, high) = block.split_at_mut(half);
            for (a, b) in low.iter_mut().zip(high) {
                (*a, *b) = (*a + *b, *a - *b);
            }
        }
        half *= 2;
    }
    let norm = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= norm);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(row: &[f32], group: usize, scheme: Int4Scheme) -> Vec<f32> {
        let mut codes = vec![0u8; row.len()];
        let mut groups = vec![Int4Group::default(); row.len().div_ceil(group)];
        quantize_row_int4(row, group, scheme, &mut codes, &mut groups).unwrap();
        let mut back = vec![0f32; row.len()];
        dequantize_row_int4(&codes, group, scheme, &groups, &mut back).unwrap();
        back
    }

    #[test]
    fn symmetric_codes_are_multiples_of_the_group_scale() {
        let row = [7.0f32, -3.5, 1.0, 0.4, 70.0, -35.0, 10.0, 0.0];
        assert_eq!(round_trip(&row, 4, Int4Scheme::Symmetric), [7.0, -4.0, 1.0, 0.0, 70.0, -40.0, 10.0, 0.0]);
    }

    #[test]
    fn asymmetric_groups_span_their_minimum_to_their_maximum() {
        let row = [1.0f32, 16.0, 8.4, 9.6];
        assert_eq!(round_trip(&row, 4, Int4Scheme::Asymmetric), [1.0, 16.0, 8.0, 10.0]);
    }

    #[test]
    fn errors_stay_within_half_a_step_of_each_group() {
        let row: Vec<f32> =
            (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) * if i < 32 { 10.0 } else { 0.1 }).collect();
        for scheme in [Int4Scheme::Symmetric, Int4Scheme::Asymmetric] {
            let back = round_trip(&row, 32, scheme);
            for (g, (xs, ys)) in row.chunks(32).zip(back.chunks(32)).enumerate() {
                let (lo, hi) = xs.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                let step = match scheme {
                    Int4Scheme::Symmetric => lo.abs().max(hi.abs()) / 7.0,
                    Int4Scheme::Asymmetric => (hi - lo) / 15.0,
                };
                for (x, y) in xs.iter().zip(ys) {
                    assert!((x - y).abs() <= step * 0.51 + 1e-3 * step, "{scheme:?} group {g}: {x} -> {y}");
                }
            }
        }
    }

    #[test]
    fn poisoned_rows_read_back_as_nan() {
        let back = round_trip(&[1.0, f32::INFINITY, 2.0, 3.0], 2, Int4Scheme::Asymmetric);
        assert!(back.iter().all(|y| y.is_nan()));
    }

    #[test]
    fn hadamard_is_its_own_inverse_and_keeps_the_norm() {
        let row: Vec<f32> = (0..64).map(|i| if i == 5 { 40.0 } else { (i as f32 * 0.3).sin() }).collect();
        let mut x = row.clone();
        hadamard_in_place(&mut x).unwrap();
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm(&x) - norm(&row)).abs() < 1e-3);
        // The outlier is spread: no rotated channel keeps most of it.
        assert!(x.iter().all(|v| v.abs() < 10.0));
        hadamard_in_place(&mut x).unwrap();
        assert!(x.iter().zip(&row).all(|(a, b)| (a - b).abs() < 1e-4));
        assert!(hadamard_in_place(&mut [1.0; 6]).is_err());
    }

    #[test]
    fn row_bytes_of_the_candidates() {
        let row = |group, side_bytes| crate::RowLayout { code_bits: 4, group, side_bytes }.row_bytes(128);
        // One symmetric scale per row; per group of 32; a scale and a minimum per group of 32.
        assert_eq!((row(0, 2), row(32, 2), row(32, 4)), (66, 72, 80));
    }
}

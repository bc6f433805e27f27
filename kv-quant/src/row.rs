//! One row: the format itself (steps 1 to 7 of the crate docs).

use half::bf16;

use crate::{Element, QuantError};

/// The largest code magnitude: codes live in `[-127, 127]`, symmetric, so -128 is never used.
pub const QMAX: f32 = 127.0;

/// The largest stored scale, `2^121`: `127 * 2^121 ≈ 3.376e38` is below both `f32::MAX` and the
/// largest bf16, so reading a row back can never overflow. Rows with `amax` above it saturate.
pub const MAX_SCALE: bf16 = bf16::from_bits(0x7C00);

/// The stored scale for a row whose largest magnitude is `amax` (NaN for a poisoned row).
///
/// This is steps 3 to 5 of the format; kernels implement exactly this.
pub fn scale_for_amax(amax: f32) -> bf16 {
    scale_for(amax, QMAX, MAX_SCALE)
}

/// `amax / top` rounded to bf16; 0 below the smallest normal f32, at most `max_scale`; NaN for a
/// poisoned row. Steps 3 to 5 for a format whose largest code is `top`.
pub(crate) fn scale_for(amax: f32, top: f32, max_scale: bf16) -> bf16 {
    if amax.is_nan() {
        return bf16::NAN;
    }
    let scale = bf16::from_f32(amax / top);
    if scale.to_f32() < f32::MIN_POSITIVE {
        bf16::ZERO
    } else if scale > max_scale {
        max_scale
    } else {
        scale
    }
}

/// Quantize one row into `codes`, returning its scale.
///
/// `codes` must be as long as `row`. A row holding NaN or ±Inf gets a NaN scale and zero codes.
pub fn quantize_row<E: Element>(row: &[E], codes: &mut [i8]) -> Result<bf16, QuantError> {
    check_lengths(row.len(), codes.len())?;
    let amax = row_amax(row);
    let scale = scale_for_amax(amax);
    let step = scale.to_f32();
    if step == 0.0 || step.is_nan() {
        codes.fill(0);
        return Ok(scale);
    }
    for (code, &x) in codes.iter_mut().zip(row) {
        *code = (x.to_f32() / step).round_ties_even().clamp(-QMAX, QMAX) as i8;
    }
    Ok(scale)
}

/// Read one row back: `out[i] = codes[i] * scale`, computed in f32 and rounded to `E`.
pub fn dequantize_row<E: Element>(codes: &[i8], scale: bf16, out: &mut [E]) -> Result<(), QuantError> {
    check_lengths(codes.len(), out.len())?;
    let step = scale.to_f32();
    for (y, &code) in out.iter_mut().zip(codes) {
        *y = E::from_f32(f32::from(code) * step);
    }
    Ok(())
}

/// The row's largest magnitude, or NaN when any element is NaN or infinite.
pub(crate) fn row_amax<E: Element>(row: &[E]) -> f32 {
    let mut amax = 0.0f32;
    for &x in row {
        let magnitude = x.to_f32().abs();
        if !magnitude.is_finite() {
            return f32::NAN;
        }
        amax = amax.max(magnitude);
    }
    amax
}

pub(crate) fn check_lengths(input: usize, output: usize) -> Result<(), QuantError> {
    if input == output { Ok(()) } else { Err(QuantError::RowLength { input, output }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_scale_is_two_to_the_121_and_its_top_code_fits_bf16() {
        assert_eq!(MAX_SCALE.to_f32(), 2f32.powi(121));
        let top = QMAX * MAX_SCALE.to_f32();
        assert!(top.is_finite());
        assert!(bf16::from_f32(top).is_finite());
        // The next bf16 up would overflow bf16 when multiplied by 127.
        let next = bf16::from_bits(MAX_SCALE.to_bits() + 1).to_f32();
        assert!(bf16::from_f32(QMAX * next).is_infinite());
    }

    #[test]
    fn scale_rounds_to_nearest_bf16() {
        // 127 * (1 + 2^-8 + 2^-10) / 127 is just above the midpoint between 1 and 1 + 2^-7.
        let amax = QMAX * (1.0 + 2f32.powi(-8) + 2f32.powi(-10));
        assert_eq!(scale_for_amax(amax).to_f32(), 1.0 + 2f32.powi(-7));
        assert_eq!(scale_for_amax(QMAX).to_f32(), 1.0);
    }

    #[test]
    fn scale_edges() {
        assert_eq!(scale_for_amax(0.0), bf16::ZERO);
        assert_eq!(scale_for_amax(f32::from_bits(1)), bf16::ZERO);
        assert_eq!(scale_for_amax(QMAX * f32::MIN_POSITIVE), bf16::from_f32(f32::MIN_POSITIVE));
        assert_eq!(scale_for_amax(f32::MAX), MAX_SCALE);
        assert!(scale_for_amax(f32::NAN).is_nan());
    }

    #[test]
    fn poisoned_rows_read_back_as_nan() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let row = [1.0, bad, -3.0, 0.5];
            let mut codes = [9i8; 4];
            let scale = quantize_row(&row, &mut codes).unwrap();
            assert!(scale.is_nan());
            assert_eq!(codes, [0; 4]);
            let mut back = [0f32; 4];
            dequantize_row(&codes, scale, &mut back).unwrap();
            assert!(back.iter().all(|y| y.is_nan()));
        }
    }

    #[test]
    fn zero_and_subnormal_rows_read_back_as_zeros() {
        for row in [[0.0f32, -0.0, 0.0], [1e-40, -3e-39, 0.0], [1e-37, 0.0, -1e-37]] {
            let mut codes = [5i8; 3];
            let scale = quantize_row(&row, &mut codes).unwrap();
            assert_eq!(scale, bf16::ZERO);
            let mut back = [1f32; 3];
            dequantize_row(&codes, scale, &mut back).unwrap();
            assert_eq!(back, [0.0; 3]);
        }
    }

    #[test]
    fn huge_rows_saturate_without_overflow() {
        let row = [f32::MAX, -f32::MAX, 1e38];
        let mut codes = [0i8; 3];
        let scale = quantize_row(&row, &mut codes).unwrap();
        assert_eq!(scale, MAX_SCALE);
        assert_eq!(codes[..2], [127, -127]);
        let mut back = [bf16::ZERO; 3];
        dequantize_row(&codes, scale, &mut back).unwrap();
        assert!(back.iter().all(|y| y.is_finite()));
    }

    #[test]
    fn ties_round_to_even() {
        // With amax 127 the scale is exactly 1, so x / s = x.
        let row = [127.0f32, 0.5, 1.5, 2.5, -0.5, -2.5];
        let mut codes = [0i8; 6];
        quantize_row(&row, &mut codes).unwrap();
        assert_eq!(codes, [127, 0, 2, 2, 0, -2]);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut codes = [0i8; 3];
        assert_eq!(
            quantize_row(&[1.0f32; 4], &mut codes),
            Err(QuantError::RowLength { input: 4, output: 3 })
        );
    }
}

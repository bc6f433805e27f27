//! FP8 rows (`fp8_per_token_head`): the INT8 format's steps with OCP E4M3 codes in place of
//! integers, so that a row stays exact in range where vLLM's per-tensor FP8 clips.
//!
//! For a row `x`: `amax` and poisoning as INT8 (steps 1-2); `s = bf16(amax / 448)` (0 below the
//! smallest normal f32, at most [`FP8_MAX_SCALE`]); `q_i = e4m3(x_i / s)`, the division in f32
//! (IEEE) and the conversion rounding to nearest even and saturating at ±448, as the GPU's
//! `cvt.rn.satfinite.e4m3x2.f32` does; reading back `x̂_i = f32(q_i) * f32(s)`. No code is ever
//! NaN: a poisoned row has zero codes and a NaN scale, as INT8's.
//!
//! E4M3 keeps 3 mantissa bits wherever a value lies: the error of `x_i` is at most half an E4M3
//! step at `x_i / s`, a relative `2^-4` above `s * 2^-6` (the normal range) and `s * 2^-10` below.
//! INT8's step is uniform, `s_int8 = amax / 127`, so FP8 is finer for values below about a
//! sixteenth of `amax` and coarser near it.

use float8::F8E4M3;
use half::bf16;

use crate::row::{check_lengths, row_amax, scale_for};
use crate::{Element, QuantError};

/// The largest E4M3 magnitude: the code of a row's `amax`.
pub const FP8_MAX: f32 = 448.0;

/// The largest stored scale, `2^119`: `448 * 2^119 ≈ 2.98e38` stays below `f32::MAX` and the
/// largest bf16, so reading a row back never overflows.
pub const FP8_MAX_SCALE: bf16 = bf16::from_bits(0x7B00);

/// The stored scale of an FP8 row whose largest magnitude is `amax` (NaN for a poisoned row).
pub fn fp8_scale_for_amax(amax: f32) -> bf16 {
    scale_for(amax, FP8_MAX, FP8_MAX_SCALE)
}

/// Quantize one row into E4M3 `codes`, returning its scale. `codes` must be as long as `row`.
pub fn quantize_row_fp8<E: Element>(row: &[E], codes: &mut [F8E4M3]) -> Result<bf16, QuantError> {
    check_lengths(row.len(), codes.len())?;
    let scale = fp8_scale_for_amax(row_amax(row));
    let step = scale.to_f32();
    if step == 0.0 || step.is_nan() {
        codes.fill(F8E4M3::ZERO);
        return Ok(scale);
    }
    for (code, &x) in codes.iter_mut().zip(row) {
        *code = F8E4M3::from_f32(x.to_f32() / step);
    }
    Ok(scale)
}

/// Read one FP8 row back: `out[i] = f32(codes[i]) * scale`, rounded to `E`.
pub fn dequantize_row_fp8<E: Element>(
    codes: &[F8E4M3],
    scale: bf16,
    out: &mut [E],
) -> Result<(), QuantError> {
    check_lengths(codes.len(), out.len())?;
    let step = scale.to_f32();
    for (y, code) in out.iter_mut().zip(codes) {
        *y = E::from_f32(code.to_f32() * step);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_magnitude_takes_the_top_code_and_the_scale_caps_in_range() {
        let row = [1.0f32, -3.5, 448.0 * 0.25, 0.0];
        let mut codes = [F8E4M3::ZERO; 4];
        let scale = quantize_row_fp8(&row, &mut codes).unwrap();
        assert_eq!(scale.to_f32(), 0.25);
        assert_eq!(codes[2].to_f32(), 448.0);
        assert_eq!(codes[1].to_f32(), -14.0);
        assert_eq!(FP8_MAX_SCALE.to_f32(), 2f32.powi(119));
        assert!(bf16::from_f32(FP8_MAX * FP8_MAX_SCALE.to_f32()).is_finite());
        assert_eq!(fp8_scale_for_amax(f32::MAX), FP8_MAX_SCALE);
    }

    #[test]
    fn poisoned_rows_keep_finite_codes_and_read_back_as_nan() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut codes = [F8E4M3::ONE; 3];
            let scale = quantize_row_fp8(&[1.0, bad, 2.0], &mut codes).unwrap();
            assert!(scale.is_nan());
            assert!(codes.iter().all(|c| c.to_bits() == 0));
            let mut back = [0f32; 3];
            dequantize_row_fp8(&codes, scale, &mut back).unwrap();
            assert!(back.iter().all(|y| y.is_nan()));
        }
    }

    #[test]
    fn codes_round_to_nearest_even_and_saturate() {
        // amax 448 gives the scale 1, so the codes are e4m3(x).
        let row = [448.0f32, 17.0, 19.0, 0.0009765625, 449.0];
        let mut codes = [F8E4M3::ZERO; 5];
        let scale = quantize_row_fp8(&row[..4], &mut codes[..4]).unwrap();
        assert_eq!(scale.to_f32(), 1.0);
        // 17 lies halfway between 16 and 18 (even mantissa 16), 19 between 18 and 20 (even 20);
        // 2^-10 is half the smallest subnormal, 2^-9: a tie, to zero.
        let values: Vec<f32> = codes[..4].iter().map(|c| c.to_f32()).collect();
        assert_eq!(values, [448.0, 16.0, 20.0, 0.0]);
        // Past 448 (a scale rounded down) saturates instead of becoming NaN.
        assert_eq!(F8E4M3::from_f32(449.0).to_f32(), 448.0);
        assert_eq!(F8E4M3::from_f32(1e6).to_f32(), 448.0);
    }
}

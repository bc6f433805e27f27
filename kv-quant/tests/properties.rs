//! The format's guarantees (crate docs), over arbitrary rows across the whole f32 and bf16 range.

use half::{bf16, f16};
use nanovllm_kv_quant::{
    Element, F8E4M3, FP8_MAX, FP8_MAX_SCALE, INT4_GROUP, Int4Group, Int4Scheme, MAX_SCALE, QMAX,
    dequantize_row, dequantize_row_fp8, dequantize_row_int4, quantize_row, quantize_row_fp8,
    quantize_row_int4,
};
use proptest::prelude::*;

/// Rows whose largest magnitude is below this are stored as zeros (format step 4).
const FLUSH_BELOW: f32 = QMAX * f32::MIN_POSITIVE;
/// Values above this saturate (format step 5).
fn saturation() -> f32 {
    QMAX * MAX_SCALE.to_f32()
}

/// Any finite f32: uniform bit patterns spread magnitudes evenly over the exponent range.
fn any_finite() -> impl Strategy<Value = f32> {
    prop_oneof![any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |x| x.is_finite()), Just(0.0f32),]
}

/// A row whose values share a magnitude range (as K/V rows do) or span the whole range.
fn row(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(any_finite(), len.clone()),
        (-120i32..120, prop::collection::vec(-1.0f32..1.0, len))
            .prop_map(|(exp, unit)| unit.into_iter().map(|u| u * 2f32.powi(exp)).collect()),
    ]
}

fn round_trip<E: Element>(row: &[E]) -> (Vec<i8>, bf16, Vec<f32>) {
    let mut codes = vec![0i8; row.len()];
    let scale = quantize_row(row, &mut codes).unwrap();
    let mut back = vec![0f32; row.len()];
    dequantize_row(&codes, scale, &mut back).unwrap();
    (codes, scale, back)
}

fn amax(row: &[f32]) -> f32 {
    row.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Every element is within half a step of the stored scale, up to f32 rounding of the division
/// and product, and for saturated or flushed rows up to the documented edge.
fn assert_half_step_bound(row: &[f32], scale: bf16, back: &[f32]) -> Result<(), TestCaseError> {
    let step = scale.to_f32() as f64;
    for (&x, &y) in row.iter().zip(back) {
        let err = (x as f64 - y as f64).abs();
        let rounding = (x.abs() as f64) * 2f64.powi(-22);
        let beyond_saturation = (x.abs() as f64 - saturation() as f64).max(0.0);
        let bound = if amax(row) < FLUSH_BELOW {
            FLUSH_BELOW as f64
        } else {
            step / 2.0 + rounding + beyond_saturation
        };
        prop_assert!(err <= bound, "x={x:e} y={y:e} err={err:e} bound={bound:e} scale={step:e}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn error_is_at_most_half_a_step(row in row(1..160)) {
        let (_, scale, back) = round_trip(&row);
        assert_half_step_bound(&row, scale, &back)?;
    }

    #[test]
    fn scale_is_within_bf16_rounding_of_ideal(row in row(1..160)) {
        let (_, scale, _) = round_trip(&row);
        let ideal = amax(&row) as f64 / QMAX as f64;
        let stored = scale.to_f32() as f64;
        if amax(&row) < FLUSH_BELOW {
            // Flushed, unless amax / 127 is a subnormal that bf16 rounds up to the first normal.
            prop_assert!(stored == 0.0 || stored == f32::MIN_POSITIVE as f64, "stored {stored:e}");
        } else if amax(&row) <= saturation() {
            prop_assert!((stored - ideal).abs() <= ideal * 2f64.powi(-8) * 1.0001, "ideal {ideal:e} stored {stored:e}");
        }
    }

    #[test]
    fn codes_use_the_full_range(row in row(1..160)) {
        let (codes, _, _) = round_trip(&row);
        if amax(&row) >= FLUSH_BELOW {
            prop_assert!(codes.iter().any(|q| q.unsigned_abs() == 127), "codes {codes:?}");
        }
        prop_assert!(codes.iter().all(|&q| q != i8::MIN));
    }

    #[test]
    fn requantizing_gives_the_same_codes(row in row(1..160)) {
        let (codes, scale, back) = round_trip(&row);
        let (codes2, scale2, back2) = round_trip(&back);
        prop_assert_eq!(codes, codes2);
        prop_assert_eq!(scale.to_bits(), scale2.to_bits());
        prop_assert_eq!(back, back2);
    }

    #[test]
    fn bf16_and_f16_inputs_quantize_like_their_f32_values(row in prop::collection::vec(-70000.0f32..70000.0, 1..160)) {
        let as_bf16: Vec<bf16> = row.iter().map(|&x| bf16::from_f32(x)).collect();
        let widened: Vec<f32> = as_bf16.iter().map(|x| x.to_f32()).collect();
        prop_assert_eq!(round_trip(&as_bf16), round_trip(&widened));
        let as_f16: Vec<f16> = row.iter().map(|&x| f16::from_f32(x)).filter(|x| x.is_finite()).collect();
        let widened: Vec<f32> = as_f16.iter().map(|x| x.to_f32()).collect();
        prop_assert_eq!(round_trip(&as_f16), round_trip(&widened));
    }

    #[test]
    fn bf16_output_adds_only_its_own_rounding(row in row(1..160)) {
        let (codes, scale, back) = round_trip(&row);
        let mut narrow = vec![bf16::ZERO; row.len()];
        dequantize_row(&codes, scale, &mut narrow).unwrap();
        for (y, z) in back.iter().zip(&narrow) {
            prop_assert_eq!(z.to_bits(), bf16::from_f32(*y).to_bits());
        }
    }

    #[test]
    fn f16_rows_read_back_into_f16_without_infinity(row in prop::collection::vec(-65504.0f32..=65504.0, 1..160)) {
        let input: Vec<f16> = row.iter().map(|&x| f16::from_f32(x)).collect();
        let mut codes = vec![0i8; row.len()];
        let scale = quantize_row(&input, &mut codes).unwrap();
        let mut back = vec![f16::ZERO; row.len()];
        dequantize_row(&codes, scale, &mut back).unwrap();
        prop_assert!(back.iter().all(|y| y.is_finite()));
    }

    #[test]
    fn zero_rows_are_exact(len in 1usize..160) {
        let (codes, scale, back) = round_trip(&vec![0.0f32; len]);
        prop_assert!(codes.iter().all(|&q| q == 0));
        prop_assert_eq!(scale, bf16::ZERO);
        prop_assert!(back.iter().all(|&y| y == 0.0));
    }

    #[test]
    fn any_non_finite_element_poisons_the_row(mut row in row(1..160), at in any::<prop::sample::Index>(),
                                              bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)]) {
        let i = at.index(row.len());
        row[i] = bad;
        let (codes, scale, back) = round_trip(&row);
        prop_assert!(scale.is_nan());
        prop_assert!(codes.iter().all(|&q| q == 0));
        prop_assert!(back.iter().all(|y| y.is_nan()));
    }
}

#[test]
fn f16_saturation_case_is_exercised() {
    // 65504 / 127 rounds up in bf16 (516.0 -> 516, exact: 515.78 -> 516), so 127 * s = 65532 > 65504.
    let row = [f16::MAX, f16::from_f32(1.0)];
    let mut codes = [0i8; 2];
    let scale = quantize_row(&row, &mut codes).unwrap();
    assert!(127.0 * scale.to_f32() > f16::MAX.to_f32());
    let mut back = [f16::ZERO; 2];
    dequantize_row(&codes, scale, &mut back).unwrap();
    assert_eq!(back[0], f16::MAX);
}

/// The GPU store's code for `x` (`kv_quantize4` in `src/kv_quant.cuh`), the same f32
/// operations in the same order (each rounds to nearest even, as the kernel's `__fmaf_rn`,
/// `__fadd_rn` and `__frcp_rn` do): `x * (1 / step)` rounded to a multiple of 2^-12 in one fused
/// multiply-add, then to an integer, by adding magic numbers; no division. `capped`: the row's
/// scale is the format's cap.
fn division_free_code(x: f32, step: f32, capped: bool) -> i8 {
    const SNAP: f32 = 3072.0; // 1.5 * 2^11
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let snapped = x.mul_add(1.0 / step, SNAP);
    let rounded = if capped { (snapped - SNAP).clamp(-QMAX, QMAX) + ROUND } else { snapped + (ROUND - SNAP) };
    rounded.to_bits() as u8 as i8
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20000))]

    /// The GPU store's rounding gives the format's code (step 6: the division, ties to even) for
    /// bf16 values over a bf16 scale: anywhere, on exact ties, and one bf16 step beside a tie
    /// (the closest a non-tie gets); |x / step| is at most 127.25 in a row whose
    /// scale is not capped (steps 3-5).
    #[test]
    fn the_gpu_stores_division_free_rounding_is_the_division(
        step_bits in 0x0080u16..=MAX_SCALE.to_bits(),
        t in -127.25f32..127.25,
        k in prop_oneof![-2i32..2, -127i32..127],
        kind in 0u8..4,
    ) {
        let step = bf16::from_bits(step_bits).to_f32();
        let tie = bf16::from_f32((k as f32 + 0.5) * step);
        let x = match kind {
            0 => bf16::from_f32(t * step),
            1 => tie,
            2 => bf16::from_bits(tie.to_bits().wrapping_add(1)),
            _ => bf16::from_bits(tie.to_bits().wrapping_sub(1)),
        }
        .to_f32();
        let capped = step_bits == MAX_SCALE.to_bits();
        prop_assume!(x.is_finite() && (capped || (x / step).abs() <= 127.25));
        let expected = (x / step).round_ties_even().clamp(-QMAX, QMAX) as i8;
        prop_assert_eq!(division_free_code(x, step, capped), expected, "x={:e} step={:e}", x, step);
    }
}

fn fp8_round_trip(row: &[f32]) -> (Vec<F8E4M3>, bf16, Vec<f32>) {
    let mut codes = vec![F8E4M3::ZERO; row.len()];
    let scale = quantize_row_fp8(row, &mut codes).unwrap();
    let mut back = vec![0f32; row.len()];
    dequantize_row_fp8(&codes, scale, &mut back).unwrap();
    (codes, scale, back)
}

/// FP8 rows whose largest magnitude is below this are stored as zeros.
const FP8_FLUSH_BELOW: f32 = FP8_MAX * f32::MIN_POSITIVE;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Half an E4M3 step at `x / s`: a relative 2^-4 in the normal range, `s * 2^-10` below it;
    /// saturated and flushed rows up to their documented edge.
    #[test]
    fn fp8_error_is_at_most_half_an_e4m3_step(row in row(1..160)) {
        let (_, scale, back) = fp8_round_trip(&row);
        let step = scale.to_f32() as f64;
        let saturation = (FP8_MAX * FP8_MAX_SCALE.to_f32()) as f64;
        for (&x, &y) in row.iter().zip(&back) {
            let err = (x as f64 - y as f64).abs();
            let magnitude = x.abs() as f64;
            let bound = if amax(&row) < FP8_FLUSH_BELOW {
                FP8_FLUSH_BELOW as f64
            } else {
                (magnitude * 2f64.powi(-4)).max(step * 2f64.powi(-10)) * (1.0 + 2f64.powi(-20))
                    + (magnitude - saturation).max(0.0)
            };
            prop_assert!(err <= bound, "x={x:e} y={y:e} err={err:e} bound={bound:e} scale={step:e}");
        }
    }

    /// No code is NaN, and the largest magnitude takes ±448 unless the row was flushed or capped.
    #[test]
    fn fp8_codes_are_finite_and_use_the_full_range(row in row(1..160)) {
        let (codes, scale, _) = fp8_round_trip(&row);
        prop_assert!(codes.iter().all(|c| c.to_bits() & 0x7f != 0x7f));
        if amax(&row) >= FP8_FLUSH_BELOW && scale != FP8_MAX_SCALE {
            prop_assert!(codes.iter().any(|c| c.to_f32().abs() == FP8_MAX));
        }
    }

    #[test]
    fn fp8_requantizing_gives_the_same_codes(row in row(1..160)) {
        let (codes, scale, back) = fp8_round_trip(&row);
        let (codes2, scale2, back2) = fp8_round_trip(&back);
        prop_assert_eq!(codes.iter().map(|c| c.to_bits()).collect::<Vec<_>>(),
                        codes2.iter().map(|c| c.to_bits()).collect::<Vec<_>>());
        prop_assert_eq!(scale.to_bits(), scale2.to_bits());
        prop_assert_eq!(back, back2);
    }

    #[test]
    fn fp8_non_finite_elements_poison_the_row(mut row in row(1..160), at in any::<prop::sample::Index>(),
                                              bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)]) {
        let i = at.index(row.len());
        row[i] = bad;
        let (codes, scale, back) = fp8_round_trip(&row);
        prop_assert!(scale.is_nan());
        prop_assert!(codes.iter().all(|c| c.to_bits() == 0));
        prop_assert!(back.iter().all(|y| y.is_nan()));
    }
}

fn int4_round_trip(row: &[f32], scheme: Int4Scheme) -> (Vec<u8>, Vec<Int4Group>, Vec<f32>) {
    let mut codes = vec![0u8; row.len()];
    let mut groups = vec![Int4Group::default(); row.len().div_ceil(INT4_GROUP)];
    quantize_row_int4(row, INT4_GROUP, scheme, &mut codes, &mut groups).unwrap();
    let mut back = vec![0f32; row.len()];
    dequantize_row_int4(&codes, INT4_GROUP, scheme, &groups, &mut back).unwrap();
    (codes, groups, back)
}

/// Rows of values in a moderate range (no group's scale flushed or capped), in groups that each
/// have their own magnitude and span about it (an asymmetric group's bf16 minimum is then within
/// half a step).
fn int4_row() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec((-30i32..30, prop::collection::vec(-1.0f32..1.0, INT4_GROUP)), 1..6).prop_map(
        |groups| {
            groups
                .into_iter()
                .flat_map(|(exp, unit)| unit.into_iter().map(move |u| u * 2f32.powi(exp)))
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every value within half a step of its group's scale (up to f32 rounding), for both schemes.
    #[test]
    fn int4_error_is_at_most_half_a_group_step(row in int4_row(), asymmetric in any::<bool>()) {
        let scheme = if asymmetric { Int4Scheme::Asymmetric } else { Int4Scheme::Symmetric };
        let (codes, groups, back) = int4_round_trip(&row, scheme);
        prop_assert!(codes.iter().all(|&c| c <= 15 && (asymmetric || c >= 1)));
        for (g, group) in groups.iter().enumerate() {
            let step = group.scale.to_f32() as f64;
            let span = g * INT4_GROUP..((g + 1) * INT4_GROUP).min(row.len());
            for i in span {
                let err = (row[i] as f64 - back[i] as f64).abs();
                let bound = step * 0.5 * (1.0 + 2f64.powi(-6)) + (row[i].abs() as f64) * 2f64.powi(-20);
                prop_assert!(err <= bound, "{scheme:?} x={:e} y={:e} step={step:e}", row[i], back[i]);
            }
        }
    }

    /// Symmetric codes read back as multiples of the scale, quantize to the same codes again.
    #[test]
    fn int4_symmetric_requantizing_gives_the_same_codes(row in int4_row()) {
        let (codes, groups, back) = int4_round_trip(&row, Int4Scheme::Symmetric);
        let (codes2, groups2, back2) = int4_round_trip(&back, Int4Scheme::Symmetric);
        prop_assert_eq!(codes, codes2);
        prop_assert_eq!(groups, groups2);
        prop_assert_eq!(back, back2);
    }

    #[test]
    fn int4_non_finite_elements_poison_the_row(mut row in int4_row(), at in any::<prop::sample::Index>(),
                                               bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
                                               asymmetric in any::<bool>()) {
        let scheme = if asymmetric { Int4Scheme::Asymmetric } else { Int4Scheme::Symmetric };
        let i = at.index(row.len());
        row[i] = bad;
        let (_, _, back) = int4_round_trip(&row, scheme);
        prop_assert!(back.iter().all(|y| y.is_nan()));
    }
}

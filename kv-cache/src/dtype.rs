//! What one cache row is made of, per storage dtype: the allocator never looks inside.

use bytemuck::Pod;
use half::{bf16, f16};
use nanovllm_kv_quant::{
    CacheDtype, Element, F8E4M3, INT4_GROUP, Int4Group, Int4Scheme, quantize_row, quantize_row_fp8,
    quantize_row_int4,
};

/// A storage dtype of the cache: the codes of a row, their side data (one entry per group of
/// values, as [`CacheDtype::row_layout`] says), and the two operations attention needs, which read
/// the row in place (nothing is dequantized into a copy).
///
/// Adding a format means adding an implementation here; the block manager is untouched.
pub trait StorageDtype: Send + Sync + 'static {
    /// One stored unit of a row: a value, a code, or two packed codes.
    type Elem: Pod + Default + Send + Sync + std::fmt::Debug;
    /// Side data of one group of a row: `()` for bf16/f16, a scale for INT8, FP8 and INT4.
    type Side: Copy + Default + Send + Sync + std::fmt::Debug;
    /// The runtime name of this dtype, and with it the byte sizes (`CacheDtype::row_layout`).
    const DTYPE: CacheDtype;

    /// Elements of one row of `head_dim` values.
    fn row_elems(head_dim: usize) -> usize {
        Self::DTYPE.code_bytes(head_dim) / size_of::<Self::Elem>()
    }

    /// Side entries of one row of `head_dim` values.
    fn row_sides(head_dim: usize) -> usize {
        Self::DTYPE.row_layout().groups(head_dim)
    }

    /// Store one row of f32 values (rounding or quantizing) into `dst` and its side data.
    fn store_row(src: &[f32], dst: &mut [Self::Elem], side: &mut [Self::Side]);

    /// `sum_i q_i * row_i`: an attention score, with any scale folded in after the sum.
    fn dot(row: &[Self::Elem], side: &[Self::Side], q: &[f32]) -> f32;

    /// `acc_i += weight * row_i`: a probability-weighted value, with any scale folded into `weight`.
    fn add_scaled(row: &[Self::Elem], side: &[Self::Side], weight: f32, acc: &mut [f32]);

    /// The row as f32 values (for tests and debugging; attention uses `dot` and `add_scaled`).
    fn load_row(row: &[Self::Elem], side: &[Self::Side], out: &mut [f32]) {
        out.fill(0.0);
        Self::add_scaled(row, side, 1.0, out);
    }
}

/// Rows of bf16 values: the default, as nano-vllm.
#[derive(Debug, Clone, Copy)]
pub struct Bf16;

/// Rows of f16 values.
#[derive(Debug, Clone, Copy)]
pub struct F16;

/// Rows of f32 values: the exact reference the other dtypes are measured against.
#[derive(Debug, Clone, Copy)]
pub struct F32;

/// Rows of INT8 codes with a bf16 scale, in the kv-quant format.
#[derive(Debug, Clone, Copy)]
pub struct Int8;

/// Rows of FP8 E4M3 codes with a bf16 scale (`fp8_per_token_head`), in the kv-quant format.
#[derive(Debug, Clone, Copy)]
pub struct Fp8PerTokenHead;

/// The float dtypes differ only in their element type.
macro_rules! float_storage {
    ($dtype:ty, $elem:ty, $name:expr) => {
        impl StorageDtype for $dtype {
            type Elem = $elem;
            type Side = ();
            const DTYPE: CacheDtype = $name;

            fn store_row(src: &[f32], dst: &mut [$elem], _: &mut [()]) {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = <$elem as Element>::from_f32(s);
                }
            }
            fn dot(row: &[$elem], _: &[()], q: &[f32]) -> f32 {
                row.iter().zip(q).map(|(k, q)| k.to_f32() * q).sum()
            }
            fn add_scaled(row: &[$elem], _: &[()], weight: f32, acc: &mut [f32]) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += weight * v.to_f32();
                }
            }
        }
    };
}

float_storage!(Bf16, bf16, CacheDtype::Bf16);
float_storage!(F16, f16, CacheDtype::F16);
float_storage!(F32, f32, CacheDtype::F32);

impl StorageDtype for Int8 {
    type Elem = i8;
    type Side = bf16;
    const DTYPE: CacheDtype = CacheDtype::Int8;

    fn store_row(src: &[f32], dst: &mut [i8], scale: &mut [bf16]) {
        scale[0] = quantize_row(src, dst).expect("the cache passes rows of head_dim to both sides");
    }
    fn dot(row: &[i8], scale: &[bf16], q: &[f32]) -> f32 {
        let raw: f32 = row.iter().zip(q).map(|(&c, q)| f32::from(c) * q).sum();
        raw * scale[0].to_f32()
    }
    fn add_scaled(row: &[i8], scale: &[bf16], weight: f32, acc: &mut [f32]) {
        let weight = weight * scale[0].to_f32();
        for (a, &c) in acc.iter_mut().zip(row) {
            *a += weight * f32::from(c);
        }
    }
}

impl StorageDtype for Fp8PerTokenHead {
    type Elem = F8E4M3;
    type Side = bf16;
    const DTYPE: CacheDtype = CacheDtype::Fp8PerTokenHead;

    fn store_row(src: &[f32], dst: &mut [F8E4M3], scale: &mut [bf16]) {
        scale[0] = quantize_row_fp8(src, dst).expect("the cache passes rows of head_dim to both sides");
    }
    fn dot(row: &[F8E4M3], scale: &[bf16], q: &[f32]) -> f32 {
        let raw: f32 = row.iter().zip(q).map(|(c, q)| c.to_f32() * q).sum();
        raw * scale[0].to_f32()
    }
    fn add_scaled(row: &[F8E4M3], scale: &[bf16], weight: f32, acc: &mut [f32]) {
        let weight = weight * scale[0].to_f32();
        for (a, c) in acc.iter_mut().zip(row) {
            *a += weight * c.to_f32();
        }
    }
}

/// Rows of FP8 E4M3 values with no scale: vLLM's `fp8` at its default per-tensor scale of 1.0.
#[derive(Debug, Clone, Copy)]
pub struct Fp8;

impl StorageDtype for Fp8 {
    type Elem = F8E4M3;
    type Side = ();
    const DTYPE: CacheDtype = CacheDtype::Fp8;

    fn store_row(src: &[f32], dst: &mut [F8E4M3], _: &mut [()]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = F8E4M3::from_f32(s);
        }
    }
    fn dot(row: &[F8E4M3], _: &[()], q: &[f32]) -> f32 {
        row.iter().zip(q).map(|(c, q)| c.to_f32() * q).sum()
    }
    fn add_scaled(row: &[F8E4M3], _: &[()], weight: f32, acc: &mut [f32]) {
        for (a, c) in acc.iter_mut().zip(row) {
            *a += weight * c.to_f32();
        }
    }
}

/// Rows of 4-bit codes, two per byte (the first value in the low nibble), with a bf16 scale per
/// group of [`INT4_GROUP`] values: symmetric, in the kv-quant format.
#[derive(Debug, Clone, Copy)]
pub struct Int4;

impl Int4 {
    /// The signed code of value `i` of a packed row: -7..=7.
    fn code(row: &[u8], i: usize) -> f32 {
        let byte = row[i / 2];
        f32::from(if i.is_multiple_of(2) { byte & 0x0f } else { byte >> 4 }) - 8.0
    }
}

impl StorageDtype for Int4 {
    type Elem = u8;
    type Side = bf16;
    const DTYPE: CacheDtype = CacheDtype::Int4;

    fn store_row(src: &[f32], dst: &mut [u8], scales: &mut [bf16]) {
        let mut codes = vec![0u8; src.len()];
        let mut groups = vec![Int4Group::default(); scales.len()];
        quantize_row_int4(src, INT4_GROUP, Int4Scheme::Symmetric, &mut codes, &mut groups)
            .expect("the cache passes rows of head_dim and their groups");
        for (scale, group) in scales.iter_mut().zip(&groups) {
            *scale = group.scale;
        }
        for (byte, pair) in dst.iter_mut().zip(codes.chunks(2)) {
            *byte = pair[0] | pair.get(1).map_or(0, |high| high << 4);
        }
    }
    fn dot(row: &[u8], scales: &[bf16], q: &[f32]) -> f32 {
        let mut total = 0.0;
        for (g, scale) in scales.iter().enumerate() {
            let values = g * INT4_GROUP..((g + 1) * INT4_GROUP).min(q.len());
            let raw: f32 = values.map(|i| Self::code(row, i) * q[i]).sum();
            total += raw * scale.to_f32();
        }
        total
    }
    fn add_scaled(row: &[u8], scales: &[bf16], weight: f32, acc: &mut [f32]) {
        for (i, a) in acc.iter_mut().enumerate() {
            *a += weight * scales[i / INT4_GROUP].to_f32() * Self::code(row, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_bytes<T: StorageDtype>(head_dim: usize) -> usize {
        T::row_elems(head_dim) * size_of::<T::Elem>() + T::row_sides(head_dim) * size_of::<T::Side>()
    }

    #[test]
    fn storage_sizes_match_the_byte_size_api() {
        for head_dim in [64, 128, 256] {
            assert_eq!(row_bytes::<Bf16>(head_dim), Bf16::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<F16>(head_dim), F16::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<Int8>(head_dim), Int8::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<Fp8PerTokenHead>(head_dim), Fp8PerTokenHead::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<Fp8>(head_dim), Fp8::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<Int4>(head_dim), Int4::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<F32>(head_dim), F32::DTYPE.row_bytes(head_dim));
        }
    }

    /// `dot` and `add_scaled` of `T` against the row `load_row` gives back.
    fn folds_its_scales<T: StorageDtype>(len: usize) {
        let values: Vec<f32> =
            (0..len).map(|i| (i as f32 - 7.5) * 0.3 * if i < 32 { 1.0 } else { 20.0 }).collect();
        let q: Vec<f32> = (0..len).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut codes = vec![T::Elem::default(); T::row_elems(len)];
        let mut side = vec![T::Side::default(); T::row_sides(len)];
        T::store_row(&values, &mut codes, &mut side);
        let mut back = vec![0f32; len];
        T::load_row(&codes, &side, &mut back);
        let expected: f32 = back.iter().zip(&q).map(|(a, b)| a * b).sum();
        assert!((T::dot(&codes, &side, &q) - expected).abs() < 1e-3 * expected.abs().max(1.0));
        let mut acc = vec![1f32; len];
        T::add_scaled(&codes, &side, 0.5, &mut acc);
        for (a, b) in acc.iter().zip(&back) {
            assert!((a - (1.0 + 0.5 * b)).abs() < 1e-4 * b.abs().max(1.0));
        }
    }

    #[test]
    fn quantized_rows_fold_their_scales_into_scores_and_weights() {
        folds_its_scales::<Int8>(16);
        folds_its_scales::<Fp8PerTokenHead>(16);
        folds_its_scales::<Int4>(64);
    }

    #[test]
    fn int4_packs_two_codes_a_byte_and_reads_back_its_reference() {
        let values: Vec<f32> =
            (0..64).map(|i| ((i * 29 % 31) as f32 - 15.0) * if i < 32 { 0.1 } else { 3.0 }).collect();
        let mut packed = vec![0u8; Int4::row_elems(64)];
        let mut scales = vec![bf16::ZERO; Int4::row_sides(64)];
        Int4::store_row(&values, &mut packed, &mut scales);
        assert_eq!((packed.len(), scales.len()), (32, 2));
        let mut codes = vec![0u8; 64];
        let mut groups = vec![Int4Group::default(); 2];
        quantize_row_int4(&values, INT4_GROUP, Int4Scheme::Symmetric, &mut codes, &mut groups).unwrap();
        let mut expected = vec![0f32; 64];
        nanovllm_kv_quant::dequantize_row_int4(
            &codes,
            INT4_GROUP,
            Int4Scheme::Symmetric,
            &groups,
            &mut expected,
        )
        .unwrap();
        let mut back = vec![0f32; 64];
        Int4::load_row(&packed, &scales, &mut back);
        assert_eq!(back, expected);
    }
}

//! What one cache row is made of, per storage dtype: the allocator never looks inside.

use bytemuck::Pod;
use half::{bf16, f16};
use nanovllm_kv_quant::{CacheDtype, Element, F8E4M3};

/// A storage dtype of the cache: the element type of a row, its per-row side data, and the two
/// operations attention needs, which read the row in place (nothing is dequantized into a copy).
///
/// Adding FP8 or INT4 rows means adding an implementation here; the block manager is untouched.
pub trait StorageDtype: Send + Sync + 'static {
    /// One stored element.
    type Elem: Pod + Default + Send + Sync + std::fmt::Debug;
    /// Side data of one (token, kv head) row: `()` for bf16/f16, the scale for INT8.
    type RowMeta: Copy + Default + Send + Sync + std::fmt::Debug;
    /// The runtime name of this dtype, and with it the byte sizes (`CacheDtype::row_bytes`).
    const DTYPE: CacheDtype;

    /// Store one row of f32 values (rounding or quantizing), returning its side data.
    fn store_row(src: &[f32], dst: &mut [Self::Elem]) -> Self::RowMeta;

    /// `sum_i q_i * row_i`: an attention score, with any scale folded in after the sum.
    fn dot(row: &[Self::Elem], meta: Self::RowMeta, q: &[f32]) -> f32;

    /// `acc_i += weight * row_i`: a probability-weighted value, with any scale folded into `weight`.
    fn add_scaled(row: &[Self::Elem], meta: Self::RowMeta, weight: f32, acc: &mut [f32]);

    /// The row as f32 values (for tests and debugging; attention uses `dot` and `add_scaled`).
    fn load_row(row: &[Self::Elem], meta: Self::RowMeta, out: &mut [f32]) {
        out.fill(0.0);
        Self::add_scaled(row, meta, 1.0, out);
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
pub struct Fp8;

/// The float dtypes differ only in their element type.
macro_rules! float_storage {
    ($dtype:ty, $elem:ty, $name:expr) => {
        impl StorageDtype for $dtype {
            type Elem = $elem;
            type RowMeta = ();
            const DTYPE: CacheDtype = $name;

            fn store_row(src: &[f32], dst: &mut [$elem]) {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = <$elem as Element>::from_f32(s);
                }
            }
            fn dot(row: &[$elem], _: (), q: &[f32]) -> f32 {
                row.iter().zip(q).map(|(k, q)| k.to_f32() * q).sum()
            }
            fn add_scaled(row: &[$elem], _: (), weight: f32, acc: &mut [f32]) {
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
    type RowMeta = bf16;
    const DTYPE: CacheDtype = CacheDtype::Int8;

    fn store_row(src: &[f32], dst: &mut [i8]) -> bf16 {
        nanovllm_kv_quant::quantize_row(src, dst).expect("the cache passes rows of head_dim to both sides")
    }
    fn dot(row: &[i8], scale: bf16, q: &[f32]) -> f32 {
        let raw: f32 = row.iter().zip(q).map(|(&c, q)| f32::from(c) * q).sum();
        raw * scale.to_f32()
    }
    fn add_scaled(row: &[i8], scale: bf16, weight: f32, acc: &mut [f32]) {
        let weight = weight * scale.to_f32();
        for (a, &c) in acc.iter_mut().zip(row) {
            *a += weight * f32::from(c);
        }
    }
}

impl StorageDtype for Fp8 {
    type Elem = F8E4M3;
    type RowMeta = bf16;
    const DTYPE: CacheDtype = CacheDtype::Fp8PerTokenHead;

    fn store_row(src: &[f32], dst: &mut [F8E4M3]) -> bf16 {
        nanovllm_kv_quant::quantize_row_fp8(src, dst)
            .expect("the cache passes rows of head_dim to both sides")
    }
    fn dot(row: &[F8E4M3], scale: bf16, q: &[f32]) -> f32 {
        let raw: f32 = row.iter().zip(q).map(|(c, q)| c.to_f32() * q).sum();
        raw * scale.to_f32()
    }
    fn add_scaled(row: &[F8E4M3], scale: bf16, weight: f32, acc: &mut [f32]) {
        let weight = weight * scale.to_f32();
        for (a, c) in acc.iter_mut().zip(row) {
            *a += weight * c.to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_bytes<T: StorageDtype>(head_dim: usize) -> usize {
        head_dim * size_of::<T::Elem>() + size_of::<T::RowMeta>()
    }

    #[test]
    fn storage_sizes_match_the_byte_size_api() {
        for head_dim in [64, 128, 256] {
            assert_eq!(row_bytes::<Bf16>(head_dim), Bf16::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<F16>(head_dim), F16::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<Int8>(head_dim), Int8::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<Fp8>(head_dim), Fp8::DTYPE.row_bytes(head_dim));
            assert_eq!(row_bytes::<F32>(head_dim), F32::DTYPE.row_bytes(head_dim));
        }
    }

    #[test]
    fn int8_folds_its_scale_into_scores_and_weights() {
        let values: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) * 0.3).collect();
        let q: Vec<f32> = (0..16).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut codes = [0i8; 16];
        let scale = Int8::store_row(&values, &mut codes);
        let mut back = [0f32; 16];
        Int8::load_row(&codes, scale, &mut back);
        let expected: f32 = back.iter().zip(&q).map(|(a, b)| a * b).sum();
        assert!((Int8::dot(&codes, scale, &q) - expected).abs() < 1e-5);
        let mut acc = [1f32; 16];
        Int8::add_scaled(&codes, scale, 0.5, &mut acc);
        for (a, b) in acc.iter().zip(&back) {
            assert!((a - (1.0 + 0.5 * b)).abs() < 1e-6);
        }
    }
}

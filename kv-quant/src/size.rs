//! How many bytes a cache of each dtype needs: the numbers the allocator and `bench-memory` use.

use std::fmt;

use crate::INT4_GROUP;
use std::str::FromStr;

/// The element type of the KV cache, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CacheDtype {
    /// bf16 values, no side data (the default, as nano-vllm).
    #[default]
    Bf16,
    /// f16 values, no side data.
    F16,
    /// INT8 codes plus one bf16 scale per (token, kv head) row: this crate's format.
    Int8,
    /// FP8 E4M3 codes plus one bf16 scale per (token, kv head) row, as INT8's (`fp8.rs`).
    Fp8PerTokenHead,
    /// FP8 E4M3 codes of the values themselves: vLLM's `fp8` with its default per-tensor scale
    /// of 1.0 (values past ±448 saturate, below 2^-9 flush to zero), for drop-in comparison.
    Fp8,
    /// 4-bit codes, two per byte, plus a bf16 scale per group of 32 values, symmetric (`int4.rs`).
    Int4,
    /// f32 values: the exact oracle that the other dtypes and HF transformers are compared with.
    F32,
}

/// How one (token, kv head) row of `head_dim` values is stored: bits per value's code, and side
/// data (scales, minimums) per group of values. Every byte count of the cache derives from this,
/// through [`kv_bytes_per_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    /// Bits of one value's code: 16 (bf16), 8 (INT8, FP8), 4 (INT4, two per byte).
    pub code_bits: usize,
    /// Values that share one group's side data; 0: the whole row is one group.
    pub group: usize,
    /// Bytes of side data per group (INT8's bf16 scale: 2; none: 0).
    pub side_bytes: usize,
}

impl RowLayout {
    /// Bytes of the codes of a row of `head_dim` values.
    pub const fn code_bytes(self, head_dim: usize) -> usize {
        (head_dim * self.code_bits).div_ceil(8)
    }

    /// Groups of side data in a row of `head_dim` values (0 when there is none).
    pub const fn groups(self, head_dim: usize) -> usize {
        if self.side_bytes == 0 {
            0
        } else if self.group == 0 {
            1
        } else {
            head_dim.div_ceil(self.group)
        }
    }

    /// Bytes of one row of `head_dim` values, side data included.
    pub const fn row_bytes(self, head_dim: usize) -> usize {
        self.code_bytes(head_dim) + self.groups(head_dim) * self.side_bytes
    }
}

/// Bytes of KV cache one token takes: K and V, in each of `layers` layers, for each of `kv_heads`
/// heads of `head_dim` values, stored as `row`. Under tensor parallelism `kv_heads` is one GPU's
/// share. The one place this product is written: the allocator, the engine's report and
/// `bench-memory` all call it.
///
/// ```
/// use nanovllm_kv_quant::{CacheDtype, kv_bytes_per_token};
/// // Qwen3-0.6B: 8 kv heads of 128, per layer.
/// assert_eq!(kv_bytes_per_token(CacheDtype::Bf16.row_layout(), 1, 8, 128), 4096);
/// assert_eq!(kv_bytes_per_token(CacheDtype::Int8.row_layout(), 1, 8, 128), 2080);
/// assert_eq!(kv_bytes_per_token(CacheDtype::Int4.row_layout(), 1, 8, 128), 1152);
/// ```
pub const fn kv_bytes_per_token(row: RowLayout, layers: usize, kv_heads: usize, head_dim: usize) -> usize {
    2 * layers * kv_heads * row.row_bytes(head_dim)
}

impl CacheDtype {
    /// Every dtype, in the order reports print them.
    pub const ALL: [CacheDtype; 7] = [
        CacheDtype::Bf16,
        CacheDtype::F16,
        CacheDtype::Int8,
        CacheDtype::Fp8PerTokenHead,
        CacheDtype::Fp8,
        CacheDtype::Int4,
        CacheDtype::F32,
    ];

    /// How a row of this dtype is stored.
    pub const fn row_layout(self) -> RowLayout {
        match self {
            CacheDtype::Bf16 | CacheDtype::F16 => RowLayout { code_bits: 16, group: 0, side_bytes: 0 },
            CacheDtype::Int8 | CacheDtype::Fp8PerTokenHead => {
                RowLayout { code_bits: 8, group: 0, side_bytes: 2 }
            }
            CacheDtype::Fp8 => RowLayout { code_bits: 8, group: 0, side_bytes: 0 },
            CacheDtype::Int4 => RowLayout { code_bits: 4, group: INT4_GROUP, side_bytes: 2 },
            CacheDtype::F32 => RowLayout { code_bits: 32, group: 0, side_bytes: 0 },
        }
    }

    /// Codes and scales (INT8, FP8, INT4), rather than plain floats.
    pub const fn has_scales(self) -> bool {
        self.row_layout().side_bytes > 0
    }

    /// Bytes of the codes of one row of `head_dim` values (its side data apart).
    pub const fn code_bytes(self, head_dim: usize) -> usize {
        self.row_layout().code_bytes(head_dim)
    }

    /// Bytes of one (token, kv head) row of `head_dim` values, side data included.
    pub const fn row_bytes(self, head_dim: usize) -> usize {
        self.row_layout().row_bytes(head_dim)
    }

    /// The name used on command lines and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            CacheDtype::Bf16 => "bf16",
            CacheDtype::F16 => "f16",
            CacheDtype::Int8 => "int8",
            CacheDtype::Fp8PerTokenHead => "fp8_per_token_head",
            CacheDtype::Fp8 => "fp8",
            CacheDtype::Int4 => "int4",
            CacheDtype::F32 => "f32",
        }
    }
}

impl fmt::Display for CacheDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a cache dtype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown KV cache dtype {0:?}: expected bf16, f16, int8, fp8_per_token_head, fp8, int4 or f32")]
pub struct UnknownCacheDtype(pub String);

impl FromStr for CacheDtype {
    type Err = UnknownCacheDtype;

    /// A dtype by its name, or by the name vLLM and PyTorch give it (`bfloat16`, `float16`,
    /// `float32`, `fp8_e4m3`, and `int8_per_token_head`, which in vLLM has f32 scales: the same
    /// rows, not the same bytes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let alias = match s.to_ascii_lowercase().as_str() {
            "bfloat16" => Some(CacheDtype::Bf16),
            "float16" | "half" => Some(CacheDtype::F16),
            "float32" | "float" => Some(CacheDtype::F32),
            "int8_per_token_head" => Some(CacheDtype::Int8),
            "fp8_e4m3" => Some(CacheDtype::Fp8),
            _ => None,
        };
        alias
            .or_else(|| CacheDtype::ALL.into_iter().find(|dtype| dtype.name().eq_ignore_ascii_case(s)))
            .ok_or_else(|| UnknownCacheDtype(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_capacity_is_1_97x_bf16_at_head_dim_128() {
        let ratio = CacheDtype::Bf16.row_bytes(128) as f64 / CacheDtype::Int8.row_bytes(128) as f64;
        assert_eq!(format!("{ratio:.2}"), "1.97");
    }

    #[test]
    fn int4_rows_are_72_bytes_at_head_dim_128() {
        assert_eq!(CacheDtype::Int4.row_bytes(128), 72);
        assert_eq!(CacheDtype::Int4.row_bytes(64), 36);
        let ratio = CacheDtype::Bf16.row_bytes(128) as f64 / CacheDtype::Int4.row_bytes(128) as f64;
        assert_eq!(format!("{ratio:.2}"), "3.56");
    }

    #[test]
    fn names_round_trip() {
        for dtype in CacheDtype::ALL {
            assert_eq!(dtype.name().parse::<CacheDtype>(), Ok(dtype));
        }
        assert_eq!(
            "int3".parse::<CacheDtype>().unwrap_err().to_string(),
            "unknown KV cache dtype \"int3\": expected bf16, f16, int8, fp8_per_token_head, fp8, int4 or f32"
        );
    }
}

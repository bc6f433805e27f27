//! How many bytes a cache of each dtype needs: the numbers the allocator and `bench-memory` use.

use std::fmt;
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
    /// f32 values: the exact oracle that the other dtypes and HF transformers are compared with.
    F32,
}

impl CacheDtype {
    /// Every dtype, in the order reports print them.
    pub const ALL: [CacheDtype; 4] = [CacheDtype::Bf16, CacheDtype::F16, CacheDtype::Int8, CacheDtype::F32];

    /// Bytes of one element of a row.
    pub const fn element_bytes(self) -> usize {
        match self {
            CacheDtype::Bf16 | CacheDtype::F16 => 2,
            CacheDtype::Int8 => 1,
            CacheDtype::F32 => 4,
        }
    }

    /// Bytes of per-row side data (the INT8 scale).
    pub const fn row_side_bytes(self) -> usize {
        match self {
            CacheDtype::Bf16 | CacheDtype::F16 | CacheDtype::F32 => 0,
            CacheDtype::Int8 => 2,
        }
    }

    /// Bytes of one (token, kv head) row of `head_dim` values, side data included.
    pub const fn row_bytes(self, head_dim: usize) -> usize {
        head_dim * self.element_bytes() + self.row_side_bytes()
    }

    /// Bytes one token takes in one layer: K and V, every kv head.
    ///
    /// ```
    /// use nanovllm_kv_quant::CacheDtype;
    /// // Qwen3-0.6B: 8 kv heads of 128.
    /// assert_eq!(CacheDtype::Bf16.bytes_per_token_per_layer(8, 128), 4096);
    /// assert_eq!(CacheDtype::Int8.bytes_per_token_per_layer(8, 128), 2080);
    /// ```
    pub const fn bytes_per_token_per_layer(self, kv_heads: usize, head_dim: usize) -> usize {
        2 * kv_heads * self.row_bytes(head_dim)
    }

    /// The name used on command lines and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            CacheDtype::Bf16 => "bf16",
            CacheDtype::F16 => "f16",
            CacheDtype::Int8 => "int8",
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
#[error("unknown KV cache dtype {0:?}: expected bf16, f16, int8 or f32")]
pub struct UnknownCacheDtype(pub String);

impl FromStr for CacheDtype {
    type Err = UnknownCacheDtype;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CacheDtype::ALL
            .into_iter()
            .find(|dtype| dtype.name().eq_ignore_ascii_case(s))
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
    fn names_round_trip() {
        for dtype in CacheDtype::ALL {
            assert_eq!(dtype.name().parse::<CacheDtype>(), Ok(dtype));
        }
        assert_eq!(
            "fp8".parse::<CacheDtype>().unwrap_err().to_string(),
            "unknown KV cache dtype \"fp8\": expected bf16, f16, int8 or f32"
        );
    }
}

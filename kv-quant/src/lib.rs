//! The INT8 KV-cache format of nanovllm, and its CPU reference.
//!
//! This crate's one job is the format: how a row of keys or values becomes INT8 codes and a
//! scale, and back. Everything else (the paged cache, the GPU kernels) follows this page, and
//! every kernel is checked bit for bit against the functions here.
//!
//! # The format
//!
//! The unit is a *row*: the `head_dim` values of one token for one kv head. Each row is stored as
//! `head_dim` signed bytes (the codes `q`) and one bf16 scale `s`. In exact terms, for a row `x`:
//!
//! 1. `amax = max_i |x_i|`, computed in f32 (inputs in bf16 or f16 are widened first; this is exact).
//! 2. If any `x_i` is NaN or ±Inf, the row is *poisoned*: `s = NaN` and every `q_i = 0`, so the
//!    whole row reads back as NaN. A non-finite key or value is a bug upstream; a bf16 cache would
//!    have carried it into attention too, and turning it into finite numbers would hide it.
//! 3. `s32 = amax / 127` in f32 (IEEE division, round to nearest even), then
//!    `s = bf16_round_to_nearest_even(s32)`.
//! 4. If `s < 2^-126` (the smallest normal f32; this includes `amax = 0`), then `s = 0` and every
//!    `q_i = 0`: the row reads back as exact zeros. Rows this small (`amax < 127 * 2^-126 ≈ 1.5e-36`)
//!    lose at most `1.5e-36` per element.
//! 5. `s = min(s, 2^121)`, so that `127 * s` never overflows f32 or bf16 (see [`MAX_SCALE`]).
//! 6. `q_i = clamp(round_half_to_even(x_i / f32(s)), -127, 127)`, with the division in f32
//!    (IEEE, not a multiplication by a reciprocal: the GPU kernel must give the same codes).
//! 7. Reading back: `x̂_i = f32(q_i) * f32(s)` in f32, then rounded to the output type.
//!
//! Guarantees, for every finite row whose `amax` is in the normal range `[1.5e-36, 3.37e38]`:
//! every element's error `|x_i - x̂_i|` (in f32) is at most half a step of the stored scale, `s / 2`;
//! the largest element gets `|q| = 127` (the codes use the full range); and quantizing `x̂` again gives
//! the same codes and scale. The stored scale differs from the ideal `amax / 127` by at most a
//! relative `2^-8` (bf16 rounding), so the error is at most `(amax / 127) * (1 + 2^-8) / 2`. Above
//! `127 * 2^121 ≈ 3.38e38` (within 0.8% of `f32::MAX`) values saturate at `±127 * 2^121`.
//!
//! # Why a bf16 scale
//!
//! Round to nearest, not truncation: nano-vllm PR #184 truncated `x / s` toward zero, which doubles the
//! error. A bf16 scale costs 2 bytes per row instead of 4: 130 bytes per 128 values, 1.97x the
//! capacity of bf16 instead of 1.94x with an f32 scale. It keeps f32's exponent range (an f16 scale
//! would overflow for `amax > 8.3e6` and lose precision below `amax ≈ 7.8e-3`), and its rounding
//! adds no error beyond the half-step bound because the codes are computed from the *stored* scale.
//! Measured on 100,000 Gaussian rows of 128 (`cargo run --release -p kv-quant --example scale_choice`,
//! recorded in docs/ACCURACY.md): relative L2 error 0.648% with a bf16 scale, 0.647% with an f32 scale,
//! 1.292% with PR #184's truncation.
//!
//! # Example
//!
//! ```
//! use half::bf16;
//! use nanovllm_kv_quant::{dequantize_row, quantize_row};
//!
//! let row: Vec<bf16> = (0..128).map(|i| bf16::from_f32((i as f32 - 64.0) * 0.25)).collect();
//! let mut codes = [0i8; 128];
//! let scale = quantize_row(&row, &mut codes)?;
//! assert_eq!(codes[0], -127); // the largest magnitude uses the full range
//!
//! let mut back = [0f32; 128];
//! dequantize_row(&codes, scale, &mut back)?;
//! for (x, y) in row.iter().zip(&back) {
//!     assert!((x.to_f32() - y).abs() <= scale.to_f32() / 2.0);
//! }
//! # Ok::<(), nanovllm_kv_quant::QuantError>(())
//! ```

mod batch;
mod element;
mod error;
mod fp8;
mod int4;
mod row;
mod size;

pub use batch::{dequantize_rows, quantize_rows};
pub use element::Element;
pub use error::QuantError;
pub use float8::F8E4M3;
pub use fp8::{FP8_MAX, FP8_MAX_SCALE, dequantize_row_fp8, fp8_scale_for_amax, quantize_row_fp8};
pub use int4::{
    INT4_GROUP, Int4Group, Int4Scheme, dequantize_row_int4, hadamard_in_place, quantize_row_int4,
};
pub use row::{MAX_SCALE, QMAX, dequantize_row, quantize_row, scale_for_amax};
pub use size::{CacheDtype, RowLayout, UnknownCacheDtype, kv_bytes_per_token};

/// The device side of the format (bf16 conversion, a row's scale, one code), bit for bit as
/// [`quantize_row`], [`quantize_row_fp8`] and [`quantize_row_int4`]: CUDA C to prepend to the
/// source of every kernel that writes or reads quantized rows. Plain text, so this crate needs no CUDA to build.
pub const KV_QUANT_CUH: &str = include_str!("kv_quant.cuh");

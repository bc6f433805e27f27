use half::{bf16, f16};

/// A floating-point type that K/V rows are read from or written to.
///
/// `half` has no trait shared by `bf16`, `f16` and `f32` for this; the conversions here also fix
/// what happens at the edges (f16 saturates instead of overflowing to infinity).
pub trait Element: Copy + Send + Sync + 'static {
    /// Widen to f32 (exact for all three types).
    fn to_f32(self) -> f32;
    /// Narrow from f32, rounding to nearest even.
    fn from_f32(value: f32) -> Self;
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl Element for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }
}

impl Element for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    /// Saturates at ±65504: a row quantized from f16 reads back into f16 without turning its
    /// largest element into infinity when the bf16 scale was rounded up.
    fn from_f32(value: f32) -> Self {
        let max = f16::MAX.to_f32();
        f16::from_f32(if value.is_nan() { value } else { value.clamp(-max, max) })
    }
}

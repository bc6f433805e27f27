use thiserror::Error;

/// A call whose buffers do not fit together.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// The input and output rows have different lengths.
    #[error("row length mismatch: {input} input values but {output} output slots")]
    RowLength {
        /// Values in the input row.
        input: usize,
        /// Slots in the output row.
        output: usize,
    },
    /// A batch whose buffers do not hold the same number of whole rows.
    #[error(
        "batch shape mismatch: {what} has {len} elements, expected {expected} ({rows} rows of {head_dim})"
    )]
    BatchShape {
        /// Which buffer is off.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length it should have.
        expected: usize,
        /// Rows in the batch.
        rows: usize,
        /// Values per row.
        head_dim: usize,
    },
    /// `head_dim` of zero.
    #[error("head_dim must be at least 1")]
    ZeroHeadDim,
    /// Groups of zero values.
    #[error("a group must hold at least 1 value")]
    ZeroGroup,
    /// A Hadamard rotation of a row whose length is not a power of two.
    #[error("a Hadamard rotation needs a power-of-two length, not {0}")]
    NotPowerOfTwo(usize),
}

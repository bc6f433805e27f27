//! Host-side cache storage: every layer's K and V rows, written by slot and read by block table.

use crate::{BlockTable, CacheError, StorageDtype};

/// The shape of a cache: what the storage and the GPU kernels index by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLayout {
    /// Transformer layers, each with its own K and V.
    pub num_layers: usize,
    /// Blocks of the paged cache.
    pub num_blocks: usize,
    /// Slots (tokens) per block.
    pub block_size: usize,
    /// Key/value heads per token.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

impl CacheLayout {
    /// Token slots in one layer: `num_blocks * block_size`.
    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Bytes of K and V of every layer, side data included, for a storage dtype (`None` if that
    /// overflows `usize`).
    pub fn bytes(&self, dtype: nanovllm_kv_quant::CacheDtype) -> Option<usize> {
        [self.num_layers, self.num_blocks, self.block_size, 2 * self.kv_heads]
            .into_iter()
            .try_fold(dtype.row_bytes(self.head_dim), |acc, n| acc.checked_mul(n))
    }

    fn validate(&self) -> Result<(), CacheError> {
        for (field, value) in [
            ("num_layers", self.num_layers),
            ("num_blocks", self.num_blocks),
            ("block_size", self.block_size),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return Err(CacheError::InvalidShape { field, value, why: "must be at least 1" });
            }
        }
        let elements = [self.num_layers, self.num_blocks, self.block_size, self.kv_heads, self.head_dim]
            .into_iter()
            .try_fold(1usize, |acc, n| acc.checked_mul(n))
            .filter(|&n| n <= isize::MAX as usize);
        match elements {
            Some(_) => Ok(()),
            None => Err(CacheError::InvalidShape {
                field: "num_blocks",
                value: self.num_blocks,
                why: "the cache would not fit in memory",
            }),
        }
    }
}

/// One (token, kv head) row, read in place.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a, T: StorageDtype> {
    /// The stored elements.
    pub data: &'a [T::Elem],
    /// The row's side data, one entry per group (an INT8 row's one scale).
    pub side: &'a [T::Side],
    /// Values in the row (`head_dim`).
    pub values: usize,
}

impl<T: StorageDtype> Row<'_, T> {
    /// The attention score of `q` against this row (a key).
    pub fn dot(&self, q: &[f32]) -> f32 {
        T::dot(self.data, self.side, q)
    }

    /// `acc += weight * row` (for a value row).
    pub fn add_scaled(&self, weight: f32, acc: &mut [f32]) {
        T::add_scaled(self.data, self.side, weight, acc)
    }

    /// The row as f32 values.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.values];
        T::load_row(self.data, self.side, &mut out);
        out
    }
}

/// K or V of one layer: `[slot][kv_head]` rows of `T::row_elems` elements and of `T::row_sides`
/// side entries.
#[derive(Debug, Clone)]
struct Plane<T: StorageDtype> {
    data: Vec<T::Elem>,
    side: Vec<T::Side>,
}

/// All layers' K and V in a storage dtype `T`.
///
/// Layout: for each layer, K and V are separate planes of `[num_blocks][block_size][kv_heads]`
/// rows (slot-major, as flash-attention's paged layout) of `T::row_elems(head_dim)` contiguous
/// elements, and their side data `[num_blocks][block_size][kv_heads][T::row_sides(head_dim)]`. A
/// slot is `block_id * block_size + offset`. (The GPU cache orders each block's rows by kv head
/// instead: KERNELS.md.)
#[derive(Debug, Clone)]
pub struct KvCache<T: StorageDtype> {
    layout: CacheLayout,
    keys: Vec<Plane<T>>,
    values: Vec<Plane<T>>,
}

impl<T: StorageDtype> KvCache<T> {
    /// A zeroed cache of `layout`.
    pub fn new(layout: CacheLayout) -> Result<Self, CacheError> {
        layout.validate()?;
        let rows = layout.num_slots() * layout.kv_heads;
        let (elems, sides) = (T::row_elems(layout.head_dim), T::row_sides(layout.head_dim));
        let plane = || Plane::<T> {
            data: vec![T::Elem::default(); rows * elems],
            side: vec![T::Side::default(); rows * sides],
        };
        Ok(KvCache {
            layout,
            keys: (0..layout.num_layers).map(|_| plane()).collect(),
            values: (0..layout.num_layers).map(|_| plane()).collect(),
        })
    }

    /// The cache's shape.
    pub fn layout(&self) -> &CacheLayout {
        &self.layout
    }

    /// Store K and V of `slots.len()` tokens into `layer`: `keys` and `values` are
    /// `[token][kv_head][head_dim]`, and token `i` goes to slot `slots[i]`. INT8 rows are
    /// quantized here, on the way in.
    pub fn write(
        &mut self,
        layer: usize,
        slots: &[usize],
        keys: &[f32],
        values: &[f32],
    ) -> Result<(), CacheError> {
        let token_len = self.layout.kv_heads * self.layout.head_dim;
        check_range("layer", layer, self.layout.num_layers)?;
        for (what, buffer) in [("keys length", keys.len()), ("values length", values.len())] {
            if buffer != slots.len() * token_len {
                return Err(CacheError::OutOfRange { what, value: buffer, limit: slots.len() * token_len });
            }
        }
        if let Some(&slot) = slots.iter().find(|&&s| s >= self.layout.num_slots()) {
            return Err(CacheError::OutOfRange { what: "slot", value: slot, limit: self.layout.num_slots() });
        }
        let head_dim = self.layout.head_dim;
        let (elems, sides) = (T::row_elems(head_dim), T::row_sides(head_dim));
        for (plane, source) in [(&mut self.keys[layer], keys), (&mut self.values[layer], values)] {
            for (&slot, token) in slots.iter().zip(source.chunks_exact(token_len)) {
                for (head, src) in token.chunks_exact(head_dim).enumerate() {
                    let row = slot * self.layout.kv_heads + head;
                    let dst = &mut plane.data[row * elems..(row + 1) * elems];
                    T::store_row(src, dst, &mut plane.side[row * sides..(row + 1) * sides]);
                }
            }
        }
        Ok(())
    }

    /// Copy block `from`'s K and V (with their scales) into block `to`, in every layer: the
    /// partly filled last block of a forked sequence.
    pub fn copy_block(&mut self, from: usize, to: usize) -> Result<(), CacheError> {
        check_range("block", from.max(to), self.layout.num_blocks)?;
        let rows = self.layout.block_size * self.layout.kv_heads;
        let elements = rows * T::row_elems(self.layout.head_dim);
        let sides = rows * T::row_sides(self.layout.head_dim);
        for plane in self.keys.iter_mut().chain(self.values.iter_mut()) {
            plane.data.copy_within(from * elements..(from + 1) * elements, to * elements);
            plane.side.copy_within(from * sides..(from + 1) * sides, to * sides);
        }
        Ok(())
    }

    /// The key row of token `pos` of a sequence, for one kv head.
    pub fn key(
        &self,
        layer: usize,
        table: &BlockTable,
        pos: usize,
        head: usize,
    ) -> Result<Row<'_, T>, CacheError> {
        self.row(&self.keys, layer, table, pos, head)
    }

    /// The value row of token `pos` of a sequence, for one kv head.
    pub fn value(
        &self,
        layer: usize,
        table: &BlockTable,
        pos: usize,
        head: usize,
    ) -> Result<Row<'_, T>, CacheError> {
        self.row(&self.values, layer, table, pos, head)
    }

    fn row<'a>(
        &'a self,
        planes: &'a [Plane<T>],
        layer: usize,
        table: &BlockTable,
        pos: usize,
        head: usize,
    ) -> Result<Row<'a, T>, CacheError> {
        check_range("layer", layer, self.layout.num_layers)?;
        check_range("kv head", head, self.layout.kv_heads)?;
        let slot = table.slot(pos, self.layout.block_size).ok_or(CacheError::OutOfRange {
            what: "token position",
            value: pos,
            limit: table.len() * self.layout.block_size,
        })?;
        check_range("slot", slot, self.layout.num_slots())?;
        let row = slot * self.layout.kv_heads + head;
        let plane = &planes[layer];
        let (elems, sides) = (T::row_elems(self.layout.head_dim), T::row_sides(self.layout.head_dim));
        Ok(Row {
            data: &plane.data[row * elems..(row + 1) * elems],
            side: &plane.side[row * sides..(row + 1) * sides],
            values: self.layout.head_dim,
        })
    }
}

fn check_range(what: &'static str, value: usize, limit: usize) -> Result<(), CacheError> {
    if value < limit { Ok(()) } else { Err(CacheError::OutOfRange { what, value, limit }) }
}

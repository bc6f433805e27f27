//! The host cache storage against the kv-quant reference: what is written by slot is what is read
//! back by block table, rounded or quantized exactly as the reference does it, and a forked
//! sequence's table reads the same rows.

use half::{bf16, f16};
use nanovllm_kv_cache::{
    Bf16, BlockManager, CacheError, CacheLayout, F16, Fp8, Fp8PerTokenHead, Int4, Int8, KvCache, StorageDtype,
};
use nanovllm_kv_quant::{F8E4M3, INT4_GROUP, Int4Group, Int4Scheme};
use proptest::prelude::*;

fn layout(num_blocks: usize, block_size: usize, kv_heads: usize, head_dim: usize) -> CacheLayout {
    CacheLayout { num_layers: 2, num_blocks, block_size, kv_heads, head_dim }
}

/// Writes `keys`/`values` of a prompt of `len` tokens into layer 1 and checks every row read back
/// through the block table against `expected(row)`, which gives the stored row as f32.
fn write_and_read<T: StorageDtype>(
    layout: CacheLayout,
    len: usize,
    keys: &[f32],
    values: &[f32],
    expected: impl Fn(&[f32]) -> Vec<f32>,
) -> Result<(), TestCaseError> {
    let mut manager = BlockManager::new(layout.num_blocks, layout.block_size).unwrap();
    let tokens: Vec<u32> = (0..len as u32).collect();
    let (table, _) = manager.allocate(&tokens).unwrap();
    let slots = table.slot_mapping(0..len, layout.block_size).unwrap();
    let mut cache = KvCache::<T>::new(layout).unwrap();
    cache.write(1, &slots, keys, values).unwrap();
    let d = layout.head_dim;
    for pos in 0..len {
        for head in 0..layout.kv_heads {
            let at = (pos * layout.kv_heads + head) * d;
            let key = cache.key(1, &table, pos, head).unwrap().to_f32();
            let value = cache.value(1, &table, pos, head).unwrap().to_f32();
            prop_assert_eq!(key, expected(&keys[at..at + d]));
            prop_assert_eq!(value, expected(&values[at..at + d]));
            // Layer 0 was not written.
            prop_assert!(cache.key(0, &table, pos, head).unwrap().to_f32().iter().all(|&x| x == 0.0));
        }
    }
    // A fork reads what its parent reads: the full blocks shared, the partly filled one copied
    // (when a block is free for it).
    let mut table = table;
    manager.register_computed(&mut table, &tokens, len);
    if let Ok((child, copy)) = manager.fork(&table, len) {
        if let Some((from, to)) = copy {
            cache.copy_block(from as usize, to as usize).unwrap();
        }
        for pos in 0..len {
            for head in 0..layout.kv_heads {
                let parent = cache.key(1, &table, pos, head).unwrap().to_f32();
                prop_assert_eq!(cache.key(1, &child, pos, head).unwrap().to_f32(), parent);
                let parent = cache.value(1, &table, pos, head).unwrap().to_f32();
                prop_assert_eq!(cache.value(1, &child, pos, head).unwrap().to_f32(), parent);
            }
        }
    }
    Ok(())
}

fn case() -> impl Strategy<Value = (CacheLayout, usize, Vec<f32>, Vec<f32>)> {
    (1usize..6, 1usize..9, 1usize..4, 1usize..40).prop_flat_map(|(block_size, extra, kv_heads, head_dim)| {
        let num_blocks = 2 + extra;
        let max_len = num_blocks * block_size;
        (1..=max_len).prop_flat_map(move |len| {
            let n = len * kv_heads * head_dim;
            (
                Just(layout(num_blocks, block_size, kv_heads, head_dim)),
                Just(len),
                prop::collection::vec(-100.0f32..100.0, n),
                prop::collection::vec(-100.0f32..100.0, n),
            )
        })
    })
}

proptest! {
    #[test]
    fn int8_rows_are_the_reference_quantization((layout, len, keys, values) in case()) {
        write_and_read::<Int8>(layout, len, &keys, &values, |row| {
            let mut codes = vec![0i8; row.len()];
            let scale = nanovllm_kv_quant::quantize_row(row, &mut codes).unwrap();
            let mut back = vec![0f32; row.len()];
            nanovllm_kv_quant::dequantize_row(&codes, scale, &mut back).unwrap();
            back
        })?;
    }

    #[test]
    fn fp8_rows_are_the_reference_quantization((layout, len, keys, values) in case()) {
        write_and_read::<Fp8PerTokenHead>(layout, len, &keys, &values, |row| {
            let mut codes = vec![F8E4M3::ZERO; row.len()];
            let scale = nanovllm_kv_quant::quantize_row_fp8(row, &mut codes).unwrap();
            let mut back = vec![0f32; row.len()];
            nanovllm_kv_quant::dequantize_row_fp8(&codes, scale, &mut back).unwrap();
            back
        })?;
    }

    #[test]
    fn per_tensor_fp8_rows_are_rounded_to_e4m3((layout, len, keys, values) in case()) {
        write_and_read::<Fp8>(layout, len, &keys, &values, |row| {
            row.iter().map(|&x| F8E4M3::from_f32(x).to_f32()).collect()
        })?;
    }

    #[test]
    fn int4_rows_are_the_reference_quantization((layout, len, keys, values) in case()) {
        write_and_read::<Int4>(layout, len, &keys, &values, |row| {
            let (group, scheme) = (INT4_GROUP, Int4Scheme::Symmetric);
            let mut codes = vec![0u8; row.len()];
            let mut groups = vec![Int4Group::default(); row.len().div_ceil(group)];
            nanovllm_kv_quant::quantize_row_int4(row, group, scheme, &mut codes, &mut groups).unwrap();
            let mut back = vec![0f32; row.len()];
            nanovllm_kv_quant::dequantize_row_int4(&codes, group, scheme, &groups, &mut back).unwrap();
            back
        })?;
    }

    #[test]
    fn bf16_rows_are_rounded_to_nearest((layout, len, keys, values) in case()) {
        write_and_read::<Bf16>(layout, len, &keys, &values, |row| {
            row.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
        })?;
    }

    #[test]
    fn f16_rows_are_rounded_to_nearest((layout, len, keys, values) in case()) {
        write_and_read::<F16>(layout, len, &keys, &values, |row| {
            row.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
        })?;
    }
}

#[test]
fn int8_storage_is_bit_identical_to_the_reference() {
    let layout = layout(4, 4, 2, 16);
    let mut manager = BlockManager::new(4, 4).unwrap();
    let (table, _) = manager.allocate(&[1, 2, 3]).unwrap();
    let slots = table.slot_mapping(0..3, 4).unwrap();
    let keys: Vec<f32> = (0..3 * 32).map(|i| (i as f32 * 1.7).cos() * 3.0).collect();
    let mut cache = KvCache::<Int8>::new(layout).unwrap();
    cache.write(0, &slots, &keys, &keys).unwrap();
    for pos in 0..3 {
        for head in 0..2 {
            let row = cache.key(0, &table, pos, head).unwrap();
            let mut codes = [0i8; 16];
            let at = (pos * 2 + head) * 16;
            let scale = nanovllm_kv_quant::quantize_row(&keys[at..at + 16], &mut codes).unwrap();
            assert_eq!(row.data, &codes);
            assert_eq!(row.side[0].to_bits(), scale.to_bits());
        }
    }
}

#[test]
fn bad_writes_and_reads_are_errors() {
    let layout = layout(2, 4, 1, 4);
    let mut cache = KvCache::<Int8>::new(layout).unwrap();
    let one_token = [0.5f32; 4];
    assert_eq!(
        cache.write(0, &[8], &one_token, &one_token),
        Err(CacheError::OutOfRange { what: "slot", value: 8, limit: 8 })
    );
    assert!(matches!(
        cache.write(2, &[0], &one_token, &one_token),
        Err(CacheError::OutOfRange { what: "layer", .. })
    ));
    assert!(matches!(
        cache.write(0, &[0, 1], &one_token, &one_token),
        Err(CacheError::OutOfRange { what: "keys length", .. })
    ));
    let mut manager = BlockManager::new(2, 4).unwrap();
    let (table, _) = manager.allocate(&[1, 2]).unwrap();
    assert!(matches!(cache.key(0, &table, 4, 0), Err(CacheError::OutOfRange { what: "token position", .. })));
    assert!(matches!(cache.key(0, &table, 0, 1), Err(CacheError::OutOfRange { what: "kv head", .. })));
    let absurd = CacheLayout {
        num_layers: 64,
        num_blocks: usize::MAX / 2,
        block_size: 256,
        kv_heads: 8,
        head_dim: 128,
    };
    assert!(matches!(
        KvCache::<Bf16>::new(absurd),
        Err(CacheError::InvalidShape { field: "num_blocks", .. })
    ));
    let zero = CacheLayout { head_dim: 0, ..layout };
    assert!(matches!(KvCache::<Bf16>::new(zero), Err(CacheError::InvalidShape { field: "head_dim", .. })));
}

#[test]
fn layout_bytes_use_the_byte_size_api() {
    // nano-vllm PR #184's example: 500 blocks x 256 x 28 layers x 8 kv heads x 128.
    let layout = CacheLayout { num_layers: 28, num_blocks: 500, block_size: 256, kv_heads: 8, head_dim: 128 };
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    assert_eq!(format!("{:.1}", mib(layout.bytes(nanovllm_kv_quant::CacheDtype::Bf16).unwrap())), "14000.0");
    assert_eq!(format!("{:.1}", mib(layout.bytes(nanovllm_kv_quant::CacheDtype::Int8).unwrap())), "7109.4");
    let absurd = CacheLayout { num_blocks: usize::MAX / 2, ..layout };
    assert_eq!(absurd.bytes(nanovllm_kv_quant::CacheDtype::Int8), None);
}

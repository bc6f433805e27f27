//! Weight sources read a block of any tensor the same as the whole model holds it: a checkpoint's
//! memory maps against the model assembled from them (through the model's own packed matrices),
//! and dummy weights whatever the blocks they are read in.

use std::path::Path;

use nanovllm_qwen3::{Checkpoint, DummyWeights, Qwen3Config, Qwen3Model, WeightSource, tensor_shapes};
use proptest::prelude::*;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn read(
    source: &dyn WeightSource,
    name: &str,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Vec<f32> {
    let mut out = vec![7.0]; // reads append
    source.read(name, rows, cols, &mut out);
    out.split_off(1)
}

fn small_config() -> Qwen3Config {
    Qwen3Config::from_json_str(
        r#"{"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 300,
            "max_position_embeddings": 256, "tie_word_embeddings": false}"#,
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any block of any tensor of a sharded checkpoint reads as the model loaded from it holds it.
    #[test]
    fn checkpoint_blocks_are_the_loaded_models(pick in any::<prop::sample::Index>(), a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(), c in any::<prop::sample::Index>(), d in any::<prop::sample::Index>()) {
        let dir = fixture("mha-untied-sharded");
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let model = Qwen3Model::load(&dir).unwrap();
        let shapes: Vec<_> = tensor_shapes(checkpoint.config()).into_iter().collect();
        let (name, (rows, cols)) = &shapes[pick.index(shapes.len())];
        let (r0, r1) = (a.index(*rows), b.index(*rows));
        let (c0, c1) = (c.index(*cols), d.index(*cols));
        let (row_range, col_range) = (r0.min(r1)..r0.max(r1) + 1, c0.min(c1)..c0.max(c1) + 1);
        let from_maps = read(&checkpoint, name, row_range.clone(), col_range.clone());
        prop_assert_eq!(from_maps.len(), row_range.len() * col_range.len());
        prop_assert_eq!(from_maps, read(&model, name, row_range, col_range), "{}", name);
    }

    /// Dummy weights are a function of their place: a block reads as the whole tensor holds it.
    #[test]
    fn dummy_blocks_are_the_whole_tensors(seed in any::<u64>(), pick in any::<prop::sample::Index>(),
        first in any::<prop::sample::Index>(), rows in 1usize..8, cols in any::<prop::sample::Index>()) {
        let source = DummyWeights::new(small_config(), seed, 0.05);
        let shapes: Vec<_> = tensor_shapes(source.config()).into_iter().collect();
        let (name, (height, width)) = &shapes[pick.index(shapes.len())];
        let whole = read(&source, name, 0..*height, 0..*width);
        let r0 = first.index(*height);
        let r1 = (r0 + rows).min(*height);
        let c0 = cols.index(*width);
        let block = read(&source, name, r0..r1, c0..*width);
        let expected: Vec<f32> = (r0..r1).flat_map(|r| whole[r * width + c0..(r + 1) * width].to_vec()).collect();
        prop_assert_eq!(block, expected);
    }
}

#[test]
fn dummy_matrices_are_normal_with_the_std_asked_and_norms_are_one() {
    let config = small_config();
    let source = DummyWeights::new(config.clone(), 3, 0.05);
    let values = read(&source, "model.embed_tokens.weight", 0..config.vocab_size, 0..config.hidden_size);
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
    let beyond_3_std = values.iter().filter(|v| v.abs() > 0.15).count() as f64 / n;
    assert!(mean.abs() < 2e-3, "mean {mean}");
    assert!((std / 0.05 - 1.0).abs() < 0.02, "std {std}");
    // A normal puts 0.27% beyond 3 standard deviations.
    assert!((0.001..0.005).contains(&beyond_3_std), "beyond 3 std: {beyond_3_std}");
    assert_eq!(
        read(&source, "model.norm.weight", 0..1, 0..config.hidden_size),
        vec![1.0; config.hidden_size]
    );
    let other_seed = read(&DummyWeights::new(config, 4, 0.05), "model.embed_tokens.weight", 0..1, 0..8);
    assert_ne!(other_seed, values[..8]);
}

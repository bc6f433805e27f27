//! The config and checkpoint loaders on arbitrary and corrupted bytes: always an error or a model,
//! never a panic (issue: bad input gets an error, libraries never panic on user input).

use std::path::Path;

use nanovllm_qwen3::{Qwen3Config, Qwen3Model};
use proptest::prelude::*;

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gqa-tied").join(file)).unwrap()
}

/// Loads a directory holding `config` and `checkpoint`; the result does not matter, only that it
/// returns.
fn load(config: &[u8], checkpoint: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), checkpoint).unwrap();
    Qwen3Model::load(dir.path()).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_text_is_a_config_or_an_error(text in ".{0,400}") {
        let _ = Qwen3Config::from_json_str(&text);
    }

    #[test]
    fn any_json_value_is_a_config_or_an_error(
        fields in prop::collection::btree_map(
            prop::sample::select(vec!["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings",
                "rope_theta", "rms_norm_eps", "tie_word_embeddings", "rope_scaling", "rope_parameters", "layer_types"]),
            prop_oneof![
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(|x| serde_json::json!(x)),
                Just(serde_json::json!("qwen3")),
                Just(serde_json::json!(null)),
                Just(serde_json::json!(true)),
                Just(serde_json::json!({"rope_type": "yarn"})),
                Just(serde_json::json!(["full_attention"])),
                (0u64..5000).prop_map(serde_json::Value::from),
            ],
            0..15,
        )
    ) {
        let _ = Qwen3Config::from_json_str(&serde_json::to_string(&fields).unwrap());
    }

    #[test]
    fn corrupted_checkpoints_are_errors_not_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..20),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let config = fixture("config.json");
        let mut checkpoint = fixture("model.safetensors");
        // Corrupt the header and its surroundings most of the time: that is where parsing happens.
        let header = 8 + u64::from_le_bytes(checkpoint[..8].try_into().unwrap()) as usize;
        for (at, byte) in flips {
            let i = at.index(header + 64);
            checkpoint[i] ^= byte;
        }
        if truncate {
            checkpoint.truncate(cut.index(checkpoint.len()));
        }
        let _ = load(&config, &checkpoint);
    }

    #[test]
    fn arbitrary_bytes_are_not_a_checkpoint(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(!load(&fixture("config.json"), &bytes));
    }
}

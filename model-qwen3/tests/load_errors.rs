//! Broken model directories and checkpoints: each gives one error naming the file and the problem.

use std::fs;
use std::path::{Path, PathBuf};

use nanovllm_qwen3::Qwen3Model;
use safetensors::{Dtype, tensor::TensorView};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gqa-tied")
}

/// A copy of the gqa-tied fixture to break.
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "generation_config.json", "model.safetensors"] {
        fs::copy(fixture().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn error(dir: &Path) -> String {
    Qwen3Model::load(dir).unwrap_err().to_string()
}

/// A checkpoint's tensors as (name, dtype, shape, bytes), to edit.
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// A change to a checkpoint, and the end of the error it must cause.
type Breakage = (Box<dyn FnOnce(&mut Tensors)>, String);

/// Rewrite model.safetensors with `edit` applied to its tensors.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Tensors)) {
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.dtype(), view.shape().to_vec(), view.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn missing_directory_file_instead_of_directory_and_no_config() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert_eq!(error(&missing), format!("{}: no such directory", missing.display()));
    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    assert_eq!(error(&file), format!("{}: is a file, expected a model directory", file.display()));
    assert_eq!(error(dir.path()), format!("{}: not a model directory: no config.json", dir.path().display()));
}

#[test]
fn truncated_checkpoint() {
    let dir = copy_fixture();
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = error(dir.path());
    assert!(message.starts_with(&format!("{}: not a valid safetensors file", path.display())), "{message}");
}

#[test]
fn header_longer_than_the_file() {
    let dir = copy_fixture();
    let path = dir.path().join("model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert!(error(dir.path()).contains("not a valid safetensors file"));
}

#[test]
fn missing_checkpoint() {
    let dir = copy_fixture();
    fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(
        error(dir.path()).ends_with(
            "model.safetensors: missing: no model.safetensors and no model.safetensors.index.json"
        )
    );
}

#[test]
fn wrong_shape_wrong_dtype_missing_and_unexpected_tensors() {
    const NAME: &str = "model.layers.1.self_attn.k_proj.weight";
    let cases: Vec<Breakage> = vec![
        (
            Box::new(|t: &mut Tensors| {
                let k = t.iter_mut().find(|x| x.0 == NAME).unwrap();
                k.2 = vec![16, 64 * 2];
            }),
            format!("{NAME} has shape [16, 128], config.json implies [32, 64]"),
        ),
        (
            Box::new(|t: &mut Tensors| {
                let k = t.iter_mut().find(|x| x.0 == NAME).unwrap();
                k.1 = Dtype::I16;
            }),
            format!("{NAME} has dtype I16; expected BF16, F16 or F32"),
        ),
        (Box::new(|t: &mut Tensors| t.retain(|x| x.0 != NAME)), format!("checkpoint has no tensor {NAME}")),
        (
            Box::new(|t: &mut Tensors| {
                t.push(("model.layers.9.mlp.extra.weight".into(), Dtype::BF16, vec![2], vec![0; 4]))
            }),
            "unexpected tensor model.layers.9.mlp.extra.weight (not part of a Qwen3 model of this config)"
                .into(),
        ),
    ];
    for (edit, expected) in cases {
        let dir = copy_fixture();
        rewrite(dir.path(), edit);
        let message = error(dir.path());
        assert!(message.ends_with(&expected), "{message}");
    }
}

#[test]
fn an_index_naming_a_missing_shard_or_a_tensor_twice() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mha-untied-sharded");
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    assert!(Qwen3Model::load(dir.path()).is_ok());
    // A tensor stored in two shards.
    let second = dir.path().join("model-00002-of-00003.safetensors");
    let original = fs::read(&second).unwrap();
    fs::copy(dir.path().join("model-00003-of-00003.safetensors"), &second).unwrap();
    assert!(error(dir.path()).contains("appears in more than one file"), "{}", error(dir.path()));
    fs::write(&second, original).unwrap();
    fs::remove_file(dir.path().join("model-00003-of-00003.safetensors")).unwrap();
    assert!(error(dir.path()).contains("names shard \"model-00003-of-00003.safetensors\", which is not in"));
}

#[test]
fn config_of_another_architecture() {
    let dir = copy_fixture();
    let config =
        fs::read_to_string(dir.path().join("config.json")).unwrap().replace("\"qwen3\"", "\"llama\"");
    fs::write(dir.path().join("config.json"), config).unwrap();
    assert_eq!(
        error(dir.path()),
        "config.json: model_type = \"llama\": only \"qwen3\" (dense Qwen3) is implemented"
    );
}

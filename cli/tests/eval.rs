//! `nanovllm-cli eval` as a user runs it.

use std::path::Path;
use std::process::Command;

fn eval(text: &Path, args: &[&str]) -> std::process::Output {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-random-qwen3");
    Command::new(env!("CARGO_BIN_EXE_nanovllm-cli"))
        .args([
            "eval",
            "--model",
            &demo.display().to_string(),
            "--load-format",
            "dummy",
            "--block-size",
            "16",
        ])
        .args(["--text", &text.display().to_string(), "--json"])
        .args(args)
        .output()
        .unwrap()
}

fn text_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("text.txt");
    let words = ["in", "the", "beginning", "was", "a", "word", "and", "light", "over", "water"];
    let text: Vec<&str> = (0..300).map(|i| words[(i * 7 + i / 3) % words.len()]).collect();
    std::fs::write(&path, text.join(" ")).unwrap();
    path
}

#[test]
fn int8_is_compared_with_bf16_and_bf16_with_itself_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let text = text_file(&dir);
    let output = eval(&text, &["--kv-cache-dtype", "int8", "--context", "128", "--stride", "64"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["reference_dtype"], "bf16");
    let kl = report["mean_kl_nats"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 1e-3, "{kl}");
    assert!(report["perplexity"].as_f64().unwrap().is_finite());
    let tokens = report["tokens"].as_u64().unwrap();

    let output = eval(&text, &["--kv-cache-dtype", "bf16", "--reference-dtype", "bf16", "--context", "128"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mean_kl_nats"].as_f64().unwrap(), 0.0);
    assert_eq!(report["top1_agreement"].as_f64().unwrap(), 1.0);
    assert_eq!(report["tokens"].as_u64().unwrap(), tokens, "every token but the first is scored once");
}

#[test]
fn bad_eval_inputs_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = text_file(&dir);
    let output = eval(&text, &["--context", "1"]);
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: --context 1 and --stride 0: need context >= 2 and 1 <= stride <= context"
    );
    std::fs::write(&text, [0xffu8, 0xfe]).unwrap();
    let output = eval(&text, &[]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not UTF-8 text"));
}

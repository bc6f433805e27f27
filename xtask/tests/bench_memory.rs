//! `cargo xtask bench-memory` reproduces nano-vllm PR #184's figures and reports ours beside them.

use std::process::Command;

fn bench_memory(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("bench-memory")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn pr_184_example_is_reproduced() {
    let report = bench_memory(&["--preset", "qwen3-0.6b", "--blocks", "500", "--block-size", "256"]);
    let formats = report["formats"].as_array().unwrap();
    let mib: Vec<String> = formats.iter().map(|f| format!("{:.1}", f["mib"].as_f64().unwrap())).collect();
    assert_eq!(mib, ["14000.0", "7109.4", "7218.8", "7109.4", "3937.5", "7000.0"]);
    let saved: Vec<String> =
        formats.iter().map(|f| format!("{:.1}", f["saved_vs_bf16_percent"].as_f64().unwrap())).collect();
    assert_eq!(saved, ["0.0", "49.2", "48.4", "49.2", "71.9", "50.0"]);
}

#[test]
fn a_budget_holds_about_twice_the_int8_sequences() {
    let report = bench_memory(&[
        "--preset",
        "qwen3-8b",
        "--memory-gib",
        "4",
        "--block-size",
        "16",
        "--context-len",
        "2048",
    ]);
    let formats = report["formats"].as_array().unwrap();
    let tokens: Vec<f64> = formats.iter().map(|f| f["tokens"].as_f64().unwrap()).collect();
    assert!((tokens[1] / tokens[0] - 256.0 / 130.0).abs() < 0.01, "{tokens:?}");
    let h200 = |f: &serde_json::Value| f["gpus"][3]["sequences"].as_u64().unwrap();
    assert!(h200(&formats[1]) as f64 >= 1.95 * h200(&formats[0]) as f64);
    assert_eq!(report["model"]["parameters"].as_u64().unwrap(), 8_190_735_360);
}

#[test]
fn bad_input_is_one_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench-memory", "--preset", "qwen3-0.6b", "--memory-gib=-1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: --memory-gib -1: must be a positive number"
    );
}

//! `nanovllm-cli bench` as a user runs it.

use std::path::Path;
use std::process::Command;

fn demo() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-random-qwen3").display().to_string()
}

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nanovllm-cli"))
        .args(["bench", "--model", &demo(), "--load-format", "dummy", "--block-size", "16"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_jsonl_workload_generates_every_requested_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workload.jsonl");
    std::fs::write(
        &path,
        "{\"prompt_token_ids\": [1, 2, 3, 4, 5], \"max_tokens\": 7}\n{\"prompt_token_ids\": [9, 8], \"max_tokens\": 3}\n{\"prompt_token_ids\": [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5], \"max_tokens\": 5}\n",
    )
    .unwrap();
    let output = bench(&["--workload", &path.display().to_string(), "--json", "--kv-cache-dtype", "int8"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requests"], 3);
    assert_eq!(report["prompt_tokens"], 28);
    assert_eq!(report["output_tokens"], 15);
    assert_eq!(report["peak_running_sequences"], 3);
    assert_eq!(report["kv_cache_dtype"], "int8");
    assert!(report["output_tokens_per_second"].as_f64().unwrap() > 0.0);
    // The steps' time splits into the forward pass and the engine's host work around it; the
    // CPU backend has no separate preparation.
    let (steps, host) = (report["step_seconds"].as_f64().unwrap(), report["host_seconds"].as_f64().unwrap());
    assert!(steps > 0.0 && steps <= report["seconds"].as_f64().unwrap(), "{report}");
    assert!((0.0..steps).contains(&host), "{report}");
    assert_eq!(report["prepare_seconds"], 0.0);
}

#[test]
fn a_small_nano_vllm_workload_runs() {
    let output = bench(&[
        "--num-seqs",
        "2",
        "--max-input-len",
        "100",
        "--max-output-len",
        "100",
        "--json",
        "--no-warmup",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["output_tokens"], 200);
    assert_eq!(report["prompt_tokens"], 200);
}

#[test]
fn bad_workload_flags_are_one_clear_error() {
    let output = bench(&["--min-input-len", "500", "--max-input-len", "100"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim(), "error: --min-input-len 500 and --max-input-len 100: need 1 <= min <= max");
}

/// The schedule alone, on the Qwen3-0.6B config: what the H200 runs of nano-vllm's workload with a
/// 4 GiB KV budget printed (`scripts/gpu-bench.sh`, docs/PERF.md), without running the model.
#[test]
fn the_schedule_alone_is_the_h200_runs_schedule() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/configs/qwen3-0.6b");
    for (dtype, blocks, steps, peak, preemptions) in
        [("bf16", 146, 4559, 58, 185), ("int8", 288, 2673, 110, 159)]
    {
        let output = Command::new(env!("CARGO_BIN_EXE_nanovllm-cli"))
            .args(["bench", "--model", &config.display().to_string(), "--kv-cache-memory-gib", "4"])
            .args(["--kv-cache-dtype", dtype, "--schedule-only", "--json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["kv_blocks"], blocks, "{dtype}");
        assert_eq!(report["steps"], steps, "{dtype}");
        assert_eq!(report["peak_running_sequences"], peak, "{dtype}");
        assert_eq!(report["preemptions"], preemptions, "{dtype}");
    }
}

#[test]
fn the_schedule_alone_needs_a_kv_budget() {
    let output = bench(&["--schedule-only"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().starts_with("error: --schedule-only needs --kv-cache-memory-gib"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_run_reports_the_schedule_that_its_replay_predicts() {
    // A fresh workload each run: the seed is in every failure message.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    // Any two sequences outgrow the budget: each ends at least 70 + 60 = 130 tokens long, 9 blocks,
    // and two 7-block prompts fit beside each other, so every seed preempts.
    let flags = [
        "--kv-cache-memory-gib",
        "0.000244140625", // 256 bf16 tokens of this model: 16 blocks of 16
        "--max-model-len",
        "256",
        "--num-seqs",
        "4",
        "--min-input-len",
        "70",
        "--max-input-len",
        "100",
        "--min-output-len",
        "60",
        "--max-output-len",
        "100",
        "--json",
    ];
    let seed_flag = seed.to_string();
    let json = |extra: &[&str]| -> serde_json::Value {
        let output = bench(&[&flags[..], &["--workload-seed", &seed_flag], extra].concat());
        assert!(output.status.success(), "seed {seed}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let (ran, replayed) = (json(&[]), json(&["--schedule-only"]));
    assert_eq!(ran["kv_blocks"], 16, "seed {seed}");
    assert!(ran["preemptions"].as_u64().unwrap() > 0, "seed {seed}: the budget is meant to preempt");
    for field in [
        "kv_blocks",
        "steps",
        "decode_steps",
        "prefill_tokens",
        "decode_tokens",
        "peak_running_sequences",
        "preemptions",
    ] {
        assert_eq!(ran[field], replayed[field], "seed {seed}: {field}");
    }
}

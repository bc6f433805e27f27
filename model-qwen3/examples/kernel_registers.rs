//! Registers and spills of every kernel a GPU model compiles, for Qwen3-0.6B's and Qwen3-8B's
//! shapes and every cache dtype the GPU reads, as ptxas reports them for Hopper (sm_90). NVRTC
//! alone, no GPU: a kernel that spills, or a change that brings decode attention near the 128
//! registers that 16 warps per SM allow, shows before any device time is spent.
//!
//! ```sh
//! scripts/with-nvrtc.sh cargo run --release -p nanovllm-qwen3 --features cuda --example kernel_registers [cubin_dir]
//! ```
//! With `cubin_dir`, every module's CUBIN is written there too, to read its SASS without a GPU
//! (`nvdisasm`, from NVIDIA's `nvidia-cuda-nvdisasm` wheel).

use nanovllm_kv_quant::CacheDtype;
use nanovllm_qwen3::Qwen3Config;
use nanovllm_qwen3::cuda::kernel_sources;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cubin_dir = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    let shapes = [("Qwen3-0.6B", 1024, 16), ("Qwen3-8B", 4096, 32)];
    let dtypes =
        [CacheDtype::Bf16, CacheDtype::Int8, CacheDtype::Fp8PerTokenHead, CacheDtype::Fp8, CacheDtype::Int4];
    println!("| shape | cache | module | build | kernel | registers | spill stores / loads (bytes) |");
    println!("|---|---|---|---|---|---|---|");
    for (model, hidden, heads) in shapes {
        let config = Qwen3Config::from_json_str(&format!(
            r#"{{"model_type": "qwen3", "hidden_size": {hidden}, "num_hidden_layers": 1,
                "num_attention_heads": {heads}, "num_key_value_heads": 8, "head_dim": 128,
                "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 4096}}"#
        ))?;
        for dtype in dtypes {
            for source in kernel_sources(&config, dtype, 256)? {
                // The model's own kernels do not depend on the cache: once per shape.
                if source.name == "qwen3" && dtype != CacheDtype::Bf16 {
                    continue;
                }
                let build: Vec<String> = source
                    .defines
                    .iter()
                    .filter(|(key, _)| ["GROUP", "THREADS"].contains(key))
                    .map(|(key, value)| format!("{key} {value}"))
                    .collect();
                let report = source.resource_report("sm_90")?;
                if let Some(dir) = &cubin_dir {
                    let file =
                        format!("{model}-{dtype}-{}-{}.cubin", source.name, build.join("-").replace(' ', ""));
                    std::fs::create_dir_all(dir)?;
                    std::fs::write(dir.join(file), source.compile("sm_90")?)?;
                }
                for (kernel, registers, spills) in kernels(&report) {
                    println!(
                        "| {model} | {dtype} | {} | {} | {kernel} | {registers} | {spills} |",
                        source.name,
                        build.join(", ")
                    );
                }
            }
        }
    }
    Ok(())
}

/// (kernel, registers, "stores / loads") from ptxas's report: each kernel's "Compiling entry
/// function", then its spill line, then its register count.
fn kernels(report: &str) -> Vec<(String, String, String)> {
    let (mut out, mut kernel, mut spills) = (Vec::new(), String::new(), String::new());
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            kernel = rest.split('\'').next().unwrap_or_default().to_owned();
        } else if line.contains("bytes spill stores") {
            let numbers: Vec<&str> =
                line.split(',').filter_map(|part| part.split_whitespace().next()).collect();
            spills = format!("{} / {}", numbers.get(1).unwrap_or(&"?"), numbers.get(2).unwrap_or(&"?"));
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let registers = rest.split_whitespace().next().unwrap_or_default().to_owned();
            out.push((std::mem::take(&mut kernel), registers, std::mem::take(&mut spills)));
        }
    }
    out
}

//! `cargo xtask bench-memory`: what the KV cache costs per dtype, and what fits.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args as ClapArgs, ValueEnum};
use nanovllm_kv_quant::{CacheDtype, RowLayout, kv_bytes_per_token};
use nanovllm_qwen3::Qwen3Config;
use serde_json::json;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Preset {
    #[value(name = "qwen3-0.6b")]
    Qwen3_0_6b,
    #[value(name = "qwen3-1.7b")]
    Qwen3_1_7b,
    #[value(name = "qwen3-4b")]
    Qwen3_4b,
    #[value(name = "qwen3-8b")]
    Qwen3_8b,
    #[value(name = "qwen3-14b")]
    Qwen3_14b,
    #[value(name = "qwen3-32b")]
    Qwen3_32b,
}

impl Preset {
    /// The architecture fields of the model's Hugging Face config.json.
    fn config(self) -> Qwen3Config {
        let (layers, hidden, heads, inter, tied) = match self {
            Preset::Qwen3_0_6b => (28, 1024, 16, 3072, true),
            Preset::Qwen3_1_7b => (28, 2048, 16, 6144, true),
            Preset::Qwen3_4b => (36, 2560, 32, 9728, true),
            Preset::Qwen3_8b => (36, 4096, 32, 12288, false),
            Preset::Qwen3_14b => (40, 5120, 40, 17408, false),
            Preset::Qwen3_32b => (64, 5120, 64, 25600, false),
        };
        let text = json!({
            "model_type": "qwen3", "num_hidden_layers": layers, "hidden_size": hidden,
            "num_attention_heads": heads, "num_key_value_heads": 8, "head_dim": 128,
            "intermediate_size": inter, "vocab_size": 151936, "max_position_embeddings": 40960,
            "rope_theta": 1000000, "rms_norm_eps": 1e-6, "tie_word_embeddings": tied,
        });
        Qwen3Config::from_json_str(&text.to_string()).expect("presets are valid configs")
    }
}

#[derive(ClapArgs)]
pub(crate) struct Args {
    /// A built-in model.
    #[arg(long, conflicts_with = "config")]
    preset: Option<Preset>,
    /// A model's config.json.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Cache blocks (with --block-size), as nano-vllm counts them.
    #[arg(long, conflicts_with = "memory_gib")]
    blocks: Option<usize>,
    /// A cache budget in GiB instead of a block count.
    #[arg(long)]
    memory_gib: Option<f64>,
    /// Token slots per block.
    #[arg(long, default_value_t = 256)]
    block_size: usize,
    /// Context length for the concurrent-sequence counts.
    #[arg(long, default_value_t = 4096)]
    context_len: usize,
    /// Fraction of a GPU's memory the engine may use (weights, activations and cache).
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also allocate the cache on this machine's GPU through the engine and report what was really
    /// allocated (needs a build with `--features cuda` and a GPU).
    #[arg(long)]
    measure: bool,
}

/// A row format: nanovllm's dtypes, and PR #184's INT8 with an f32 scale (no cache dtype of
/// ours) for comparison.
#[derive(Clone, Copy)]
struct Format {
    name: &'static str,
    row: RowLayout,
}

const FORMATS: [Format; 6] = [
    Format { name: "bf16", row: CacheDtype::Bf16.row_layout() },
    Format { name: "int8 (nanovllm: bf16 scale)", row: CacheDtype::Int8.row_layout() },
    Format { name: "int8 (PR #184: f32 scale)", row: RowLayout { code_bits: 8, group: 0, side_bytes: 4 } },
    Format { name: "fp8_per_token_head (bf16 scale)", row: CacheDtype::Fp8PerTokenHead.row_layout() },
    Format { name: "int4 (bf16 scale per 32 values)", row: CacheDtype::Int4.row_layout() },
    Format { name: "fp8 (vLLM: per-tensor scale)", row: CacheDtype::Fp8.row_layout() },
];

/// GPUs of common sizes: a label and the memory the driver reports, in MiB.
const GPUS: [(&str, usize); 4] =
    [("8 GB", 8192), ("24 GB", 24576), ("80 GB", 81920), ("141 GB (H200)", 143_771)];

const MIB: f64 = (1u64 << 20) as f64;

fn bytes_per_token(config: &Qwen3Config, format: Format) -> usize {
    kv_bytes_per_token(format.row, config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let config = match (args.preset, &args.config) {
        (Some(preset), _) => preset.config(),
        (None, Some(path)) => Qwen3Config::from_file(path)?,
        (None, None) => bail!("give --preset or --config"),
    };
    if args.block_size == 0 || args.context_len == 0 {
        bail!("--block-size and --context-len must be at least 1");
    }
    let block_bytes = |format: Format| bytes_per_token(&config, format) * args.block_size;
    let blocks_of = |format: Format| -> anyhow::Result<usize> {
        match (args.blocks, args.memory_gib) {
            (Some(blocks), _) => Ok(blocks),
            (None, Some(gib)) if gib.is_finite() && gib > 0.0 => {
                Ok((gib * (1u64 << 30) as f64) as usize / block_bytes(format))
            }
            (None, Some(gib)) => bail!("--memory-gib {gib}: must be a positive number"),
            (None, None) => Ok(500),
        }
    };
    let blocks_per_seq = args.context_len.div_ceil(args.block_size);
    let bf16_bytes = blocks_of(FORMATS[0])? * block_bytes(FORMATS[0]);
    let weights = 2 * config.num_parameters();
    let mut rows = Vec::new();
    for format in FORMATS {
        let blocks = blocks_of(format)?;
        let bytes = blocks * block_bytes(format);
        let gpus: Vec<_> = GPUS
            .iter()
            .map(|&(label, mib)| {
                let budget = ((mib as f64 * MIB * args.gpu_memory_utilization) as usize).saturating_sub(weights);
                let gpu_blocks = budget / block_bytes(format);
                json!({ "gpu": label, "kv_budget_mib": budget as f64 / MIB, "tokens": gpu_blocks * args.block_size, "sequences": gpu_blocks / blocks_per_seq })
            })
            .collect();
        rows.push(json!({
            "format": format.name, "blocks": blocks, "block_size": args.block_size,
            "bytes_per_token": bytes_per_token(&config, format), "mib": bytes as f64 / MIB,
            "tokens": blocks * args.block_size,
            "saved_vs_bf16_percent": 100.0 * (1.0 - (bytes_per_token(&config, format) as f64 / bytes_per_token(&config, FORMATS[0]) as f64)),
            "same_bytes_tokens_vs_bf16": bf16_bytes as f64 / block_bytes(format) as f64 * args.block_size as f64,
            "gpus": gpus,
        }));
    }
    let model = json!({
        "layers": config.num_hidden_layers, "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
        "parameters": config.num_parameters(), "weights_mib": weights as f64 / MIB,
    });
    let measured = if args.measure { Some(measure(&config, &args, blocks_of(FORMATS[1])?)?) } else { None };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "model": model, "formats": rows, "measured": measured }))?
        );
        return Ok(());
    }
    print_tables(&config, &args, &rows, weights);
    if let Some(measured) = measured {
        println!("\nMeasured on this GPU:");
        for m in measured.as_array().into_iter().flatten() {
            match m.get("engine_blocks") {
                Some(blocks) => println!(
                    "  {} through the engine (--gpu-memory-utilization {}): {} blocks, {} tokens, cache {:.1} MiB; {:.1} of {:.1} MiB free afterwards",
                    m["dtype"],
                    args.gpu_memory_utilization,
                    blocks,
                    m["tokens"],
                    m["estimated_mib"].as_f64().unwrap_or(0.0),
                    m["free_after_mib"].as_f64().unwrap_or(0.0),
                    m["total_mib"].as_f64().unwrap_or(0.0)
                ),
                None => println!(
                    "  {} cache of {} blocks: estimated {:.1} MiB, allocated {:.1} MiB",
                    m["dtype"],
                    m["blocks"],
                    m["estimated_mib"].as_f64().unwrap_or(0.0),
                    m["allocated_mib"].as_f64().unwrap_or(0.0)
                ),
            }
        }
    }
    Ok(())
}

fn print_tables(config: &Qwen3Config, args: &Args, rows: &[serde_json::Value], weights: usize) {
    println!(
        "Model: {} layers, {} kv heads x {}, {:.2}B parameters ({:.0} MiB of bf16 weights); blocks of {} tokens\n",
        config.num_hidden_layers,
        config.num_key_value_heads,
        config.head_dim,
        config.num_parameters() as f64 / 1e9,
        weights as f64 / MIB,
        args.block_size
    );
    println!("| format | bytes/token | blocks | KV cache (MiB) | tokens | saved vs bf16 |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.1}% |",
            row["format"].as_str().unwrap_or_default(),
            row["bytes_per_token"],
            row["blocks"],
            row["mib"].as_f64().unwrap_or(0.0),
            row["tokens"],
            row["saved_vs_bf16_percent"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "\nConcurrent sequences of {} tokens per GPU ({}% of its memory, less the weights):\n",
        args.context_len,
        (args.gpu_memory_utilization * 100.0).round()
    );
    let header: Vec<&str> = GPUS.iter().map(|g| g.0).collect();
    println!("| format | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(GPUS.len()));
    for row in rows {
        let cells: Vec<String> = row["gpus"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| format!("{} ({} tokens)", g["sequences"], g["tokens"]))
            .collect();
        println!("| {} | {} |", row["format"].as_str().unwrap_or_default(), cells.join(" | "));
    }
}

#[cfg(feature = "cuda")]
fn measure(config: &Qwen3Config, args: &Args, blocks: usize) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    use nanovllm_kv_cache::CacheLayout;
    use nanovllm_kv_cache::cuda::GpuKvCache;
    let gpu = nanovllm_cuda::Gpu::open()?;
    let mut out = Vec::new();
    for dtype in
        [CacheDtype::Bf16, CacheDtype::Int8, CacheDtype::Fp8PerTokenHead, CacheDtype::Fp8, CacheDtype::Int4]
    {
        let layout = CacheLayout {
            num_layers: config.num_hidden_layers,
            num_blocks: blocks,
            block_size: args.block_size,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
        };
        gpu.stream.synchronize()?;
        let (free_before, _) = gpu.ctx.mem_get_info()?;
        let cache = GpuKvCache::new(&gpu, layout, dtype)?;
        gpu.stream.synchronize()?;
        let (free_after, _) = gpu.ctx.mem_get_info()?;
        out.push(json!({
            "dtype": dtype.name(), "blocks": blocks,
            "estimated_mib": layout.bytes(dtype).context("cache size overflows")? as f64 / MIB,
            "allocated_mib": (free_before - free_after) as f64 / MIB,
        }));
        drop(cache);
        out.push(engine_choice(config, args, dtype)?);
    }
    Ok(serde_json::Value::Array(out))
}

/// The engine on this GPU with dummy weights: the block count it chooses under
/// `--gpu-memory-utilization`, and the memory left free once it is built. (The memory it took is
/// not measured as a difference: the driver's stream-ordered pool keeps earlier, freed caches.)
#[cfg(feature = "cuda")]
fn engine_choice(config: &Qwen3Config, args: &Args, dtype: CacheDtype) -> anyhow::Result<serde_json::Value> {
    use nanovllm::{Device, EngineConfig, LLM};
    let gpu = nanovllm_cuda::Gpu::open()?;
    let model = nanovllm_qwen3::Qwen3Model::random(config.clone(), 0, 0.02);
    let settings = EngineConfig {
        device: Device::Cuda,
        kv_cache_dtype: dtype,
        block_size: args.block_size,
        gpu_memory_utilization: args.gpu_memory_utilization,
        ..EngineConfig::default()
    };
    let llm = LLM::new(model, nanovllm_qwen3::GenerationConfig::default(), settings)?;
    let (free_after, total) = gpu.ctx.mem_get_info()?;
    let blocks = llm.scheduler().block_manager().num_blocks();
    let per_block =
        bytes_per_token(config, Format { name: dtype.name(), row: dtype.row_layout() }) * args.block_size;
    Ok(json!({
        "dtype": dtype.name(), "engine_blocks": blocks, "tokens": blocks * args.block_size,
        "estimated_mib": (blocks * per_block) as f64 / MIB,
        "free_after_mib": free_after as f64 / MIB,
        "total_mib": total as f64 / MIB,
    }))
}

#[cfg(not(feature = "cuda"))]
fn measure(_: &Qwen3Config, _: &Args, _: usize) -> anyhow::Result<serde_json::Value> {
    bail!("--measure needs a GPU build: cargo xtask-cuda bench-memory ... (run on a machine with a GPU)")
}

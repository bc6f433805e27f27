//! `nanovllm-cli eval`: perplexity of a text, and how far a KV cache dtype moves the model's
//! distributions from a reference dtype (KL divergence per token, top-1 agreement).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use nanovllm::{CacheDtype, LLM, Qwen3Config, argmax, log_softmax};
use serde_json::json;

use crate::engine_args::EngineArgs;

#[derive(Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// A UTF-8 text file to score.
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window (each window is scored with its own context only).
    #[arg(long, default_value_t = 1024)]
    context: usize,
    /// Tokens the window advances by; a token is scored once, in the first window that predicts
    /// it with the most context. Default: half the window.
    #[arg(long)]
    stride: Option<usize>,
    /// Score only the first N tokens of the text.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// KV cache dtype of the reference run that KL and agreement compare with. Default: bf16 when
    /// --kv-cache-dtype is another dtype; none when it is bf16.
    #[arg(long)]
    reference_dtype: Option<CacheDtype>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Running sums over scored tokens.
#[derive(Default)]
struct Totals {
    tokens: usize,
    nll: f64,
    reference_nll: f64,
    kl: f64,
    agree: usize,
}

pub(crate) fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let stride = args.stride.unwrap_or(args.context / 2);
    if args.context < 2 || stride == 0 || stride > args.context {
        bail!(
            "--context {} and --stride {stride}: need context >= 2 and 1 <= stride <= context",
            args.context
        );
    }
    let bytes = std::fs::read(&args.text).with_context(|| format!("{}", args.text.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", args.text.display()))?;
    let reference_dtype =
        args.reference_dtype.or((args.engine.kv_cache_dtype != CacheDtype::Bf16).then_some(CacheDtype::Bf16));
    let mut llm = load(&args.engine, args.engine.kv_cache_dtype, args.context)?;
    let mut reference = reference_dtype.map(|dtype| load(&args.engine, dtype, args.context)).transpose()?;
    let tokenizer = llm
        .tokenizer()
        .with_context(|| format!("{}: eval needs the model's tokenizer.json", args.engine.model))?;
    let mut tokens = tokenizer.encode(&text)?;
    tokens.truncate(args.max_tokens.unwrap_or(usize::MAX));
    if tokens.len() < 2 {
        bail!("{}: fewer than 2 tokens to score", args.text.display());
    }
    let mut totals = Totals::default();
    let mut scored_until = 1; // position 0 has no prediction
    let mut begin = 0;
    loop {
        let end = (begin + args.context).min(tokens.len());
        let window = &tokens[begin..end];
        let logits = llm.score(window)?;
        let reference_logits = reference.as_mut().map(|r| r.score(window)).transpose()?;
        for target in scored_until.max(begin + 1)..end {
            let row = target - begin - 1;
            let log_probs = log_softmax(&logits[row]);
            totals.nll -= log_probs[tokens[target] as usize];
            if let Some(reference_logits) = &reference_logits {
                let reference = log_softmax(&reference_logits[row]);
                totals.reference_nll -= reference[tokens[target] as usize];
                totals.kl += reference.iter().zip(&log_probs).map(|(r, t)| r.exp() * (r - t)).sum::<f64>();
                totals.agree += usize::from(argmax(&reference) == argmax(&log_probs));
            }
            totals.tokens += 1;
        }
        scored_until = end;
        if end == tokens.len() {
            break;
        }
        begin += stride;
    }
    report(&args, &totals, reference_dtype);
    Ok(ExitCode::SUCCESS)
}

/// An engine with a KV budget of one window (unless one is given).
fn load(args: &EngineArgs, dtype: CacheDtype, context: usize) -> anyhow::Result<LLM> {
    let mut args = args.clone();
    args.kv_cache_dtype = dtype;
    if args.kv_cache_memory_gib.is_none() {
        args.kv_cache_memory_gib = Some(window_budget_gib(&args, context)?);
    }
    args.load(false)
}

/// Enough KV cache for one window and one sequence of the model's context, with a block to spare.
fn window_budget_gib(args: &EngineArgs, context: usize) -> anyhow::Result<f64> {
    let dir = args.model_dir()?;
    let c = Qwen3Config::from_file(&dir.join("config.json"))?;
    let tokens = context.max(c.max_position_embeddings.min(4096)) + 512;
    let bytes = tokens * args.config()?.kv_bytes_per_token(&c);
    Ok(bytes as f64 / (1u64 << 30) as f64 * 1.05)
}

fn report(args: &EvalArgs, totals: &Totals, reference_dtype: Option<CacheDtype>) {
    let n = totals.tokens as f64;
    let ppl = (totals.nll / n).exp();
    let mut report = json!({
        "tokens": totals.tokens, "context": args.context, "kv_cache_dtype": args.engine.kv_cache_dtype.name(),
        "perplexity": ppl,
    });
    if let Some(dtype) = reference_dtype {
        let reference_ppl = (totals.reference_nll / n).exp();
        report["reference_dtype"] = json!(dtype.name());
        report["reference_perplexity"] = json!(reference_ppl);
        report["perplexity_change_percent"] = json!(100.0 * (ppl / reference_ppl - 1.0));
        report["mean_kl_nats"] = json!(totals.kl / n);
        report["top1_agreement"] = json!(totals.agree as f64 / n);
    }
    if args.json {
        println!("{report}");
        return;
    }
    println!(
        "{} tokens, windows of {}: perplexity {ppl:.4} ({} KV cache)",
        totals.tokens, args.context, args.engine.kv_cache_dtype
    );
    if let Some(dtype) = reference_dtype {
        println!(
            "reference ({dtype} KV cache): perplexity {:.4}, change {:+.4}%; mean KL({dtype} || {}) {:.3e} nats/token; top-1 agreement {:.2}%",
            report["reference_perplexity"].as_f64().unwrap_or(0.0),
            report["perplexity_change_percent"].as_f64().unwrap_or(0.0),
            args.engine.kv_cache_dtype,
            report["mean_kl_nats"].as_f64().unwrap_or(0.0),
            100.0 * report["top1_agreement"].as_f64().unwrap_or(0.0)
        );
    }
}

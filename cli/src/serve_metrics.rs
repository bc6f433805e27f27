//! What `bench-serve` measures, defined as `vllm bench serve` defines it, so that its numbers line
//! up with published ones: TTFT at the first chunk with choices, ITL between chunks, TPOT over the
//! tokens after the first (from usage's `completion_tokens`), end-to-end latency to the last
//! chunk; throughputs over the whole run; percentiles as numpy's (linear interpolation).

use std::time::Duration;

use serde_json::{Map, Value, json};

/// One request as the client saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestOutput {
    pub(crate) prompt_len: usize,
    /// Whether a chunk with text came and no error.
    pub(crate) success: bool,
    /// Seconds to the first chunk with choices.
    pub(crate) ttft: f64,
    /// Seconds between consecutive chunks with choices.
    pub(crate) itl: Vec<f64>,
    /// Seconds from sending to the last chunk with choices.
    pub(crate) latency: f64,
    /// `usage.completion_tokens`.
    pub(crate) output_tokens: usize,
    pub(crate) generated_text: String,
    pub(crate) error: String,
}

/// Which latencies get percentiles, by vLLM's names.
pub(crate) const METRICS: [(&str, &str, &str); 4] = [
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2el", "E2EL", "End-to-end Latency"),
];

/// The run's settings, as they appear in the result.
pub(crate) struct RunInfo<'a> {
    pub(crate) model_id: &'a str,
    pub(crate) tokenizer_id: &'a str,
    pub(crate) num_prompts: usize,
    pub(crate) request_rate: f64,
    pub(crate) burstiness: f64,
    pub(crate) max_concurrency: Option<usize>,
}

/// numpy's `percentile` (linear interpolation) of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// Mean, median, population standard deviation and percentiles of `values`, in milliseconds.
fn summary(values: &[f64], percentiles: &[f64]) -> (f64, f64, f64, Vec<(f64, f64)>) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0, percentiles.iter().map(|&p| (p, 0.0)).collect());
    }
    let mut sorted: Vec<f64> = values.iter().map(|v| v * 1000.0).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mean = sorted.iter().sum::<f64>() / n;
    let std = (sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let at = percentiles.iter().map(|&p| (p, percentile(&sorted, p))).collect();
    (mean, percentile(&sorted, 50.0), std, at)
}

/// `99` for 99.0, `99.9` for 99.9: vLLM's spelling of a percentile in field names.
fn percentile_name(p: f64) -> String {
    if p.fract() == 0.0 { format!("{}", p as u64) } else { format!("{p}") }
}

/// The result with vLLM's field names, and the table `vllm bench serve` prints.
pub(crate) fn report(
    outputs: &[RequestOutput],
    duration: Duration,
    info: &RunInfo<'_>,
    percentiles: &[f64],
) -> (Value, String) {
    let duration = duration.as_secs_f64();
    let done: Vec<&RequestOutput> = outputs.iter().filter(|o| o.success).collect();
    let total_input: usize = done.iter().map(|o| o.prompt_len).sum();
    let total_output: usize = done.iter().map(|o| o.output_tokens).sum();
    let ttfts: Vec<f64> = done.iter().map(|o| o.ttft).collect();
    let tpots: Vec<f64> = done
        .iter()
        .filter(|o| o.output_tokens > 1)
        .map(|o| (o.latency - o.ttft) / (o.output_tokens - 1) as f64)
        .collect();
    let itls: Vec<f64> = done.iter().flat_map(|o| o.itl.iter().copied()).collect();
    let e2els: Vec<f64> = done.iter().map(|o| o.latency).collect();
    let per = |count: usize| if duration > 0.0 { count as f64 / duration } else { 0.0 };
    let mut result = Map::new();
    let mut put = |key: &str, value: Value| {
        result.insert(key.to_owned(), value);
    };
    put("date", json!(jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string()));
    put("endpoint_type", json!("openai"));
    put("backend", json!("openai"));
    put("model_id", json!(info.model_id));
    put("tokenizer_id", json!(info.tokenizer_id));
    put("num_prompts", json!(info.num_prompts));
    put("request_rate", if info.request_rate.is_finite() { json!(info.request_rate) } else { json!("inf") });
    put("burstiness", json!(info.burstiness));
    put("max_concurrency", json!(info.max_concurrency));
    put("duration", json!(duration));
    put("completed", json!(done.len()));
    put("failed", json!(outputs.len() - done.len()));
    put("total_input_tokens", json!(total_input));
    put("total_output_tokens", json!(total_output));
    put("request_throughput", json!(per(done.len())));
    put("output_throughput", json!(per(total_output)));
    put("total_token_throughput", json!(per(total_input + total_output)));
    put("input_lens", json!(outputs.iter().map(|o| o.prompt_len).collect::<Vec<_>>()));
    put("output_lens", json!(outputs.iter().map(|o| o.output_tokens).collect::<Vec<_>>()));
    put("ttfts", json!(outputs.iter().map(|o| o.ttft).collect::<Vec<_>>()));
    put("itls", json!(outputs.iter().map(|o| &o.itl).collect::<Vec<_>>()));
    put("generated_texts", json!(outputs.iter().map(|o| &o.generated_text).collect::<Vec<_>>()));
    put("errors", json!(outputs.iter().map(|o| &o.error).collect::<Vec<_>>()));
    let mut table = format!("{:=^50}\n", " Serving Benchmark Result ");
    let line = |table: &mut String, label: &str, value: String| {
        table.push_str(&format!("{label:<40} {value:<10}\n"))
    };
    line(&mut table, "Successful requests:", done.len().to_string());
    line(&mut table, "Failed requests:", (outputs.len() - done.len()).to_string());
    if let Some(n) = info.max_concurrency {
        line(&mut table, "Maximum request concurrency:", n.to_string());
    }
    line(&mut table, "Benchmark duration (s):", format!("{duration:.2}"));
    line(&mut table, "Total input tokens:", total_input.to_string());
    line(&mut table, "Total generated tokens:", total_output.to_string());
    line(&mut table, "Request throughput (req/s):", format!("{:.2}", per(done.len())));
    line(&mut table, "Output token throughput (tok/s):", format!("{:.2}", per(total_output)));
    line(&mut table, "Total Token throughput (tok/s):", format!("{:.2}", per(total_input + total_output)));
    for ((key, name, header), values) in METRICS.iter().zip([&ttfts, &tpots, &itls, &e2els]) {
        let (mean, median, std, at) = summary(values, percentiles);
        table.push_str(&format!("{header:-^50}\n"));
        line(&mut table, &format!("Mean {name} (ms):"), format!("{mean:.2}"));
        line(&mut table, &format!("Median {name} (ms):"), format!("{median:.2}"));
        put(&format!("mean_{key}_ms"), json!(mean));
        put(&format!("median_{key}_ms"), json!(median));
        put(&format!("std_{key}_ms"), json!(std));
        for (p, value) in at {
            let p = percentile_name(p);
            line(&mut table, &format!("P{p} {name} (ms):"), format!("{value:.2}"));
            put(&format!("p{p}_{key}_ms"), json!(value));
        }
    }
    table.push_str(&format!("{}\n", "=".repeat(50)));
    (Value::Object(result), table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_as_numpy() {
        // numpy.percentile([1, 2, 3, 4], [50, 90, 99]) = [2.5, 3.7, 3.97]
        let sorted = [1.0, 2.0, 3.0, 4.0];
        for (p, expected) in [(50.0, 2.5), (90.0, 3.7), (99.0, 3.97), (0.0, 1.0), (100.0, 4.0)] {
            assert!((percentile(&sorted, p) - expected).abs() < 1e-12, "p{p}");
        }
        assert_eq!(percentile_name(99.0), "99");
        assert_eq!(percentile_name(99.9), "99.9");
    }

    #[test]
    fn tpot_counts_the_tokens_after_the_first_and_failures_count_apart() {
        let ok = RequestOutput {
            prompt_len: 10,
            success: true,
            ttft: 0.1,
            itl: vec![0.02, 0.02],
            latency: 0.5,
            output_tokens: 5,
            ..RequestOutput::default()
        };
        let failed = RequestOutput { prompt_len: 7, error: "HTTP 503".into(), ..RequestOutput::default() };
        let info = RunInfo {
            model_id: "m",
            tokenizer_id: "m",
            num_prompts: 2,
            request_rate: f64::INFINITY,
            burstiness: 1.0,
            max_concurrency: None,
        };
        let (result, table) = report(&[ok, failed], Duration::from_secs(2), &info, &[99.0]);
        assert_eq!((result["completed"].clone(), result["failed"].clone()), (json!(1), json!(1)));
        assert_eq!(result["total_input_tokens"], 10);
        // (0.5 - 0.1) / (5 - 1) s = 100 ms.
        assert!((result["mean_tpot_ms"].as_f64().unwrap() - 100.0).abs() < 1e-9);
        assert!((result["output_throughput"].as_f64().unwrap() - 2.5).abs() < 1e-12);
        assert_eq!(result["request_rate"], "inf");
        assert!(table.contains("Failed requests:                         1"), "{table}");
        assert!(table.contains("P99 ITL (ms):"), "{table}");
    }
}

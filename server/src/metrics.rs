//! `/metrics` in Prometheus' text format, under vLLM's metric names, so that dashboards and
//! routers built for vLLM read this server unchanged.

use nanovllm::{Completion, StepOutput};

use crate::engine::EngineLoad;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};

/// The server's metrics, updated by the engine thread (engine state, tokens) and the handlers
/// (latencies).
pub struct Metrics {
    registry: Registry,
    num_requests_running: IntGauge,
    num_requests_waiting: IntGauge,
    kv_cache_usage_perc: prometheus::Gauge,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    num_preemptions: IntCounter,
    prefix_cache_queries: IntCounter,
    prefix_cache_hits: IntCounter,
    request_success: IntCounterVec,
    pub(crate) time_to_first_token: Histogram,
    pub(crate) inter_token_latency: Histogram,
    pub(crate) e2e_request_latency: Histogram,
    pub(crate) queue_time: Histogram,
    cache_config_info: IntGaugeVec,
    /// Preemptions the engine had counted at the last look.
    preemptions_seen: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const MODEL_LABEL: &str = "model_name";

impl Metrics {
    /// Metrics for `model` (the `model_name` label of every metric).
    pub fn new(model: &str) -> Self {
        let registry = Registry::new();
        // Each metric is made and registered in one call.
        fn registered<C: Collector + Clone + 'static>(registry: &Registry, made: prometheus::Result<C>) -> C {
            let metric = made.expect("a valid metric");
            registry.register(Box::new(metric.clone())).expect("metric names are unique");
            metric
        }
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label(MODEL_LABEL, model);
        let counter = |name: &str, help: &str| registered(&registry, IntCounter::with_opts(opts(name, help)));
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::with_opts(opts(name, help)));
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts =
                HistogramOpts::new(name, help).const_label(MODEL_LABEL, model).buckets(buckets.to_vec());
            registered(&registry, Histogram::with_opts(opts))
        };
        // vLLM's buckets, in seconds.
        let ttft = [
            0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
            40.0, 80.0, 160.0, 640.0, 2560.0,
        ];
        let itl = [
            0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
            40.0, 80.0,
        ];
        let request = [
            0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
            480.0, 960.0, 1920.0, 7680.0,
        ];
        Metrics {
            num_requests_running: gauge(
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
            ),
            num_requests_waiting: gauge(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
            ),
            kv_cache_usage_perc: registered(
                &registry,
                prometheus::Gauge::with_opts(opts(
                    "vllm:kv_cache_usage_perc",
                    "KV-cache usage. 1 means 100 percent usage.",
                )),
            ),
            prompt_tokens: counter("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
            ),
            num_preemptions: counter(
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
            ),
            prefix_cache_queries: counter(
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
            ),
            prefix_cache_hits: counter(
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
            ),
            request_success: registered(
                &registry,
                IntCounterVec::new(
                    opts("vllm:request_success_total", "Count of successfully processed requests."),
                    &["finished_reason"],
                ),
            ),
            time_to_first_token: histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &ttft,
            ),
            inter_token_latency: histogram(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                &itl,
            ),
            e2e_request_latency: histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &request,
            ),
            queue_time: histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                &request,
            ),
            cache_config_info: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new("vllm:cache_config_info", "Information of the LLMEngine CacheConfig"),
                    &["cache_dtype", "block_size"],
                ),
            ),
            preemptions_seen: Default::default(),
            registry,
        }
    }

    /// `vllm:cache_config_info`: the cache's dtype and block size.
    pub(crate) fn set_cache_config(&self, cache_dtype: &str, block_size: usize) {
        self.cache_config_info.with_label_values(&[cache_dtype, &block_size.to_string()]).set(1);
    }

    /// The engine's state after a step (or an abort): running and waiting requests, cache use,
    /// preemptions.
    pub(crate) fn observe_engine(&self, load: &EngineLoad) {
        self.num_requests_running.set(load.running as i64);
        self.num_requests_waiting.set(load.waiting as i64);
        self.kv_cache_usage_perc.set(load.kv_cache_usage);
        let seen = self.preemptions_seen.swap(load.preemptions, std::sync::atomic::Ordering::Relaxed);
        self.num_preemptions.inc_by(load.preemptions.saturating_sub(seen) as u64);
    }

    /// Tokens a step computed: prompt tokens, and drawn tokens.
    pub(crate) fn count_step(&self, output: &StepOutput) {
        self.prompt_tokens.inc_by(output.num_prefill_tokens as u64);
        self.generation_tokens.inc_by(output.tokens.len() as u64);
    }

    /// Requests (samples) that ended, by finish reason; and each request's prompt as the prefix
    /// cache saw it at its first admission (its first sample counts for the others).
    pub(crate) fn count_finished(&self, finished: &[Completion]) {
        for completion in finished {
            self.request_success.with_label_values(&[completion.finish_reason.name()]).inc();
            if completion.index == 0 {
                self.prefix_cache_queries.inc_by(completion.prompt_token_ids.len() as u64);
                self.prefix_cache_hits.inc_by(completion.cached_prompt_tokens as u64);
            }
        }
    }

    /// Prometheus' text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

//! Decode steps replayed from CUDA graphs: one graph per batch size (1, 2, 4, 8, then every 16 up
//! to `max_seqs`, as nano-vllm) and table width, captured once the cache exists. A step of `n`
//! sequences replays the smallest graph of at least `n` rows whose tables hold its longest
//! sequence, its other rows padding that stores and reads nothing. A replay is one launch where an
//! eager step is some 300, each costing the host a few microseconds.
//!
//! Table widths: `max_model_len`, then halved while at least [`NARROWEST_TABLE_KEYS`]. Attention
//! splits a context by the table width it is captured with, so tables far wider than the contexts
//! leave splits empty and part of the GPU idle (nano-vllm's workload: bf16 2% faster end to end,
//! INT8 0-1.4% on an H200: docs/PERF.md).

use nanovllm_cuda::GpuError;
use nanovllm_cuda::cudarc::driver::CudaGraph;
use nanovllm_cuda::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

use super::GpuQwen3;
use super::step::{StepInputs, StepShape};

/// The narrowest table a graph is captured with, in keys.
const NARROWEST_TABLE_KEYS: usize = 1024;

/// A captured decode step: its rows (batch size), its table width in blocks, and the graph.
struct DecodeGraph {
    rows: usize,
    table_width: usize,
    graph: CudaGraph,
}

/// The captured graphs, by ascending table width, then batch size.
#[derive(Default)]
pub(super) struct DecodeGraphs {
    graphs: Vec<DecodeGraph>,
}

impl DecodeGraphs {
    /// The batch sizes to capture for at most `max_seqs` sequences.
    fn batch_sizes(max_seqs: usize) -> Vec<usize> {
        let mut sizes: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|&b| b < max_seqs).collect();
        sizes.extend((16..max_seqs).step_by(16));
        sizes.push(max_seqs);
        sizes
    }

    /// The table widths (in blocks) to capture, narrowest first, for sequences of up to
    /// `max_model_len` tokens.
    fn table_widths(max_model_len: usize, block_size: usize) -> Vec<usize> {
        let mut widths = vec![max_model_len.div_ceil(block_size)];
        while let Some(&widest) = widths.last()
            && widest > 1
            && widest.div_ceil(2) * block_size >= NARROWEST_TABLE_KEYS
        {
            widths.push(widest.div_ceil(2));
        }
        widths.reverse();
        widths
    }

    /// The graph for a decode step of `n` sequences whose longest table has `table_width`
    /// blocks, with the rows and table width it was captured with.
    pub(super) fn for_step(&self, n: usize, table_width: usize) -> Option<(usize, usize, &CudaGraph)> {
        self.graphs
            .iter()
            .find(|g| g.rows >= n && g.table_width >= table_width)
            .map(|g| (g.rows, g.table_width, &g.graph))
    }

    /// Batch sizes captured (each at every table width).
    pub(super) fn batch_sizes_captured(&self) -> usize {
        self.graphs.iter().filter(|g| g.table_width == self.graphs[0].table_width).count()
    }
}

impl GpuQwen3 {
    /// Capture a decode step for each table width and batch size. Nothing runs while capturing, so
    /// the cache is untouched.
    pub(super) fn capture_decode_graphs(&mut self) -> Result<(), GpuError> {
        let started = std::time::Instant::now();
        self.graphs = DecodeGraphs::default();
        let mut graphs = Vec::new();
        for table_width in DecodeGraphs::table_widths(self.limits.max_model_len, self.cache.layout.block_size)
        {
            for rows in DecodeGraphs::batch_sizes(self.limits.max_seqs) {
                let step = StepInputs::padding(rows, rows, table_width);
                // The inputs a replay reads are uploaded before it; these only give the shape.
                self.inputs.upload(&self.ops.gpu.stream, &step)?;
                let stream = self.ops.gpu.stream.clone();
                stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
                let queued = self.enqueue_forward(StepShape::of(&step));
                // End the capture even when queuing failed, so the stream is usable again.
                let graph = stream.end_capture(CUgraphInstantiate_flags(0));
                queued?;
                let graph = graph?.ok_or_else(|| GpuError::Unsupported("an empty CUDA graph".into()))?;
                graph.upload()?;
                graphs.push(DecodeGraph { rows, table_width, graph });
            }
        }
        tracing::info!(
            graphs = graphs.len(),
            seconds = started.elapsed().as_secs_f64(),
            "captured decode graphs"
        );
        self.graphs = DecodeGraphs { graphs };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeGraphs;

    #[test]
    fn table_widths_halve_down_to_the_narrowest() {
        assert_eq!(DecodeGraphs::table_widths(4096, 256), [4, 8, 16]);
        assert_eq!(DecodeGraphs::table_widths(4096, 16), [64, 128, 256]);
        assert_eq!(DecodeGraphs::table_widths(40960, 256), [5, 10, 20, 40, 80, 160]);
        // Tables already at or below the narrowest: one width.
        assert_eq!(DecodeGraphs::table_widths(512, 16), [32]);
        assert_eq!(DecodeGraphs::table_widths(1024, 256), [4]);
    }
}

//! Decode steps replayed from CUDA graphs: one graph per batch size (1, 2, 4, 8, then every 16 up
//! to `max_seqs`, as nano-vllm) and table width. A step of `n` sequences replays the smallest
//! graph of at least `n` rows whose tables hold its longest sequence, its other rows padding that
//! stores and reads nothing. A replay is one launch where an eager step is some 300, each costing
//! the host a few microseconds.
//!
//! Graphs are captured when a step first needs one (a few milliseconds each), not all at start-up:
//! a process serves its first token without capturing the hundred or more it may never replay.
//! [`GpuQwen3::capture_decode_graphs`] captures all the others at once, where steady steps are timed
//! and before a server is ready (as vLLM captures every graph before serving).
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

/// A decode step's shape, its rows (batch size) and table width in blocks, and its graph once
/// captured.
struct DecodeGraph {
    rows: usize,
    table_width: usize,
    graph: Option<CudaGraph>,
}

/// The decode graphs, by ascending table width, then batch size.
#[derive(Default)]
pub(super) struct DecodeGraphs {
    graphs: Vec<DecodeGraph>,
}

impl DecodeGraphs {
    /// Every shape for at most `max_seqs` sequences of up to `max_model_len` tokens in blocks of
    /// `block_size`, none captured yet.
    pub(super) fn planned(max_seqs: usize, max_model_len: usize, block_size: usize) -> Self {
        let graphs = Self::table_widths(max_model_len, block_size)
            .into_iter()
            .flat_map(|table_width| {
                Self::batch_sizes(max_seqs).into_iter().map(move |rows| DecodeGraph {
                    rows,
                    table_width,
                    graph: None,
                })
            })
            .collect();
        DecodeGraphs { graphs }
    }

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

    /// The index of the graph for a decode step of `n` sequences whose longest table has
    /// `table_width` blocks.
    fn for_step(&self, n: usize, table_width: usize) -> Option<usize> {
        self.graphs.iter().position(|g| g.rows >= n && g.table_width >= table_width)
    }

    /// Graph `i` of [`GpuQwen3::decode_graph`], with the rows and table width it was captured with.
    pub(super) fn captured(&self, i: usize) -> Option<(usize, usize, &CudaGraph)> {
        let g = &self.graphs[i];
        g.graph.as_ref().map(|graph| (g.rows, g.table_width, graph))
    }

    /// Batch sizes with graphs (each at every table width), captured or not.
    pub(super) fn batch_sizes_planned(&self) -> usize {
        self.graphs.iter().filter(|g| g.table_width == self.graphs[0].table_width).count()
    }
}

impl GpuQwen3 {
    /// The graph for a decode step of `n` sequences whose longest table has `table_width` blocks,
    /// captured now if no step has needed it yet: its index for [`DecodeGraphs::captured`].
    pub(super) fn decode_graph(&mut self, n: usize, table_width: usize) -> Result<Option<usize>, GpuError> {
        let Some(i) = self.graphs.for_step(n, table_width) else {
            return Ok(None);
        };
        self.capture_graph(i)?;
        Ok(Some(i))
    }

    /// Capture every decode graph no step has needed yet: how many that was.
    pub fn capture_decode_graphs(&mut self) -> Result<usize, GpuError> {
        let started = std::time::Instant::now();
        let captured = self.graphs.graphs.iter().filter(|g| g.graph.is_none()).count();
        for i in 0..self.graphs.graphs.len() {
            self.capture_graph(i)?;
        }
        tracing::info!(captured, seconds = started.elapsed().as_secs_f64(), "captured decode graphs");
        Ok(captured)
    }

    /// Capture graph `i` unless it is already.
    fn capture_graph(&mut self, i: usize) -> Result<(), GpuError> {
        if self.graphs.graphs[i].graph.is_none() {
            let (rows, width) = (self.graphs.graphs[i].rows, self.graphs.graphs[i].table_width);
            self.graphs.graphs[i].graph = Some(self.capture(rows, width)?);
        }
        Ok(())
    }

    /// Capture a decode step of `rows` rows and tables of `table_width` blocks. Nothing runs while
    /// capturing, so the cache is untouched.
    fn capture(&mut self, rows: usize, table_width: usize) -> Result<CudaGraph, GpuError> {
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
        Ok(graph)
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

//! Decode steps replayed from CUDA graphs: one graph per batch size (1, 2, 4, 8, then every 16 up
//! to `max_seqs`, as nano-vllm), captured once the cache exists. A step of `n` sequences replays
//! the smallest graph of at least `n` rows, its other rows padding that stores and reads nothing.
//! A replay is one launch where an eager step is some 300, each costing the host a few
//! microseconds.

use kv_quant::cuda::GpuError;
use kv_quant::cuda::cudarc::driver::CudaGraph;
use kv_quant::cuda::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

use super::GpuQwen3;
use super::step::{StepInputs, StepShape};

/// The captured graphs, by ascending batch size, and the table width they read.
#[derive(Default)]
pub(super) struct DecodeGraphs {
    graphs: Vec<(usize, CudaGraph)>,
    table_width: usize,
}

impl DecodeGraphs {
    /// The batch sizes to capture for at most `max_seqs` sequences.
    fn batch_sizes(max_seqs: usize) -> Vec<usize> {
        let mut sizes: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|&b| b < max_seqs).collect();
        sizes.extend((16..max_seqs).step_by(16));
        sizes.push(max_seqs);
        sizes
    }

    /// The graph for a decode step of `n` sequences, and the rows it was captured with.
    pub(super) fn for_batch(&self, n: usize) -> Option<(usize, &CudaGraph)> {
        self.graphs.iter().find(|(rows, _)| *rows >= n).map(|(rows, graph)| (*rows, graph))
    }

    pub(super) fn table_width(&self) -> usize {
        self.table_width
    }

    pub(super) fn len(&self) -> usize {
        self.graphs.len()
    }
}

impl GpuQwen3 {
    /// Capture a decode step for each batch size, reading tables as wide as the longest
    /// sequence. Nothing runs while capturing, so the cache is untouched.
    pub(super) fn capture_decode_graphs(&mut self) -> Result<(), GpuError> {
        self.graphs = DecodeGraphs::default();
        let table_width = self.limits.max_model_len.div_ceil(self.cache.layout.block_size);
        let mut graphs = Vec::new();
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
            graphs.push((rows, graph));
        }
        self.graphs = DecodeGraphs { graphs, table_width };
        Ok(())
    }
}

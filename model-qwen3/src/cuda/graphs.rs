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
//! Table widths: `max_model_len`, then halved while at least [`NARROWEST_TABLE_KEYS`]. A graph
//! fixes attention's build and grid ([`SplitPlanner::graph`]: what its widest contexts take, so
//! that tables far wider than the contexts do not leave the grid's blocks idle; nano-vllm's
//! workload ran bf16 2% faster end to end, INT8 0-1.4%, on an H200 against one width:
//! docs/PERF.md); the tables' width and the split length are read from the device, so that a
//! replay of a few long contexts may split them by their own length ([`SplitPlanner::replay`]).

use nanovllm_cuda::GpuError;
use nanovllm_cuda::cudarc::driver::CudaGraph;
use nanovllm_cuda::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use nanovllm_kv_cache::cuda::{DecodeSplit, SplitPlanner};

use super::GpuQwen3;
use super::step::{StepInputs, StepShape};

/// The narrowest table a graph is captured with, in keys.
const NARROWEST_TABLE_KEYS: usize = 1024;

/// A decode step's shape, its rows (batch size) and table width in blocks, the split its
/// attention is captured with, and its graph once captured.
struct DecodeGraph {
    rows: usize,
    table_width: usize,
    split: DecodeSplit,
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
    pub(super) fn planned(
        splits: &SplitPlanner,
        max_seqs: usize,
        max_model_len: usize,
        block_size: usize,
    ) -> Self {
        let widths = Self::table_widths(max_model_len, block_size);
        let narrower = std::iter::once(0).chain(widths.iter().copied());
        let sizes = Self::batch_sizes(max_seqs);
        let mut graphs = Vec::with_capacity(widths.len() * sizes.len());
        let keys = |width: usize| (width * block_size).min(max_model_len);
        for (&table_width, narrower) in widths.iter().zip(narrower) {
            for &rows in &sizes {
                let split = splits.graph(rows, keys(narrower), keys(table_width));
                graphs.push(DecodeGraph { rows, table_width, split, graph: None });
            }
        }
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

    /// Graph `i` of [`GpuQwen3::decode_graph`], with the rows and split it was captured with.
    pub(super) fn captured(&self, i: usize) -> Option<(usize, DecodeSplit, &CudaGraph)> {
        let g = &self.graphs[i];
        g.graph.as_ref().map(|graph| (g.rows, g.split, graph))
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
            let (rows, split) = (self.graphs.graphs[i].rows, self.graphs.graphs[i].split);
            self.graphs.graphs[i].graph = Some(self.capture(rows, split)?);
        }
        Ok(())
    }

    /// Capture a decode step of `rows` rows whose attention takes `split`. Nothing runs while
    /// capturing, so the cache is untouched.
    fn capture(&mut self, rows: usize, split: DecodeSplit) -> Result<CudaGraph, GpuError> {
        let step = StepInputs::padding(rows, rows, 1);
        // The inputs a replay reads are uploaded before it; these only give the shape.
        self.inputs.upload(&self.ops.gpu.stream, &step, &[])?;
        let stream = self.ops.gpu.stream.clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let queued = self.enqueue_forward(StepShape::of(&step, split));
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
    use nanovllm_kv_cache::cuda::SplitPlanner;
    use proptest::prelude::*;

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

    proptest! {
        /// Every decode step finds a graph, and the split it replays with covers each context
        /// within the grid the graph was captured with and fits the workspace, whatever the GPU,
        /// the model's heads and the limits.
        #[test]
        fn every_decode_step_replays_a_graph_whose_grid_holds_its_splits(
            sms in 1usize..200,
            blocks_per_sm in (1usize..5, 1usize..12, 1usize..3),
            (kv_heads, group) in (1usize..9, 1usize..9),
            (max_seqs, max_model_len) in (1usize..300, 1usize..50_000),
            block_size in prop::sample::select(vec![16usize, 32, 256]),
            results_per_query in 1usize..64,
            (step_share, context_share) in (0.0f64..=1.0, 0.0f64..=1.0),
        ) {
            let slots = [blocks_per_sm.0, blocks_per_sm.1, blocks_per_sm.2].map(|b| sms * b);
            let capacity = kv_heads * group * max_seqs * results_per_query;
            let planner = SplitPlanner::new(sms, slots, kv_heads, group, capacity);
            let graphs = DecodeGraphs::planned(&planner, max_seqs, max_model_len, block_size);
            let n = ((max_seqs as f64 * step_share) as usize).clamp(1, max_seqs);
            let context = (max_model_len as f64 * context_share) as usize;
            let i = graphs.for_step(n, context.div_ceil(block_size).max(1)).expect("a graph for every step");
            let graph = &graphs.graphs[i];
            prop_assert!(graph.rows >= n && graph.table_width * block_size >= context);
            let replay = planner.replay(graph.split, n, context);
            prop_assert_eq!(replay.splits, graph.split.splits);
            prop_assert!(replay.partition.is_multiple_of(16) && replay.partition >= 16);
            prop_assert!(context.div_ceil(replay.partition) <= replay.splits, "{replay:?} for {context} keys");
            prop_assert!(graph.rows * kv_heads * group * replay.splits <= capacity);
        }
    }
}

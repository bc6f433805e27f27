//! How decode attention splits contexts over thread blocks: the host's half, pure arithmetic over
//! the GPU's block slots ([`SplitPlanner`]), so that it is tested without a GPU. Which build a
//! launch runs and its grid are fixed when it is queued (or captured in a CUDA graph); the split
//! length is read from the device when it runs ([`AttentionQueries::geometry`]), so that a graph
//! replaying a few long contexts can split them by their own length, within the grid it was
//! captured with.
//!
//! [`AttentionQueries::geometry`]: super::AttentionQueries::geometry

/// Tokens per split of decode attention, longest first: a context is cut into splits, each a
/// thread block. Each launch picks one by [`choose_partition`]'s cost: long splits spread a
/// block's setup and combining over many keys (2048 measured faster than 512 for batches:
/// docs/perf-history.md, version 16), short ones let a few long contexts fill the GPU. Multiples of 16.
pub(super) const PARTITIONS: [usize; 7] = [4096, 2048, 1024, 512, 256, 128, 64];
/// A thread block's fixed work (loading q, combining its warps, writing its results), in keys
/// of streaming: its cost in [`choose_partition`].
const BLOCK_SETUP_KEYS: usize = 256;
/// The reduce kernel's launch when a context takes more than one split, in keys of one block's
/// streaming.
const REDUCE_KEYS: usize = 128;
/// Contexts of at most this many keys, one per block, run as two-warp blocks when they fill the
/// GPU (the short build).
const SHORT_SPLIT_KEYS: usize = 1024;

/// Which build of decode attention a launch runs (`DecodeWarps` in the parent module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DecodeBuild {
    Usual,
    Short,
    Long,
}

/// How one decode attention launch splits its contexts: its build, its grid, and the split
/// length the device reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSplit {
    pub(super) build: DecodeBuild,
    /// Thread blocks per (query group, kv head): the grid's width, and the stride of the
    /// workspace's results. 1: each block writes its context's output, with no reduce kernel.
    pub splits: usize,
    /// Keys per split, a multiple of 16, at most `splits` of them covering every context.
    pub partition: usize,
}

impl DecodeSplit {
    /// What [`AttentionQueries::geometry`](super::AttentionQueries::geometry) holds for this split
    /// over block tables `table_width` blocks wide.
    pub fn geometry(&self, table_width: usize) -> [i32; 2] {
        [table_width as i32, self.partition as i32]
    }
}

/// The facts splits are chosen from: the GPU's SMs, each build's block slots (SMs x blocks
/// resident per SM), the cache's kv heads and query heads, and how many (query, head, split)
/// results the attention workspace holds.
#[derive(Debug, Clone, Copy)]
pub struct SplitPlanner {
    sms: usize,
    /// Block slots of the usual, short and long builds.
    slots: [usize; 3],
    kv_heads: usize,
    heads: usize,
    capacity: usize,
}

impl SplitPlanner {
    /// A planner for a GPU of `sms` SMs whose usual, short and long builds hold `slots` blocks at
    /// once, over `kv_heads` kv heads of `group` query heads each, with a workspace of `capacity`
    /// results ([`CacheKernels::split_planner`](super::CacheKernels::split_planner) gives the
    /// real one).
    pub fn new(sms: usize, slots: [usize; 3], kv_heads: usize, group: usize, capacity: usize) -> Self {
        SplitPlanner { sms: sms.max(1), slots, kv_heads, heads: kv_heads * group, capacity }
    }

    /// The split of a launch over `groups` query groups (`queries` queries) whose contexts are at
    /// most `max_context` keys, as an eager launch takes it: eight-warp blocks when there are
    /// fewer (group, kv head) pairs than SMs, else four, and the split length whose blocks leave
    /// each block slot the least work; two-warp blocks where whole contexts of at most
    /// [`SHORT_SPLIT_KEYS`] fill the GPU anyway.
    pub fn eager(&self, groups: usize, queries: usize, max_context: usize) -> DecodeSplit {
        let build = self.split_build(groups);
        let slots = self.slots(build);
        let max_splits = self.max_splits(queries);
        let (partition, splits) = choose_partition(slots, groups, self.kv_heads, max_context, max_splits);
        let one_short_split = splits == 1 && max_context <= SHORT_SPLIT_KEYS;
        let short = one_short_split && self.kv_heads * groups >= self.slots(DecodeBuild::Short);
        DecodeSplit { build: if short { DecodeBuild::Short } else { build }, splits, partition }
    }

    /// The split a CUDA graph of decode steps of `rows` sequences (the rest padding), with
    /// contexts of more than `narrower` and at most `widest` keys, is captured with: the eager
    /// split of `rows` contexts of `widest` keys, so that a graph of many sequences leaves few of
    /// its blocks idle; for a few long contexts (the eight-warp build) its grid widened to hold
    /// the split [`SplitPlanner::eager`] gives `rows` of them at any of those lengths, up to one
    /// wave of blocks, so that one sequence of 32,768 keys splits by its own length, not as
    /// 40,960 would. (Fewer sequences than `rows` replay within that grid.)
    pub fn graph(&self, rows: usize, narrower: usize, widest: usize) -> DecodeSplit {
        let split = self.eager(rows, rows, widest);
        if split.build != DecodeBuild::Long {
            return split;
        }
        let slots = self.slots(split.build);
        let contexts = narrower.min(widest) + 1..=widest;
        let most = most_splits(slots, rows, self.kv_heads, contexts, self.max_splits(rows));
        let one_wave = slots / (rows * self.kv_heads).max(1);
        DecodeSplit { splits: split.splits.max(most.min(one_wave)), ..split }
    }

    /// The split of a step of `groups` query groups with contexts of at most `max_context` keys,
    /// replayed from a graph captured with `captured`: its build and grid, and its split length,
    /// or for a few long contexts (the eight-warp build) the split length [`SplitPlanner::eager`]
    /// would choose within that grid where it is shorter. A replay splits more than its graph
    /// where its own contexts want it, never less: a graph's grid is launched whole, and blocks
    /// past the contexts would idle, which the cost does not count.
    pub fn replay(&self, captured: DecodeSplit, groups: usize, max_context: usize) -> DecodeSplit {
        if captured.build != DecodeBuild::Long {
            return captured;
        }
        let slots = self.slots(captured.build);
        let (own, _) = choose_partition(slots, groups, self.kv_heads, max_context, captured.splits);
        DecodeSplit { partition: own.min(captured.partition), ..captured }
    }

    /// The build for contexts split over the GPU: eight warps where fewer (group, kv head) pairs
    /// than SMs leave it to a few long contexts, else four.
    fn split_build(&self, groups: usize) -> DecodeBuild {
        if groups * self.kv_heads < self.sms { DecodeBuild::Long } else { DecodeBuild::Usual }
    }

    fn slots(&self, build: DecodeBuild) -> usize {
        match build {
            DecodeBuild::Usual => self.slots[0],
            DecodeBuild::Short => self.slots[1],
            DecodeBuild::Long => self.slots[2],
        }
    }

    /// The most splits a launch of `queries` queries may take: its results must fit the
    /// workspace.
    fn max_splits(&self, queries: usize) -> usize {
        self.capacity / (queries * self.heads).max(1)
    }
}

/// The split length for `groups` query groups with contexts up to `max_context`, and the splits
/// it makes: the one whose thread blocks, run in waves over the GPU's `slots` (SMs x resident
/// blocks per SM), leave each slot the least work, counting each block's setup and the reduce
/// kernel (ties go to the longer split). Only partitions of at most `max_splits` splits count; if
/// none does, the whole context is one split.
fn choose_partition(
    slots: usize,
    groups: usize,
    kv_heads: usize,
    max_context: usize,
    max_splits: usize,
) -> (usize, usize) {
    let mut chosen = (max_context.next_multiple_of(16).max(16), 1);
    let mut least = usize::MAX;
    let tuned = tuned_partition();
    for partition in PARTITIONS.into_iter().filter(|&p| tuned.is_none_or(|t| t == p)) {
        let splits = max_context.div_ceil(partition).max(1);
        if splits > max_splits {
            continue;
        }
        let waves = (groups * kv_heads * splits).div_ceil(slots.max(1));
        let reduce = if splits > 1 { REDUCE_KEYS } else { 0 };
        let cost = waves * (partition.min(max_context) + BLOCK_SETUP_KEYS) + reduce;
        if cost < least {
            (least, chosen) = (cost, (partition, splits));
        }
    }
    chosen
}

/// The most splits [`choose_partition`] gives a launch of `groups` query groups with any of
/// `contexts` keys: the grid a CUDA graph for those launches needs.
fn most_splits(
    slots: usize,
    groups: usize,
    kv_heads: usize,
    contexts: std::ops::RangeInclusive<usize>,
    max_splits: usize,
) -> usize {
    // The splits change only where a context crosses a multiple of the shortest partition, and
    // within such a stretch its end favours splitting most (one split costs more the longer it is).
    let shortest = PARTITIONS[PARTITIONS.len() - 1];
    let (first, last) = (*contexts.start(), *contexts.end());
    let ends = (first.next_multiple_of(shortest)..last).step_by(shortest).filter(|&c| c > 0);
    ends.chain([last])
        .map(|context| choose_partition(slots, groups, kv_heads, context, max_splits).1)
        .max()
        .unwrap_or(1)
}

/// `NANOVLLM_DECODE_PARTITION` (one of [`PARTITIONS`]): every launch takes that split length where
/// its results fit the workspace, for tuning.
fn tuned_partition() -> Option<usize> {
    static TUNED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *TUNED.get_or_init(|| {
        let tuned = std::env::var("NANOVLLM_DECODE_PARTITION").ok().and_then(|v| v.parse().ok());
        tuned.filter(|p| PARTITIONS.contains(p))
    })
}

#[cfg(test)]
mod tests {
    use super::{SplitPlanner, choose_partition, most_splits};

    /// A graph's grid holds the splits of every context it may replay, found from the multiples
    /// of 64 alone: the same as trying every context, on H100-like slot counts.
    #[test]
    fn a_graphs_grid_holds_every_contexts_splits() {
        for (slots, groups, max_context) in [(264, 1, 40960), (528, 17, 8000), (264, 3, 5000)] {
            let kv_heads = 8;
            for contexts in [1..=max_context, max_context / 2 + 1..=max_context] {
                let every = contexts.clone().map(|c| choose_partition(slots, groups, kv_heads, c, 1000).1);
                let every = every.max().unwrap();
                assert_eq!(most_splits(slots, groups, kv_heads, contexts, 1000), every);
            }
        }
    }

    /// Splits fill the GPU's slots without a second wave where one wave does, and never pass the
    /// cap.
    #[test]
    fn one_long_context_splits_to_fill_the_gpu() {
        // 8 kv heads on 264 slots: 32 splits of 1024 keys are 256 blocks, one wave.
        assert_eq!(choose_partition(264, 1, 8, 32768, 1000), (1024, 32));
        assert_eq!(choose_partition(264, 1, 8, 32768, 20), (2048, 16));
        // A cap no partition meets: the whole context in one split.
        assert_eq!(choose_partition(264, 1, 8, 32768, 1).1, 1);
    }

    /// A one-sequence graph captured for 20,481 to 40,960 keys replays 32,768 as the eager
    /// launch splits it (32 splits of 1,024), not as 40,960 keys would be (20 of 2,048).
    #[test]
    fn a_replay_splits_by_its_own_context() {
        let planner = SplitPlanner::new(132, [528, 1056, 264], 8, 2, 16 * 4096);
        let graph = planner.graph(1, 20480, 40960);
        let (eager, widest) = (planner.eager(1, 1, 32768), planner.eager(1, 1, 40960));
        assert_eq!((eager.partition, eager.splits, widest.splits), (1024, 32, 20));
        assert!(graph.splits >= 32);
        assert_eq!(planner.replay(graph, 1, 32768).partition, 1024);
        // Many sequences keep the widest context's grid.
        assert_eq!(planner.graph(48, 2048, 4096), planner.eager(48, 48, 4096));
    }
}

//! Benchmark workloads: nano-vllm's bench.py workload, reproduced bit for bit with CPython's
//! generator, or one read from a JSONL file.

use std::path::Path;

use anyhow::{Context, bail};
use rand_mt::Mt;
use serde_json::Value;

/// CPython's `random.Random`: MT19937 seeded by `init_by_array`, and `randint` by rejection
/// sampling on `getrandbits`, so that a seed gives the same numbers as in Python.
pub(crate) struct CPythonRandom {
    mt: Mt,
}

impl CPythonRandom {
    /// `random.seed(seed)` for a non-negative int seed: the key is its 32-bit words, low first.
    pub(crate) fn seed(seed: u64) -> Self {
        let key: Vec<u32> =
            if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
        CPythonRandom { mt: Mt::new_with_key(key) }
    }

    /// `getrandbits(k)` for `k <= 32`.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.mt.next_u32() >> (32 - k)
    }

    /// `randint(a, b)`: `a + _randbelow(b - a + 1)`, drawing `bit_length(n)` bits until below `n`.
    pub(crate) fn randint(&mut self, a: u32, b: u32) -> u32 {
        let n = b - a + 1;
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return a + r;
            }
        }
    }
}

/// Requests to benchmark: prompts as token ids, and the tokens each generates.
pub(crate) struct Workload {
    pub(crate) prompts: Vec<Vec<u32>>,
    pub(crate) max_tokens: Vec<usize>,
}

/// Ranges of nano-vllm's bench.py workload.
pub(crate) struct Shape {
    pub(crate) num_seqs: usize,
    pub(crate) input_len: (u32, u32),
    pub(crate) output_len: (u32, u32),
    pub(crate) max_token_id: u32,
    pub(crate) seed: u64,
}

impl Shape {
    /// bench.py's ranges (prompts of 100 to 1024 tokens below id 10,000, 100 to 1024 tokens out),
    /// for `num_seqs` requests from `seed`.
    pub(crate) fn bench_py(num_seqs: usize, seed: u64) -> Self {
        Shape { num_seqs, input_len: (100, 1024), output_len: (100, 1024), max_token_id: 10000, seed }
    }
}

impl Workload {
    /// nano-vllm's bench.py: `random.seed(0)`; every prompt first (a length, then its tokens),
    /// then every `max_tokens`.
    pub(crate) fn nano_vllm(shape: &Shape) -> Self {
        let mut random = CPythonRandom::seed(shape.seed);
        let prompts = (0..shape.num_seqs)
            .map(|_| {
                let len = random.randint(shape.input_len.0, shape.input_len.1);
                (0..len).map(|_| random.randint(0, shape.max_token_id)).collect()
            })
            .collect();
        let max_tokens = (0..shape.num_seqs)
            .map(|_| random.randint(shape.output_len.0, shape.output_len.1) as usize)
            .collect();
        Workload { prompts, max_tokens }
    }

    /// One request per line: `{"prompt_token_ids": [...], "max_tokens": N}`.
    pub(crate) fn from_jsonl(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let mut workload = Workload { prompts: Vec::new(), max_tokens: Vec::new() };
        for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let at = || format!("{}:{}", path.display(), index + 1);
            let value: Value = serde_json::from_str(line).with_context(at)?;
            let ids = value["prompt_token_ids"]
                .as_array()
                .with_context(|| format!("{}: no \"prompt_token_ids\" list", at()))?;
            let ids = ids
                .iter()
                .map(|id| {
                    id.as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .with_context(|| format!("{}: bad token id {id}", at()))
                })
                .collect::<anyhow::Result<_>>()?;
            let max_tokens = value["max_tokens"]
                .as_u64()
                .with_context(|| format!("{}: no \"max_tokens\" number", at()))?;
            workload.prompts.push(ids);
            workload.max_tokens.push(max_tokens as usize);
        }
        if workload.prompts.is_empty() {
            bail!("{}: no requests", path.display());
        }
        Ok(workload)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn bench_py() -> Workload {
        Workload::nano_vllm(&Shape::bench_py(256, 0))
    }

    #[test]
    fn reproduces_nano_vllm_bench_totals() {
        let workload = bench_py();
        assert_eq!(workload.prompts.iter().map(Vec::len).sum::<usize>(), 142_827);
        assert_eq!(workload.max_tokens.iter().sum::<usize>(), 133_966);
        assert_eq!(workload.prompts[0][..5], [6311, 6890, 663, 4242, 8376]);
        assert_eq!(workload.max_tokens[..3], [845, 312, 607]);
    }

    #[test]
    fn reproduces_the_recorded_workload_exactly() {
        // nano-vllm's own output, recorded by its digest (testdata/...digest.json says how).
        let recorded: Value =
            serde_json::from_str(include_str!("../testdata/nanovllm-bench-workload.digest.json")).unwrap();
        let workload = bench_py();
        let canonical = serde_json::to_string(&serde_json::json!({
            "max_tokens": workload.max_tokens,
            "prompt_token_ids": workload.prompts,
        }))
        .unwrap();
        let digest = format!("{:x}", Sha256::digest(canonical.as_bytes()));
        assert_eq!(digest, recorded["sha256"].as_str().unwrap());
    }

    #[test]
    fn randint_is_cpythons() {
        // Python: random.seed(12345); [random.randint(1, 6) for _ in range(8)]
        let mut r = CPythonRandom::seed(12345);
        let dice: Vec<u32> = (0..8).map(|_| r.randint(1, 6)).collect();
        assert_eq!(dice, [4, 6, 1, 3, 3, 2, 3, 5]);
    }
}

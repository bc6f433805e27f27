//! Every kernel module the GPU path builds compiles, for each cache dtype the GPU reads, on a spread
//! of model shapes (head sizes 32 to 256, one to eight query heads per kv head) and architectures,
//! with NVRTC alone: no GPU is needed, so a kernel that does not compile fails here rather than on
//! the first machine with a card. Ignored by default: it needs libnvrtc (the CUDA runtime
//! compiler), which `scripts/with-nvrtc.sh` installs from PyPI and runs this test with, as CI does.
#![cfg(feature = "cuda")]

use nanovllm_kv_quant::CacheDtype;
use nanovllm_qwen3::Qwen3Config;
use nanovllm_qwen3::cuda::kernel_sources;
use rayon::prelude::*;

/// A config of `heads` query heads on `kv_heads` kv heads of `head_dim`.
fn config(hidden: usize, heads: usize, kv_heads: usize, head_dim: usize) -> Qwen3Config {
    Qwen3Config::from_json_str(&format!(
        r#"{{"model_type": "qwen3", "hidden_size": {hidden}, "num_hidden_layers": 2,
            "num_attention_heads": {heads}, "num_key_value_heads": {kv_heads}, "head_dim": {head_dim},
            "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 4096}}"#
    ))
    .unwrap()
}

#[test]
#[ignore = "needs libnvrtc (the CUDA runtime compiler)"]
fn every_kernel_compiles() {
    let served = config(1024, 16, 8, 128); // Qwen3-0.6B and 1.7B
    let shapes = [
        config(4096, 32, 8, 128), // Qwen3-4B and 8B
        config(5120, 40, 8, 128), // Qwen3-14B: five query heads per kv head
        config(5120, 64, 8, 128), // Qwen3-32B
        config(128, 4, 2, 64),
        config(256, 4, 4, 64),
        config(256, 8, 8, 32),
        config(512, 8, 1, 256),
    ];
    let dtypes =
        [CacheDtype::Bf16, CacheDtype::Int8, CacheDtype::Fp8PerTokenHead, CacheDtype::Fp8, CacheDtype::Int4];
    // Every shape for Hopper with blocks of 16; the served shape also with blocks of 256 and for
    // the oldest architecture each dtype runs on (FP8's conversions need compute capability 8.9).
    let mut jobs = Vec::new();
    for (config, block_sizes) in
        std::iter::once((&served, &[16, 256][..])).chain(shapes.iter().map(|c| (c, &[16][..])))
    {
        for dtype in dtypes {
            for &block_size in block_sizes {
                let sources = match kernel_sources(config, dtype, block_size) {
                    Ok(sources) => sources,
                    // The one shape the kernels refuse: INT4 rows below 64 values.
                    Err(e) if dtype == CacheDtype::Int4 && config.head_dim < 64 => {
                        assert!(e.to_string().contains("int4"), "{e}");
                        continue;
                    }
                    Err(e) => panic!("{dtype} d{}: {e}", config.head_dim),
                };
                let oldest = if matches!(dtype, CacheDtype::Fp8PerTokenHead | CacheDtype::Fp8) {
                    "sm_89"
                } else {
                    "sm_80"
                };
                let arches: &[&str] =
                    if std::ptr::eq(config, &served) { &[oldest, "sm_90"] } else { &["sm_90"] };
                for source in sources {
                    jobs.extend(arches.iter().map(|&arch| (source.clone(), arch, dtype)));
                }
            }
        }
    }
    jobs.par_iter().for_each(|(source, arch, dtype)| {
        match source.compile(arch) {
            // What the engine loads: machine code for the architecture, an ELF image.
            Ok(cubin) => assert!(cubin.starts_with(b"\x7fELF"), "{} for {arch}: not a CUBIN", source.name),
            Err(e) => panic!("{} for {arch}, {dtype}, {:?}: {e}", source.name, source.defines),
        }
    });
    eprintln!("{} modules compiled", jobs.len());
}

//! NVRTC compilation with an in-memory and an on-disk cache, so that a second start of the engine
//! does not recompile.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use super::GpuError;

/// Modules compiled for one device architecture.
#[derive(Debug)]
pub struct ModuleCache {
    major: i32,
    minor: i32,
    loaded: Mutex<HashMap<u64, Arc<CudaModule>>>,
}

impl ModuleCache {
    pub(crate) fn new(major: i32, minor: i32) -> Self {
        ModuleCache { major, minor, loaded: Mutex::new(HashMap::new()) }
    }

    /// `90` for compute capability 9.0.
    pub fn arch_number(&self) -> i32 {
        self.major * 10 + self.minor
    }

    /// The module for `source` with `defines`, compiled for this architecture.
    pub(crate) fn load(
        &self,
        ctx: &Arc<CudaContext>,
        name: &str,
        source: &str,
        defines: &[(&str, String)],
    ) -> Result<Arc<CudaModule>, GpuError> {
        let mut full = String::new();
        for (key, value) in defines {
            full.push_str(&format!("#define {key} {value}\n"));
        }
        full.push_str(source);
        let arch = format!("sm_{}", self.arch_number());
        let key = xxhash_rust::xxh64::xxh64(format!("{arch}\n{full}").as_bytes(), 0);
        if let Some(module) = self.loaded.lock().expect("no panics while held").get(&key) {
            return Ok(module.clone());
        }
        let disk = disk_cache_dir().map(|dir| dir.join(format!("{name}-{arch}-{key:016x}.ptx")));
        let ptx = match disk.as_ref().and_then(|path| std::fs::read_to_string(path).ok()) {
            Some(text) => Ptx::from_src(text),
            None => {
                let ptx = self.compile(name, &full, &arch)?;
                if let Some(path) = &disk {
                    // A cache that cannot be written only costs a recompile next time.
                    let _ = std::fs::create_dir_all(path.parent().expect("a file in a folder"))
                        .and_then(|()| std::fs::write(path, ptx.to_src()));
                }
                ptx
            }
        };
        let module = ctx.load_module(ptx)?;
        self.loaded.lock().expect("no panics while held").insert(key, module.clone());
        Ok(module)
    }

    fn compile(&self, name: &str, source: &str, arch: &str) -> Result<Ptx, GpuError> {
        let options = CompileOptions {
            name: Some(format!("{name}.cu")),
            options: vec!["--std=c++17".into(), format!("--gpu-architecture={arch}")],
            ..CompileOptions::default()
        };
        compile_ptx_with_opts(source, options)
            .map_err(|e| GpuError::Compile { name: name.to_owned(), log: e.to_string() })
    }
}

/// `$NANOVLLM_CACHE_DIR/ptx`, else `$XDG_CACHE_HOME/nanovllm/ptx`, else `~/.cache/nanovllm/ptx`.
fn disk_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("NANOVLLM_CACHE_DIR") {
        return Some(PathBuf::from(dir).join("ptx"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("nanovllm").join("ptx"))
}

//! NVRTC compilation with an in-memory and an on-disk cache, so that a second start of the engine
//! does not recompile.
//!
//! Modules are compiled to CUBIN for the device's own architecture, not to PTX: NVRTC runs ptxas
//! itself for a real architecture, so the machine code comes with the compilation, and loading it
//! skips the driver's own PTX compilation, which on a fresh machine (an empty driver cache) cost
//! seconds at every start.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{Ptx, result, sys};

use super::GpuError;

/// One kernel module to build: its name (for logs and the disk cache), its CUDA C, and the
/// `#define`s prepended to it (the shape it is compiled for).
#[derive(Debug, Clone)]
pub struct KernelSource {
    /// The module's name.
    pub name: &'static str,
    /// CUDA C, headers included: NVRTC is given no include path.
    pub source: String,
    /// `#define KEY VALUE` lines, in order, before the source.
    pub defines: Vec<(&'static str, String)>,
}

impl KernelSource {
    /// The text NVRTC compiles: the defines, then the source.
    fn text(&self) -> String {
        let mut full = String::new();
        for (key, value) in &self.defines {
            full.push_str(&format!("#define {key} {value}\n"));
        }
        full.push_str(&self.source);
        full
    }

    /// CUBIN for `arch` (a real architecture such as `sm_90`), from NVRTC alone: this needs
    /// libnvrtc but no GPU, so every variant of a kernel can be checked to compile where none is
    /// installed.
    pub fn compile(&self, arch: &str) -> Result<Vec<u8>, GpuError> {
        compile(self.name, &self.text(), arch, &[]).map(|(cubin, _)| cubin)
    }

    /// What ptxas reports for `arch` (a real architecture such as `sm_90`): each kernel's
    /// registers, spills and shared memory, as `-Xptxas -v` prints them. NVRTC alone, no GPU: a
    /// kernel that spills, or a change that brings it near its register budget, shows before any
    /// device time is spent.
    pub fn resource_report(&self, arch: &str) -> Result<String, GpuError> {
        compile(self.name, &self.text(), arch, &["-Xptxas", "-v"]).map(|(_, log)| log)
    }
}

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

    /// The module for `kernel`, compiled for this architecture.
    pub(crate) fn load(
        &self,
        ctx: &Arc<CudaContext>,
        kernel: &KernelSource,
    ) -> Result<Arc<CudaModule>, GpuError> {
        let (name, full) = (kernel.name, kernel.text());
        let arch = format!("sm_{}", self.arch_number());
        let key = xxhash_rust::xxh64::xxh64(format!("{arch}\n{full}").as_bytes(), 0);
        if let Some(module) = self.loaded.lock().expect("no panics while held").get(&key) {
            return Ok(module.clone());
        }
        let disk = disk_cache_dir().map(|dir| dir.join(format!("{name}-{arch}-{key:016x}.cubin")));
        let cubin = match disk.as_ref().and_then(|path| std::fs::read(path).ok()) {
            Some(cubin) => cubin,
            None => {
                let (cubin, _) = compile(name, &full, &arch, &[])?;
                if let Some(path) = &disk {
                    // A cache that cannot be written only costs a recompile next time.
                    let _ = write_atomically(path, &cubin);
                }
                cubin
            }
        };
        let module = ctx.load_module(Ptx::from_binary(cubin))?;
        self.loaded.lock().expect("no panics while held").insert(key, module.clone());
        Ok(module)
    }
}

/// What every module is compiled with: C++17, for `arch`.
fn nvrtc_options(arch: &str) -> Vec<String> {
    vec!["--std=c++17".into(), format!("--gpu-architecture={arch}")]
}

/// `source` (defines included) compiled for `arch` with `extra` options: the CUBIN and NVRTC's
/// log (ptxas's report among it when asked for).
fn compile(name: &str, source: &str, arch: &str, extra: &[&str]) -> Result<(Vec<u8>, String), GpuError> {
    let failed = |log: String| GpuError::Compile { name: name.to_owned(), log };
    let text = CString::new(source).map_err(|e| failed(e.to_string()))?;
    let file = CString::new(format!("{name}.cu")).map_err(|e| failed(e.to_string()))?;
    let program = result::create_program(&text, Some(&file)).map_err(|e| failed(e.to_string()))?;
    let options: Vec<String> =
        nvrtc_options(arch).into_iter().chain(extra.iter().map(|&o| o.to_owned())).collect();
    // SAFETY: `program` was created above and is destroyed once, after its last use; the CUBIN
    // buffer is sized by NVRTC's own count before NVRTC fills it.
    #[allow(unsafe_code)]
    let (compiled, log, cubin) = unsafe {
        let compiled = result::compile_program(program, &options);
        let log = result::get_program_log(program);
        let cubin = compiled.is_ok().then(|| {
            let mut size = 0usize;
            sys::nvrtcGetCUBINSize(program, &mut size).result()?;
            let mut cubin = vec![0u8; size];
            sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast()).result()?;
            Ok::<_, result::NvrtcError>(cubin)
        });
        let _ = result::destroy_program(program);
        (compiled, log, cubin)
    };
    let log: String = log
        .map(|chars| chars.iter().map(|&c| c as u8 as char).take_while(|&c| c != '\0').collect())
        .unwrap_or_default();
    compiled.map_err(|_| failed(log.clone()))?;
    let cubin = cubin.expect("compiled").map_err(|e| failed(format!("{log}{e}")))?;
    if cubin.is_empty() {
        return Err(failed(format!("{log}no CUBIN for {arch}: a real architecture (sm_XX) is needed")));
    }
    Ok((cubin, log))
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename, so that a
/// process reading the cache (a second replica starting on the same host) sees the whole file or
/// none of it, never a half-written one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `$NANOVLLM_CACHE_DIR/kernels`, else `$XDG_CACHE_HOME/nanovllm/kernels`, else
/// `~/.cache/nanovllm/kernels`.
fn disk_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("NANOVLLM_CACHE_DIR") {
        return Some(PathBuf::from(dir).join("kernels"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("nanovllm").join("kernels"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_whole_files_while_writers_race() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernels").join("kernel.cubin");
        let texts: Vec<String> = (0..4).map(|i| format!("{i}").repeat(1 << 20)).collect();
        std::thread::scope(|scope| {
            for text in &texts {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..8 {
                        write_atomically(path, text.as_bytes()).unwrap();
                    }
                });
            }
            scope.spawn(|| {
                for _ in 0..200 {
                    if let Ok(read) = std::fs::read_to_string(&path) {
                        assert!(texts.contains(&read), "a partial file of {} bytes", read.len());
                    }
                }
            });
        });
        // Only the finished file remains: the temporary ones were renamed over it.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}

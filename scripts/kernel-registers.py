#!/usr/bin/env python3
"""Registers and spills of the attention kernels, on a machine without a GPU or CUDA toolkit.

Compiles kv-cache's decode attention as the engine does (NVRTC, --std=c++17, the same headers and
defines) and runs ptxas -v for sm_90, with NVRTC and ptxas from NVIDIA's PyPI wheels (downloaded
once into ~/.cache/nanovllm/cuda-wheels). A kernel that spills, or a change that adds registers
near the 128 that 16 warps per SM allow, shows here before any device time is spent.

    scripts/kernel-registers.py                      # the shipped configurations
    scripts/kernel-registers.py THREADS=256 MIN_BLOCKS=2   # extra defines override them
    scripts/kernel-registers.py model                # the model's kernels (norms, RoPE, sampling)
"""
import ctypes
import os
import pathlib
import re
import subprocess
import sys
import zipfile

VERSION = "13.0.88"  # the CUDA of the H100 and H200 machines measured in docs/PERF.md
ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "nanovllm" / "cuda-wheels"


def toolkit():
    """NVRTC's library folder and ptxas, from the wheels (downloaded on first use)."""
    base = CACHE / VERSION / "nvidia" / "cu13"
    if not (base / "bin" / "ptxas").exists():
        wheels = CACHE / VERSION / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
                        f"nvidia-cuda-nvcc=={VERSION}", f"nvidia-cuda-nvrtc=={VERSION}"], check=True)
        for wheel in wheels.glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(CACHE / VERSION)
        (base / "bin" / "ptxas").chmod(0o755)
    return base / "lib", base / "bin" / "ptxas"


def compile_ptx(lib_dir, name, source):
    # NVRTC loads its builtins library by name: load it first from the same folder.
    ctypes.CDLL(str(lib_dir / "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(str(lib_dir / "libnvrtc.so.13"))
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(), 0, None, None) == 0
    options = [b"--std=c++17", b"--gpu-architecture=compute_90"]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    if status != 0:
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        sys.exit(log.value.decode())
    nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(program, ptx)
    return ptx.value


def report(ptxas, ptx, label):
    path = CACHE / "check.ptx"
    path.write_bytes(ptx)
    out = subprocess.run([str(ptxas), "-arch=sm_90", "-v", str(path), "-o", os.devnull],
                         capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    for kernel in re.findall(r"Compiling entry function '(\w+)'", text):
        block = text.split(f"Function properties for {kernel}")[1]
        registers = re.search(r"Used (\d+) registers", block).group(1)
        stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block).groups()
        print(f"{label:44} {kernel:28} {registers:>3} registers, spills {stores}/{loads} bytes")


def model_kernels(lib_dir, ptxas):
    """nanovllm-qwen3's kernels for Qwen3-0.6B's shape, as the engine compiles them."""
    headers = ["kv-quant/src/int8_kv.cuh", "model-qwen3/src/cuda/model.cu"]
    body = "\n".join((ROOT / f).read_text() for f in headers)
    source = "#define HEAD_DIM 128\n#define HIDDEN 1024\n" + body
    report(ptxas, compile_ptx(lib_dir, "qwen3", source), "Qwen3-0.6B shape")


def main():
    lib_dir, ptxas = toolkit()
    if sys.argv[1:] == ["model"]:
        return model_kernels(lib_dir, ptxas)
    headers = ["cuda/src/dependent_launch.cuh", "kv-quant/src/int8_kv.cuh", "kv-cache/src/cuda/layout.cuh", "kv-cache/src/cuda/mma.cuh"]
    body = "\n".join((ROOT / f).read_text() for f in headers + ["kv-cache/src/cuda/decode_attention.cu"])
    extra = dict(arg.split("=", 1) for arg in sys.argv[1:])
    for int8 in (1, 0):
        for group in (4, 2):
            for warps in (4, 2, 8):  # kv-cache/src/cuda/mod.rs: DecodeWarps
                defines = {"HEAD_DIM": 128, "GROUP": group, "INT8": int8, "BLOCK_SIZE": 256,
                           "THREADS": 32 * warps, "MIN_BLOCKS": 16 // warps, **extra}
                source = "".join(f"#define {k} {v}\n" for k, v in defines.items()) + body
                label = f"{'int8' if int8 else 'bf16'} group {group}, {defines['THREADS']} threads"
                report(ptxas, compile_ptx(lib_dir, "decode_attention", source), label)


if __name__ == "__main__":
    main()

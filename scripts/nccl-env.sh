# Source before running tensor-parallel programs on a machine with a GPU (scripts/gpu-tp.sh does).
# The machines' rule (and NCCL's advice for shared hosts): no NVLink multicast.
export NCCL_NVLS_ENABLE=0
# cudarc loads libnccl.so; PyTorch's NCCL wheel ships only libnccl.so.2.
if ! ldconfig -p | grep -q 'libnccl\.so '; then
  nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
  if [ -n "$nccl_lib" ] && [ -e "$nccl_lib/libnccl.so.2" ]; then
    mkdir -p /tmp/nccl-link && ln -sf "$nccl_lib/libnccl.so.2" /tmp/nccl-link/libnccl.so
    export LD_LIBRARY_PATH=/tmp/nccl-link${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
fi

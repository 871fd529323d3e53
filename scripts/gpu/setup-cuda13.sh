#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler and link-time libraries from PyPI wheels into PREFIX (default
# /tmp/cuda13), so `cargo build --features cuda` works on a machine without a GPU (the binary runs
# on the H100/H200 machine). Then: source PREFIX/env.sh. See ../shared/docs/gpu.md for why.
set -euo pipefail
P=${1:-/tmp/cuda13}
python3 -m venv "$P"
"$P/bin/pip" install -q --no-cache-dir \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
NV=$("$P/bin/python" -c 'import os,nvidia; print(os.path.join(nvidia.__path__[0],"cu13"))')
cd "$NV/lib"
for l in cudart cublas cublasLt nvrtc; do ln -sf lib$l.so.13 lib$l.so; done
ln -sf libcurand.so.10 libcurand.so
mkdir -p stubs
# Link-only stub of the driver library (the real one is used at run time; never ship the stub).
{ tr '\n' ' ' < "$NV/include/cuda.h" | grep -oE 'CUDAAPI +cu[A-Za-z0-9_]+' | awk '{print $2}'
  grep -hE '^#define +cu[A-Za-z0-9_]+ ' "$NV/include/cuda.h" | grep -oE 'cu[A-Za-z0-9_]+'
  printf '%s\n' cuProfilerInitialize cuProfilerStart cuProfilerStop
} | sort -u | awk '{print "int " $1 "(void){return 100;}"}' > stubs/libcuda_stub.c
gcc -shared -fPIC -o stubs/libcuda.so -Wl,-soname,libcuda.so.1 stubs/libcuda_stub.c
# Link-only stub of cuDNN 9 for the `cudnn` feature, from the functions cudarc binds (the device
# uses the libcudnn.so.9 of its PyTorch at run time; never ship the stub).
CUDARC_SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/cudnn/sys/mod.rs 2>/dev/null | head -1 || true)
if [ -n "$CUDARC_SYS" ]; then
  grep -ohE 'fn cudnn[A-Za-z0-9_]+' "$CUDARC_SYS" | awk '{print $2}' | sort -u \
    | awk '{print "int " $1 "(void){return 1000;}"}' > stubs/libcudnn_stub.c
  gcc -shared -fPIC -o stubs/libcudnn.so -Wl,-soname,libcudnn.so.9 stubs/libcudnn_stub.c
else
  echo "note: cudarc 0.19.10 sources not fetched yet (run 'cargo fetch' first) - no cuDNN stub, the 'cudnn' feature will not link" >&2
fi
cat > "$P/env.sh" <<ENV
export CUDA_HOME=$NV
export PATH=$NV/bin:\$PATH
export CUDA_COMPUTE_CAP=90
ENV
"$NV/bin/nvcc" --version | tail -2

# Source on the GPU machine: unpacks dmq (from /tmp/dmq/files/dmq.xz, staged by stage-in.sh, or
# .gpu/dmq.xz when carried directly) to /tmp/dmq/bin and puts the CUDA 13 and cuDNN 9 libraries of
# the machine's PyTorch after the driver's on LD_LIBRARY_PATH (never before it: docs/gpu.md).
mkdir -p /tmp/dmq/bin
if [ ! -x /tmp/dmq/bin/dmq ]; then
  for f in /tmp/dmq/files/dmq.xz .gpu/dmq.xz; do
    if [ -f "$f" ]; then xz -dc "$f" > /tmp/dmq/bin/dmq.tmp && chmod +x /tmp/dmq/bin/dmq.tmp && mv /tmp/dmq/bin/dmq.tmp /tmp/dmq/bin/dmq; break; fi
  done
fi
_NV=$(python3 -c 'import nvidia,os;print(nvidia.__path__[0])')
_CUDNN=$(dirname "$(ls "$_NV"/*/lib/libcudnn.so.9 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$_NV/cu13/lib${_CUDNN:+:$_CUDNN}
export PATH=/tmp/dmq/bin:$PATH
unset _NV _CUDNN

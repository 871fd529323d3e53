#!/usr/bin/env bash
# Runs train.py on the GPU machine. Prepare here (once):
#   mkdir -p .gpu_data && cp ../shared/data/cifar10/cifar10-train.zip .gpu_data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp -d .whl diffusers==0.42.1 importlib_metadata
# then run this script there with `.whl` and `.gpu_data` carried; OUT is where results go.
# A second call can continue training: RESUME=<folder with ckpt_*.safetensors>, or INIT_FROM=<an
# exported model folder> (smaller to carry: fp16 EMA weights, fresh optimiser); carry it too.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 scripts/train-default-model/train.py --data .gpu_data/cifar10-train.zip --out "${OUT:-out}" \
  --budget-s "${BUDGET_S:-420}" ${RESUME:+--resume "$RESUME"} ${INIT_FROM:+--init-from "$INIT_FROM"}

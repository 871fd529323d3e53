#!/usr/bin/env bash
# CPU speed of the UNet forward (batch 1 and 64) and of 100-step DDIM sampling, for the embedded
# default model and ../shared/models/ddpm-cifar10-small, in one run (compare as ratios).
# Writes docs/results/cpu-speed-<model>.json; docs/results/cpu-speed.md summarises them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p dmq-cli
out=docs/results
./target/release/dmq bench --iters 5 --batch-sizes 1,64 --steps 100 --sample-batch 16 \
  --json "$out/cpu-speed-embedded.json" > /dev/null
./target/release/dmq bench --model ../shared/models/ddpm-cifar10-small --iters 5 --batch-sizes 1,64 \
  --steps 100 --sample-batch 16 --json "$out/cpu-speed-ddpm-cifar10-small.json" > /dev/null

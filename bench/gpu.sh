#!/usr/bin/env bash
# One prepared run for a lent CUDA machine (torch there is preinstalled; nothing is fetched).
# Records: runtime vs plain loop step time; a ~1B Llama on one GPU in bf16 (SDPA flash):
# tokens/s, MFU, predicted vs measured memory (torch.cuda.max_memory_allocated).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
out=${OUT:-/tmp}/gpu-bench
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
# ~1.2B Llama (llama-3.2-1b shape), bf16, seq 2048, micro-batch 4, full step incl. AdamW.
$PY -m tui.cli launch llama-3.2-1b --device cuda --dtype bf16 --seq 2048 --gbs 4 --mbs 4 \
    --steps 12 --json | tee "$out/llama-1b.jsonl" | grep -E '"(step|done|error)"' | cut -c1-400
$PY -m tui.cli launch llama-3.2-1b --device cuda --dtype bf16 --seq 2048 --gbs 4 --mbs 4 \
    --steps 12 --recompute full --json > "$out/llama-1b-full.jsonl"
grep '"done"' "$out/llama-1b-full.jsonl" | cut -c1-600
# fp8 (torchao Float8Linear on the block linears; needs compute capability 8.9+) next to bf16
$PY -m tui.cli launch llama-3.2-1b --device cuda --dtype fp8 --seq 2048 --gbs 4 --mbs 4 \
    --steps 12 --json > "$out/llama-1b-fp8.jsonl" || true
grep -E '"(done|error)"' "$out/llama-1b-fp8.jsonl" | cut -c1-600
$PY bench/train_throughput.py --device cuda --steps 12 | tee "$out/throughput.txt"
# The CUDA-only tests (marked gpu; skipped on CPU machines)
$PY -m pytest -q -m gpu tests/gpu -p no:cacheprovider | tee "$out/gpu-tests.txt" || true
# The profile lands beside the results ($OUT comes back): a short calibration sweep fits the
# cost model to this GPU (the same profile format as a CPU calibration), then the accuracy
# table (every validation case this machine can run, one rank per GPU) checks it;
# validation.md/json land in $out.
export LLMPLAN_CONFIG_DIR="$out/config"
$PY -m tui.cli calibrate --device cuda --hardware "${HARDWARE:-h200}" --rounds 1 \
    --budget-minutes 3 | tee "$out/calibrate.txt"
$PY -m tui.cli validate --device cuda --hardware "${HARDWARE:-h200}" --out "$out" | tee "$out/validate.txt"

#!/usr/bin/env bash
# One GPU check for the scale-out issue, sized to finish within 8 minutes on one H100/H200.
# Writes JSON to ${OUT:-benchmarks/results/gpu}/ and exits non-zero if any step failed or missed its target.
#   1. extraction exact / tf32 / fast vs pytorch-fid, torch-fidelity, torchmetrics (same process)
#   2. sampling overhead vs bare UNet forwards; fast-mode sampling vs diffusers' DDIMPipeline
#   3. `run` vs sampling alone + features alone at N=50k on the demo model
#   4. two ranks on one GPU through NCCL (torchrun), checked against one process
# Targets: exact >= 1x the fastest peer in fp32; tf32 >= 1.5x the fastest peer at its default;
# fast >= 4.5x with |dFID|/FID <= 5e-4; run <= 1.1 x (sampling + features).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export GENEVAL_OFFLINE=1 GENEVAL_CACHE=${GENEVAL_CACHE:-/tmp/geneval-gpu-cache}
fail=0
step() {  # step NAME TIMEOUT_S CMD...: run, record rc and wall time, keep going
  local name=$1 t=$2; shift 2
  local t0=$SECONDS
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" >> "$OUT/steps.jsonl"
  [ $rc -eq 0 ] || { echo "gpu_check: $name failed (rc $rc), see $OUT/$name.log" >&2; fail=1; }
}
: > "$OUT/steps.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
step extract 150 python benchmarks/bench_extract.py --device cuda --n 5000 --batch-size 250 --repeats 2 --out "$OUT/extract.json"
step sampling 90 python benchmarks/bench_sampling.py --device cuda --batch 256 --steps 50 --repeats 2 --out "$OUT/sampling.json"
step run50k 180 python benchmarks/bench_run.py --n 50000 --batch-size 1000 --steps 10 --device cuda --out "$OUT/run_50k.json"
# Two ranks sharing the one GPU through NCCL vs one process, same command (FID only, N=2000).
rm -rf "$OUT/ddp" && mkdir -p "$OUT/ddp"
step ddp_one 60 python -m geneval run --num-samples 2000 --steps 10 --metrics fid --shard-size 250 --batch-size 250 \
    --out-dir "$OUT/ddp" --run-id one --no-progress
step ddp_two 90 torchrun --standalone --nproc-per-node 2 -m geneval run --num-samples 2000 --steps 10 --metrics fid \
    --shard-size 250 --batch-size 250 --out-dir "$OUT/ddp" --run-id two --no-progress
python - "$OUT" <<'PY' || fail=1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def fid(run):
    p = out / "ddp" / run / "results.json"
    return json.loads(p.read_text())["results"][0]["value"] if p.exists() else None
one, two = fid("one"), fid("two")
ok = one is not None and two is not None and abs(one - two) <= 1e-9 * abs(one)
(out / "ddp.json").write_text(json.dumps({"fid_world1": one, "fid_world2_nccl": two, "pass": ok}, indent=2) + "\n")
sys.exit(0 if ok else 1)
PY
echo "gpu_check: results in $OUT (fail=$fail)"
exit $fail

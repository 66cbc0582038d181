#!/usr/bin/env bash
# GPU check on a lent CUDA machine (Python 3.12 + CUDA torch preinstalled, no internet):
# unpack the missing pure/binary packages carried in .whl/site312.tar.xz, then run the GPU smoke study.
# Results land in $OUT (metrics, logs, timings, report).
set -euo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p /tmp/site "$OUT"
tar -xJf .whl/site312.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 THORAXSEG_NO_PROGRESS=1 nnUNet_compile=f
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
S=/tmp/gpu_study
set +e
( time python3 -m thoraxseg study --config configs/gpu_smoke.yaml --out $S ) 2>&1 | tee "$OUT/study.log" | grep -v "^│" | tail -150
rc=${PIPESTATUS[0]}
set -e
for arm in enet customnet nnunet3d; do
  cp $S/arms/$arm/metrics.csv "$OUT/metrics_$arm.csv" 2>/dev/null || true
  cp $S/arms/$arm/run/log.csv "$OUT/log_$arm.csv" 2>/dev/null || true
done
cp $S/report.html "$OUT/" 2>/dev/null || true
python3 - <<'PY' || true
import json, glob
for p in sorted(glob.glob("/tmp/gpu_study/.stages/*.json")):
    d = json.load(open(p)); print(f"{d['stage']:<22} {d['seconds']:8.1f} s")
PY
exit $rc

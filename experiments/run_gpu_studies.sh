#!/usr/bin/env bash
# The three GPU studies and their reports, in pieces:
#   experiments/run_gpu_studies.sh OUT_DIR      (JOBS=8 runs share the GPU at a time: small models
#                                                leave it mostly idle; with the CUDA MPS daemon running,
#                                                `nvidia-cuda-mps-control -d`, their kernels overlap)
# writes OUT_DIR/<study>/{runs/,sweep.json,report/} for mqar_layouts, selective_copying, induction_heads.
# Each study has a time cap (CAP_MQAR, CAP_SELCOPY, CAP_INDUCTION seconds) so that one study cannot eat
# the others' time; a study cut off by its cap keeps its checkpoints, and running this script again
# resumes it (finished runs are skipped) until every run has finished.
set -uo pipefail
OUT=${1:?usage: experiments/run_gpu_studies.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|',
           torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/device.txt"

study() {  # name, time cap in seconds
  local name=$1 cap=$2 start=$SECONDS
  echo "== $name (cap ${cap}s)"
  timeout --signal=TERM "$cap" python -m hybrid sweep "experiments/$name/sweep.yaml" --out "$OUT/$name" --no-progress \
    --jobs "${JOBS:-8}" \
    || echo "!! $name: sweep exited with $? (failed runs or the time cap); the report covers what finished"
  python -m hybrid report "$OUT/$name" || echo "!! $name: no report"
  echo "== $name took $((SECONDS - start))s"
}

study mqar_layouts "${CAP_MQAR:-900}"
study selective_copying "${CAP_SELCOPY:-130}"
study induction_heads "${CAP_INDUCTION:-140}"
echo "all studies: ${SECONDS}s; reports in $OUT/*/report/"

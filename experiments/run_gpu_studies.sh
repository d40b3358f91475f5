#!/usr/bin/env bash
# The GPU studies and their reports, in pieces:
#   experiments/run_gpu_studies.sh [STUDY ...]     (default: selective_copying induction_heads mqar_zoology)
#   TOGETHER=1 PACK=out experiments/run_gpu_studies.sh induction_heads induction_heads/investigation
# Each study's runs live in its folder (experiments/<study>/runs/, checked in for the GPU studies), so
# running this again skips finished runs and resumes the others from their checkpoints. JOBS runs
# (default 8; JOBS_<STUDY> for one study) share the GPU at a time; small models leave it mostly idle,
# so they time-slice well, up to about 8 processes in all (benchmarks/results/train_step_nvidia_h200.md).
# Tiny runs lose most beside large ones: induction heads' two batch-8 runs (2,048-token steps, graphed)
# made 10-38 steps/s each beside 11-17 other runs, about 125 beside 4 (selective copying's 131k-token
# steps, one MQAR run) and about 1,000 with the GPU to the two of them (MPS), so give long runs of tiny
# models a piece of their own (ONLY_<STUDY>, below).
# Each study has a time cap (CAP_<STUDY> seconds, default CAP=600) after which its sweep stops its runs
# (hybrid sweep --stop-after: each gets one SIGTERM, checkpoints and stops as interrupted; one still going
# 60 s later is killed); a timeout KILL_AFTER seconds past that (default 90, at least 75: the sweep's own
# kill comes 60 s after its stop, and a second SIGTERM before a run has checkpointed would stop it without
# one) ends whatever is left, so a piece always ends near its cap.
# START_UNTIL_<STUDY> (or START_UNTIL) seconds: no run of that study starts after it (hybrid sweep
# --start-until), so the end of a piece finishes runs instead of starting ones the cap would cut: for a
# study whose cut runs restart from step 0 (MQAR, whose checkpoints are not checked in).
# ONLY_<STUDY>="GLOB ..." runs only that study's runs whose names match one of the globs (hybrid sweep
# --only), e.g. ONLY_SELECTIVE_COPYING="arch=mamba,* arch=hybrid,lr=0.001,*"; the report covers every run.
# MPS (`nvidia-cuda-mps-control -d`) lets the runs' kernels overlap, but a fatal fault in one MPS client
# (a device-side assert, say from a test that provokes one) stops every client: once, every training
# process hung until killed. Do not run the test suite on the GPU while studies share it under MPS.
# MPS=1 starts an MPS server for this script's runs and stops it at the end: for studies alone, where
# tiny models' kernels then share the SMs instead of taking turns (not yet measured against without).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${MPS:-}" ]; then
  export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/hybrid_mps_pipe}
  export CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/tmp/hybrid_mps_log}
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && echo "MPS server started" || echo "!! MPS server did not start; runs time-slice"
  trap 'echo quit | nvidia-cuda-mps-control 2>/dev/null' EXIT
fi
studies=("$@")
[ ${#studies[@]} -gt 0 ] || studies=(selective_copying induction_heads mqar_zoology)
python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|',
           torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

# NAME: a study (experiments/NAME/sweep.yaml, its report in experiments/NAME) or STUDY/FILE, another
# sweep of a study (experiments/STUDY/FILE.yaml, its runs and report in experiments/STUDY/FILE).
run_one() {
  local name=$1 sweep out cap_var cap jobs_var jobs only_var glob start start_var start_until kill_after
  local -a only=() globs=()
  if [[ $name == */* ]]; then sweep="experiments/$name.yaml"; else sweep="experiments/$name/sweep.yaml"; fi
  out="experiments/$name"
  cap_var="CAP_${name//[^A-Za-z0-9]/_}"; cap_var=${cap_var^^}
  cap=${!cap_var:-${CAP:-600}}
  jobs_var="JOBS_${name//[^A-Za-z0-9]/_}"; jobs_var=${jobs_var^^}
  jobs=${!jobs_var:-${JOBS:-8}}
  start_var="START_UNTIL_${name//[^A-Za-z0-9]/_}"; start_var=${start_var^^}
  start_until=${!start_var:-${START_UNTIL:-}}
  only_var="ONLY_${name//[^A-Za-z0-9]/_}"; only_var=${only_var^^}
  read -ra globs <<< "${!only_var:-}"  # split on spaces, no pathname expansion
  for glob in "${globs[@]}"; do only+=(--only "$glob"); done
  start=$SECONDS
  echo "== $name (cap ${cap}s)"
  kill_after=${KILL_AFTER:-90}; (( kill_after >= 75 )) || kill_after=75
  timeout --signal=TERM --kill-after=15 "$((cap + kill_after))" \
    python -m hybrid sweep "$sweep" --out "$out" --no-progress --jobs "$jobs" "${only[@]}" --stop-after "$cap" \
    ${start_until:+--start-until "$start_until"} \
    || echo "!! $name: sweep exited with $? (failed runs or the time cap); the report covers what finished"
  timeout 120 python -m hybrid report "$out" > /dev/null || echo "!! $name: no report"
  # finished runs are checked in: their checkpoints without the optimiser state (a third of the size)
  timeout 120 python -m hybrid slim "$out" > /dev/null || echo "!! $name: checkpoints not slimmed"
  echo "== $name took $((SECONDS - start))s"
}
# TOGETHER=1 runs the sweeps at the same time (each with its JOBS), else one after another
if [ -n "${TOGETHER:-}" ]; then
  for name in "${studies[@]}"; do run_one "$name" & done
  wait
else
  for name in "${studies[@]}"; do run_one "$name"; done
fi
# PACK=DIR: each study's run directories and sweep plans as DIR/<study>.tgz.aa, .ab, ... of at most 15 MiB (a transfer
# with a per-file limit lost a whole study's runs once), without the previous checkpoints and TensorBoard
# files. Unpack with: cat DIR/<study>.tgz.* | tar xzf -
if [ -n "${PACK:-}" ]; then
  mkdir -p "$PACK"
  for name in "${studies[@]}"; do
    tar czf - --exclude=checkpoint.prev.pt --exclude=tb "experiments/$name"/*runs* "experiments/$name"/*/runs \
      "experiments/$name"/sweep.json "experiments/$name"/*/sweep.json 2>/dev/null | split -b 15m - "$PACK/${name//\//_}.tgz."
  done
fi
echo "all: ${SECONDS}s; reports in experiments/*/report/"

#!/usr/bin/env bash
# The GPU side of the work in flight, as one device command (each part has its own time cap):
#   benchmarks/run_gpu_checks.sh OUT_DIR [PEERS]       PEERS: mamba_ssm's sources, e.g. .peers/mamba
#   PARTS="bench_ssd bench_model" benchmarks/run_gpu_checks.sh OUT_DIR .peers/mamba   (some parts only)
# The caps add up to more than one 10-minute device command: split the parts over two.
# 1. every test marked `cuda` (kernels, layers, generation with CUDA graphs, training); or, as the part
#    cuda_tests_ssd, only the SSD kernels' and the Mamba-2 layer's (a change there checked in ~2 minutes);
# 2. kernel benchmarks: add + RMSNorm, gated RMSNorm, causal conv1d, linear cross-entropy, the selective scan's tiles
#    (bench_selective_scan.py --sweep-only, gradients checked against the default tiles'), SSD (with the peer when given),
#    the SSD kernels' per-kernel settings (tune_ssd.py), ours and the peer's SSD kernel by kernel (profile_ssd.py);
# 3. whole models: bench_model.py at 8 x 2048 (with mamba_ssm's blocks when PEERS is given) and
#    the Mamba stacks with each causal-conv backward (bench_model_conv_bwd, and profile_step_mamba2_two_pass);
#    bench_generate.py at batch 1 and 64, context 8K, eager and graphed; data-parallel cases (bench_distributed.py);
#    one training step of the MQAR study (profile_step_mqar) and of the ~130M Mamba stacks, kernel by kernel.
# Logs and tables go to OUT_DIR (tables also to benchmarks/results/ by each script's default name).
# No MPS here: a test that provokes a device-side error would stop every client of an MPS server.
set -uo pipefail
OUT=${1:?usage: benchmarks/run_gpu_checks.sh OUT_DIR [PEERS]}
PEERS=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PARTS=${PARTS:-cuda_tests bench_add_rms_norm bench_gated_rms_norm bench_causal_conv1d bench_linear_cross_entropy bench_selective_scan_sweep bench_ssd tune_ssd profile_ssd profile_step profile_step_mamba2 profile_step_mqar bench_model bench_model_conv_bwd profile_step_mamba2_two_pass bench_generate bench_distributed}
part() {  # name, cap in seconds, command...  (only the parts named in PARTS run)
  local name=$1 cap=$2; shift 2
  [[ " $PARTS " == *" $name "* ]] || return 0
  echo "== $name (cap ${cap}s)"
  timeout --kill-after=15 "$cap" "$@" > "$OUT/$name.log" 2>&1; echo "rc $?" >> "$OUT/$name.log"
  tail -3 "$OUT/$name.log"
}
# the whole suite took more than 330 s on an H200 shared with training processes: run it alone
part cuda_tests "${CAP_TESTS:-420}" python -m pytest tests -m cuda -q -p no:cacheprovider --durations=20
part cuda_tests_ssd 180 python -m pytest tests/kernels/test_ssd.py tests/kernels/test_ssd_triton.py \
  tests/kernels/test_ssd_gate.py tests/layers/test_mamba2.py -m cuda -q -p no:cacheprovider
part bench_add_rms_norm 60 python benchmarks/bench_add_rms_norm.py --out "$OUT/add_rms_norm.md"
part bench_gated_rms_norm 60 python benchmarks/bench_gated_rms_norm.py ${PEERS:+--peer "$PEERS"} --out "$OUT/gated_rms_norm.md"
part bench_causal_conv1d 60 python benchmarks/bench_causal_conv1d.py --out "$OUT/causal_conv1d.md"
part bench_linear_cross_entropy 60 python benchmarks/bench_linear_cross_entropy.py --out "$OUT/linear_cross_entropy.md"
part bench_selective_scan_sweep 240 python benchmarks/bench_selective_scan.py --sweep-only --out "$OUT/selective_scan_sweep.md"
part bench_ssd 300 python benchmarks/bench_ssd.py ${PEERS:+--peer "$PEERS"} --out "$OUT/ssd.md"
part tune_ssd 300 python benchmarks/tune_ssd.py ${PEERS:+--peer "$PEERS"} --out "$OUT/tune_ssd.md"
part profile_ssd 90 python benchmarks/profile_ssd.py ${PEERS:+--peer "$PEERS"} --out "$OUT/profile_ssd.md"
part profile_step 60 python benchmarks/profile_step.py --lm "M x24" --out "$OUT/profile_mamba.md"
part profile_step_mamba2 60 python benchmarks/profile_step.py --lm "M2 x24" --out "$OUT/profile_mamba2.md"
# one step of the MQAR study's slowest finishing cells (length 512, batch 128, width 256), as its sweep trains them
part profile_step_mqar 90 python benchmarks/profile_step.py --config experiments/mqar_zoology/config.yaml \
  "task.train=[{length: 512, num_kv_pairs: 64}]" "task.test=[{length: 512, num_kv_pairs: 64}]" train.batch_size=128 \
  model.d_model=256 "model.layout=M2 x2" --out "$OUT/profile_mqar.md"
part bench_model 240 python benchmarks/bench_model.py ${PEERS:+--peers "$PEERS"} --out "$OUT/model.md"
# the causal conv's two backwards in the Mamba and Mamba-2 training steps, one run (ours against ours)
part bench_model_conv_bwd 150 python benchmarks/bench_model.py --models mamba,mamba2 --conv-bwd fused,two_pass \
  --out "$OUT/model_conv_bwd.md"
part profile_step_mamba2_two_pass 60 env HYBRID_CONV_BWD=two_pass python benchmarks/profile_step.py --lm "M2 x24" \
  --out "$OUT/profile_mamba2_two_pass.md"
part bench_generate 180 python benchmarks/bench_generate.py --models transformer,mamba,mamba2,jamba \
  --contexts 8192 --batches 1,64 ${PEERS:+--peers "$PEERS"} --out "$OUT/generate.md"
part bench_distributed 240 python benchmarks/bench_distributed.py --ranks 1,2 --steps 120 --timeout 110 \
  --logs "$OUT/distributed_logs" --out "$OUT/distributed.md"

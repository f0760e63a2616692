#!/usr/bin/env bash
# W4: sampling throughput of flowlab against the PyTorch reference of the same model, side by
# side in alternating rounds; prints each run's JSON line and the ratio of the medians.
#
#   [THREADS=1|2] apps/bench/w4_sampling.sh REFERENCE_DIR w1|w2|w3 [ROUNDS]
#
# Sampling cost barely depends on the weights (flowlab's MLPs skip their ReLUs' zeros, about half
# at initialisation as after training), so both systems sample from a model at (or near) its
# initialisation: flowlab from a run directory trained for one step, the reference
# from its model class as constructed. Batches as in WORKLOADS.md: W1 10,000, W2 100 (MAF:
# flowlab's incremental inversion against the reference's 784 network passes), W3 64. PyTorch
# gets the thread split that is best for it on each (see side_by_side.sh).
set -euo pipefail
ref=${1:?usage: w4_sampling.sh REFERENCE_DIR w1|w2|w3 [ROUNDS]}
workload=${2:?usage: w4_sampling.sh REFERENCE_DIR w1|w2|w3 [ROUNDS]}
rounds=${3:-3}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")/../.." && pwd)
flowlab=${FLOWLAB:-$here/build/bin/flowlab}
case $workload in
  w1) cfg=configs/quickstart.json; n=10000; repeats=20; omp=1; blas=$threads
      model='from models import RealNVP2D; model = RealNVP2D(); fn = lambda k: model.sample(k, gen)' ;;
  w2) cfg=configs/fmnist_maf.json; n=100; repeats=3; omp=1; blas=$threads
      model='from models import MAF; model = MAF(784, 1024, 5); fn = lambda k: model.sample(k, gen)' ;;
  w3) cfg=configs/fmnist_glow.json; n=64; repeats=5; omp=$threads; blas=1
      model='from models import Glow; model = Glow(in_ch=1, K=8, hidden=128, seed=0).to(memory_format=torch.channels_last); fn = lambda k: model.sample(k, (28, 28), gen)' ;;
  *) echo "unknown workload $workload" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$flowlab" run "$here/$cfg" --quiet --set train.steps=1 --set eval.samples=0 --set train.eval_every=0 \
  --set "output=\"$tmp/run\"" > /dev/null
for r in $(seq 1 "$rounds"); do
  "$flowlab" sample "$tmp/run" -n "$n" --time --repeats "$repeats" --quiet --out "$tmp/s.npy" \
    --set train.threads=$threads | tail -n 1 | tee -a "$tmp/flowlab.jsonl"
  (cd "$ref" && OMP_NUM_THREADS=$omp OPENBLAS_NUM_THREADS=$blas /usr/bin/python3 - "$n" "$repeats" "$omp" <<PY
import json, sys, torch
import common
torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)
gen = torch.Generator().manual_seed(7)
$model
print(json.dumps({"sampling": "pytorch-reference", **common.time_sampling(fn, int(sys.argv[1]), int(sys.argv[2]))}))
PY
  ) | tail -n 1 | tee -a "$tmp/torch.jsonl"
done
/usr/bin/python3 - "$tmp" <<'PY'
import json, statistics, sys
d = sys.argv[1]
f = statistics.median(json.loads(l)["samples_per_s"] for l in open(f"{d}/flowlab.jsonl"))
t = statistics.median(json.loads(l)["samples_per_s"] for l in open(f"{d}/torch.jsonl"))
print(json.dumps({"flowlab_samples_per_s": round(f, 1), "torch_samples_per_s": round(t, 1), "ratio": round(f / t, 2)}))
PY

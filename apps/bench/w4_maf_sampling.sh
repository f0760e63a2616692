#!/usr/bin/env bash
# W4 for the MAF of W2: sampling throughput of flowlab (incremental inversion) against the
# PyTorch reference's MAF (784 full network passes per batch), side by side: flowlab with THREADS
# threads, PyTorch with 1 torch thread and THREADS OpenBLAS threads (its best split for GEMMs).
#
#   [THREADS=1|2] apps/bench/w4_maf_sampling.sh REFERENCE_DIR RUN_DIR [ROUNDS]
#
# RUN_DIR is a flowlab run of configs/fmnist_maf.json (sampling cost does not depend on the
# trained weights, so the reference model is used at its initialisation).
set -euo pipefail
ref=${1:?usage: w4_maf_sampling.sh REFERENCE_DIR RUN_DIR [ROUNDS]}
run=${2:?usage: w4_maf_sampling.sh REFERENCE_DIR RUN_DIR [ROUNDS]}
rounds=${3:-2}
threads=${THREADS:-1}
here=$(cd "$(dirname "$0")/../.." && pwd)
flowlab=${FLOWLAB:-$here/build/bin/flowlab}
tmp=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  "$flowlab" sample "$run" -n 100 --time --repeats 5 --quiet --out "$tmp/s.npy" --set train.threads=$threads \
    | tail -n 1 | tee -a "$tmp/flowlab.jsonl"
  (cd "$ref" && OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=$threads /usr/bin/python3 - <<'PY'
import json, sys, time, torch
import common
from models import MAF
torch.set_num_threads(1)  # GEMMs run in OpenBLAS; its threads come from the environment
torch.manual_seed(0)
model = MAF(784, 1024, 5)
gen = torch.Generator().manual_seed(7)
print(json.dumps({"sampling": "pytorch-reference", **common.time_sampling(lambda n: model.sample(n, gen), 100, 2)}))
PY
  ) | tee -a "$tmp/torch.jsonl"
done
/usr/bin/python3 - "$tmp" <<'PY'
import json, statistics, sys
d = sys.argv[1]
f = statistics.median(json.loads(l)["samples_per_s"] for l in open(f"{d}/flowlab.jsonl"))
t = statistics.median(json.loads(l)["samples_per_s"] for l in open(f"{d}/torch.jsonl"))
print(json.dumps({"flowlab_samples_per_s": round(f, 2), "torch_samples_per_s": round(t, 3), "ratio": round(f / t, 1)}))
PY

#!/usr/bin/env bash
# Training throughput of flowlab against a PyTorch reference of the same workload, measured
# side by side on one machine: the two alternate, round after round, so that drifts in the
# machine's speed hit both alike. Prints each run's JSON line, then the ratio of the medians,
# each round's ratio (round_ratios, and their median: the spread says how far to trust a
# figure) and both systems' median peak resident memory.
#
#   [THREADS=1|2] [BUSY=1] [REPLICAS=N] apps/bench/side_by_side.sh REFERENCE_DIR w1|w2|w3 [ROUNDS]
#
# BUSY=1 is the busy-machine variant: one other process (sha256sum /dev/zero) keeps a core busy
# for the whole run, and each round also runs flowlab on 1 thread, so the summary shows whether
# flowlab's THREADS threads are at least as fast as its 1 thread under the same load.
#
# REPLICAS=N runs flowlab as N replicas sharing its THREADS threads (train.replicas: data parallel
# on threads of one process); each round then also runs flowlab without replicas, and the
# summary gives both ratios.
#
# Each flowlab run also prints the cores' round trip at the edges of its windows
# (core_round_trip_ns, listed per run in the summary): on a virtual machine it shows whether the
# host had the two virtual CPUs on a shared cache (about 80 ns here) or apart (about 340 ns, and
# two threads then train W1 at the speed of one; docs/PERFORMANCE.md).
#
# REFERENCE_DIR holds the reference scripts (w1_moons_realnvp.py, w2_fmnist_maf.py, ...).
# Both systems get THREADS threads (default 2): flowlab's oneDNN/TBB pools; for PyTorch with 2,
# the best split found for each workload (torch 1 + OpenBLAS 2 for the GEMM workloads W1/W2,
# torch 2 + OpenBLAS 1 for W3); with 1, torch 1 + OpenBLAS 1.
set -euo pipefail
ref=${1:?usage: side_by_side.sh REFERENCE_DIR w1|w2|w3 [ROUNDS]}
workload=${2:?usage: side_by_side.sh REFERENCE_DIR w1|w2|w3 [ROUNDS]}
rounds=${3:-3}
here=$(cd "$(dirname "$0")/../.." && pwd)
flowlab=${FLOWLAB:-$here/build/bin/flowlab}
case $workload in
  w1) cfg=configs/quickstart.json; script=w1_moons_realnvp.py; warm=50; timed=500
      torch_env=(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2); torch_args=(--threads 1 --blas-threads 2 --foreach) ;;
  w2) cfg=configs/fmnist_maf.json; script=w2_fmnist_maf.py; warm=10; timed=100
      torch_env=(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2); torch_args=(--threads 1 --blas-threads 2) ;;
  w3) cfg=configs/fmnist_glow.json; script=w3_fmnist_glow.py; warm=5; timed=30
      torch_env=(OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1); torch_args=(--threads 2 --blas-threads 1 --channels-last) ;;
  *) echo "unknown workload $workload" >&2; exit 2 ;;
esac
threads=${THREADS:-2}
if [ "$threads" = 1 ]; then
  torch_env=(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
  torch_args=(--threads 1 --blas-threads 1 "${torch_args[@]:4}")
elif [ "$threads" != 2 ]; then
  echo "THREADS must be 1 or 2" >&2; exit 2
fi
replicas=${REPLICAS:-1}
if [ "$replicas" -lt 1 ] || [ $((threads % replicas)) != 0 ]; then
  echo "REPLICAS must divide THREADS ($threads)" >&2; exit 2
fi
out=$(mktemp -d)
load=
if [ "${BUSY:-0}" = 1 ]; then
  sha256sum /dev/zero > /dev/null &
  load=$!
  trap 'kill $load 2> /dev/null' EXIT
fi
for r in $(seq 1 "$rounds"); do
  if [ -n "$load" ]; then
    "$flowlab" bench "$here/$cfg" --set train.threads=1 --warmup $warm --timed $timed --repeats 3 \
      | tee -a "$out/flowlab1.jsonl"
  fi
  if [ "$replicas" -gt 1 ]; then
    "$flowlab" bench "$here/$cfg" --set train.replicas=$replicas --set train.threads=$threads \
      --warmup $warm --timed $timed --repeats 3 | tee -a "$out/flowlab_replicas.jsonl"
  fi
  OMP_NUM_THREADS=$threads "$flowlab" bench "$here/$cfg" --set train.threads=$threads --warmup $warm --timed $timed --repeats 3 \
    | tee -a "$out/flowlab.jsonl"
  (cd "$ref" && env "${torch_env[@]}" /usr/bin/python3 "$script" "${torch_args[@]}" --warmup $warm --timed $timed \
    --repeats 3) | tail -n 1 | tee -a "$out/torch.jsonl"
done
/usr/bin/python3 - "$out" "${BUSY:-0}" "$replicas" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
def rows(f):
    return [json.loads(l) for l in open(f"{d}/{f}") if l.strip()]
def med(f, key="samples_per_s"):
    vals = [r[key] for r in rows(f) if key in r]
    return (statistics.median(vals) if vals else float("nan")), vals
f, fv = med("flowlab.jsonl")
t, tv = med("torch.jsonl")
def per_round(a, b):
    # Each round's ratio (its two runs ran minutes apart at most) and their range: on a shared
    # machine one run can move by 10-15 %, which a ratio of medians alone does not show.
    r = [round(x / y, 3) for x, y in zip(a, b)]
    return r, (round(statistics.median(r), 2) if r else float("nan"))
rr, rm = per_round(fv, tv)
summary = {"flowlab_samples_per_s": round(f, 1), "torch_samples_per_s": round(t, 1), "ratio": round(f / t, 2),
           "round_ratios": rr, "round_ratio_median": rm, "flowlab_runs": fv, "torch_runs": tv,
           "flowlab_core_round_trip_ns": [r.get("core_round_trip_ns", []) for r in rows("flowlab.jsonl")],
           "flowlab_peak_rss_mb": med("flowlab.jsonl", "peak_rss_mb")[0],
           "torch_peak_rss_mb": med("torch.jsonl", "peak_rss_mb")[0]}
if sys.argv[2] == "1":
    f1, f1v = med("flowlab1.jsonl")
    summary.update({"busy": True, "flowlab_1_thread_samples_per_s": round(f1, 1), "flowlab_1_thread_runs": f1v,
                    "threads_vs_1_thread": round(f / f1, 2)})
    br, bm = per_round(fv, f1v)
    summary.update({"threads_vs_1_thread_rounds": br, "threads_vs_1_thread_round_median": bm})
if int(sys.argv[3]) > 1:
    fr, frv = med("flowlab_replicas.jsonl")
    summary.update({"replicas": int(sys.argv[3]), "flowlab_replicas_samples_per_s": round(fr, 1),
                    "flowlab_replicas_runs": frv, "replicas_ratio": round(fr / t, 2),
                    "flowlab_replicas_core_round_trip_ns": [r.get("core_round_trip_ns", []) for r in rows("flowlab_replicas.jsonl")],
                    "replicas_vs_threads": round(fr / f, 2),
                    "flowlab_replicas_peak_rss_mb": med("flowlab_replicas.jsonl", "peak_rss_mb")[0]})
print(json.dumps(summary))
PY

#!/usr/bin/env bash
# Where a training step's time goes: samples `flowlab bench` with perf (all threads) and sorts
# the samples into the parts of a step (oneDNN GEMM/convolution, element-wise kernels,
# optimizer, autodiff bookkeeping, allocation and copies, math library, thread hand-offs).
# Percentages are of CPU samples over both threads, so idle spinning shows up as its own part.
#
#   [THREADS=1|2] apps/bench/profile.sh CONFIG [WARMUP TIMED]
#
# Needs perf (Debian: linux-perf) and a machine that allows it (perf_event_paranoid <= 1, or root).
set -euo pipefail
cfg=${1:?usage: profile.sh CONFIG [WARMUP TIMED]}
warm=${2:-20}
timed=${3:-100}
here=$(cd "$(dirname "$0")/../.." && pwd)
flowlab=${FLOWLAB:-$here/build/bin/flowlab}
threads=${THREADS:-2}
out=$(mktemp -d)
perf record -F 1999 -o "$out/perf.data" -- "$flowlab" bench "$cfg" --set train.threads=$threads \
  --warmup "$warm" --timed "$timed" --repeats 1 --quiet > "$out/bench.json" 2> "$out/perf.log"
tail -n 1 "$out/bench.json"
perf report -i "$out/perf.data" --no-children --sort dso,sym -g none --stdio 2> /dev/null \
  | /usr/bin/python3 "$here/apps/bench/profile_summary.py"
rm -rf "$out"

"""Sorts `perf report --sort dso,sym` lines (stdin) into the parts of a training step."""
import re
import sys

PARTS = [
    ("oneDNN GEMM / convolution", lambda dso, sym: dso.startswith("[JIT]") or "libdnnl" in dso),
    ("OpenMP runtime (spin, barriers)", lambda dso, sym: "libgomp" in dso),
    ("TBB scheduler", lambda dso, sym: "libtbb" in dso),
    ("optimizer", lambda dso, sym: re.search(r"Adam|Sgd|Optimizer|clip|sq_norm", sym) is not None),
    ("autodiff bookkeeping", lambda dso, sym: re.search(
        r"backward|GradSink|make_op|Node|Var::|shared_ptr|_Sp_counted|function<|_M_manager", sym) is not None
        and "_M_invoke" not in sym),
    ("allocation and copies", lambda dso, sym: re.search(
        r"malloc|free|_int_|memset|memmove|memcpy|unlink_chunk|Tensor::empty|Tensor::zeros|mmap|munmap|brk",
        sym) is not None),
    ("math library (exp, log, tanh)", lambda dso, sym: "libm" in dso),
    ("kernel (page faults, scheduling)", lambda dso, sym: "kernel" in dso),
    ("flowlab kernels (element-wise, skinny GEMMs, reductions)", lambda dso, sym: "flowlab" in dso),
]

totals = {name: 0.0 for name, _ in PARTS}
other = 0.0
top = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+(?: tid \d+)?)\s+\[[.k]\]\s+(.*)$", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    for name, match in PARTS:
        if match(dso, sym):
            totals[name] += pct
            top.setdefault(name, []).append((pct, sym[:90]))
            break
    else:
        other += pct
print("| part of the step | share of CPU samples | largest symbols |")
print("|---|---|---|")
for name, _ in PARTS:
    syms = sorted(top.get(name, []), reverse=True)[:2]
    desc = "; ".join(f"{s} ({p:.1f}%)" for p, s in syms if not s.startswith("0x"))
    print(f"| {name} | {totals[name]:.1f}% | {desc} |")
print(f"| other | {other:.1f}% | |")

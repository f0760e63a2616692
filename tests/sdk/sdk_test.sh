#!/usr/bin/env bash
# The plugin SDK as a user meets it (registered by tests/sdk/CMakeLists.txt):
#   1. cmake --install this build into a temporary prefix; the installed flowlab finds
#      libflowlab.so and the standard plugins inside the prefix;
#   2. build the example sinh_arcsinh out of tree against the prefix (find_package only), from
#      the sources the prefix installs (share/flowlab/examples), as someone with only the
#      installed package would;
#   3. check-plugin passes on it, plugin-info shows its name and version;
#   4. a config using the new layer trains and reports a finite test NLL;
#   5. the embedding example (apps/examples/embed, flowlab::Model) builds against the package and,
#      on that run, gives the test split's mean log-likelihood that `flowlab eval` reports;
#   6. the broken example (log-det sign flipped) builds, check-plugin exits 8 with the log-det
#      checks marked FAIL, and `flowlab run` with it stops with exit 8 at its first evaluation;
#   7. the numerical-inverse example (tanh_step) builds, passes check-plugin and trains.
# usage: sdk_test.sh CMAKE BUILD_DIR SOURCE_DIR GENERATOR MAKE_PROGRAM CXX WORK_DIR
set -euo pipefail

cmake_exe=$1 build=$2 src=$3 generator=$4 make_program=$5 cxx=$6 work=$7

# Nothing from the environment may help the installed flowlab find its files.
unset LD_LIBRARY_PATH FLOWLAB_PLUGIN_PATH

rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd -P)  # the loader reports physical paths
prefix=$work/prefix

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# expect_exit CODE OUT WHAT COMMAND...: runs COMMAND with its output (stdout and stderr) in OUT,
# shows it, and fails unless COMMAND exits with CODE; WHAT names it in the failure.
expect_exit() {
    local code=$1 out=$2 what=$3 rc=0
    shift 3
    "$@" > "$out" 2>&1 || rc=$?
    cat "$out"
    [ "$rc" -eq "$code" ] || fail "$what exited $rc, expected $code"
}

step "install the build tree into $prefix"
"$cmake_exe" --install "$build" --prefix "$prefix"
flowlab=$prefix/bin/flowlab
[ -x "$flowlab" ] || fail "no $flowlab after cmake --install"
[ -f "$prefix/lib/cmake/flowlab/flowlabConfig.cmake" ] || fail "no CMake package in $prefix/lib/cmake/flowlab"
[ -f "$prefix/include/flowlab/version.hpp" ] || fail "the generated version.hpp is not installed"
# Where the dynamic linker finds libflowlab.so for a binary (RPATH only: the environment is clean).
resolved_core() { ldd "$1" | awk '$1 ~ /^libflowlab\.so/ {print $3}' | xargs -r realpath; }
if command -v ldd > /dev/null; then
    for bin in "$flowlab" "$prefix/lib/flowlab/plugins/libflowlab_standard.so"; do
        core=$(resolved_core "$bin")
        [ "$core" = "$(realpath "$prefix/lib/libflowlab.so")" ] ||
            { ldd "$bin"; fail "$bin resolves libflowlab.so to '$core', not the one in $prefix/lib"; }
    done
fi
"$flowlab" list bijector > "$work/list.txt"
grep -q "origin: $prefix/lib/flowlab/plugins/libflowlab_standard.so" "$work/list.txt" ||
    { cat "$work/list.txt"; fail "the installed flowlab did not load the standard plugin from $prefix/lib/flowlab/plugins"; }

examples=$prefix/share/flowlab/examples
for name in sinh_arcsinh broken_logdet tanh_step; do
    [ -f "$examples/$name/CMakeLists.txt" ] && [ -f "$examples/$name/$name.cpp" ] ||
        fail "the example $name is not installed in $examples"
done

# Configures and builds one project (an installed example, or the directory given) against the
# installed package; the package must be the prefix's (found through CMAKE_PREFIX_PATH), never
# a build tree's.
configure_and_build() {
    local name=$1 source=${2:-$examples/$1}
    local dir=$work/$name
    local make_arg=()
    [ -n "$make_program" ] && make_arg=(-DCMAKE_MAKE_PROGRAM="$make_program")
    "$cmake_exe" -S "$source" -B "$dir" -G "$generator" "${make_arg[@]}" \
        -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    grep -q "^flowlab_DIR:PATH=$prefix/lib/cmake/flowlab$" "$dir/CMakeCache.txt" ||
        { grep flowlab_DIR "$dir/CMakeCache.txt"; fail "$name: find_package(flowlab) did not pick the installed package"; }
    "$cmake_exe" --build "$dir" -j 2
}
build_example() {
    configure_and_build "$1"
    [ -f "$work/$1/libflowlab_$1.so" ] || fail "$1: no $work/$1/libflowlab_$1.so"
}

step "build the installed example sinh_arcsinh against the installed package"
build_example sinh_arcsinh
lib=$work/sinh_arcsinh/libflowlab_sinh_arcsinh.so
if command -v nm > /dev/null; then
    # Hidden visibility: the entry point is the plugin's only exported function.
    exported=$(nm -D --defined-only "$lib" | awk '$2 == "T" {print $3}')
    [ "$exported" = "flowlab_plugin_entry" ] || fail "exported functions besides the entry point: $exported"
fi

step "flowlab plugin-info"
"$flowlab" plugin-info "$lib" | tee "$work/info.txt"
grep -Eq '^name: +sinh_arcsinh$' "$work/info.txt" || fail "plugin-info does not show the name"
grep -Eq '^version: +1\.0\.0$' "$work/info.txt" || fail "plugin-info does not show the version"
grep -Eq '^loadable: +yes$' "$work/info.txt" || fail "plugin-info says the plugin is not loadable"

step "flowlab check-plugin (must pass)"
expect_exit 0 "$work/check.txt" "check-plugin on the example plugin" "$flowlab" check-plugin "$lib"
grep -Eq 'sinh_arcsinh +\[5\] +grad_params +PASS' "$work/check.txt" || fail "no passing grad_params row"

step "flowlab run with the new layer"
expect_exit 0 "$work/run.txt" "flowlab run" "$flowlab" run "$examples/sinh_arcsinh/config.json" \
    --set train.steps=200 --plugin-dir "$work/sinh_arcsinh" --output "$work/run" --quiet
nll=$(awk '/test NLL/ {print $3}' "$work/run.txt")
awk -v v="$nll" 'BEGIN { exit !(v ~ /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/) }' ||
    fail "test NLL '$nll' is not a finite number"
grep -q "libflowlab_sinh_arcsinh.so" "$work/run/config.json" || fail "the run's config.json does not record the plugin"
echo "test NLL after 200 steps: $nll nats"

step "embed the trained model: apps/examples/embed against the installed package"
configure_and_build embed "$src/apps/examples/embed"
embed=$work/embed/flowlab_embed
[ -x "$embed" ] || fail "no $embed"
if command -v ldd > /dev/null; then
    core=$(resolved_core "$embed")
    [ "$core" = "$(realpath "$prefix/lib/libflowlab.so")" ] || { ldd "$embed"; fail "$embed resolves libflowlab.so to '$core'"; }
fi
# The run loaded the example plugin from $work/sinh_arcsinh: the model finds it through the
# path config.json recorded, with no search path given.
expect_exit 0 "$work/embed.txt" "flowlab_embed" "$embed" "$work/run"
expect_exit 0 "$work/eval.txt" "flowlab eval" "$flowlab" eval "$work/run" --quiet
embed_nll=$(awk '/^test NLL:/ {print $3}' "$work/embed.txt")
eval_nll=$(sed -n 's/.*"nll": \([-0-9.eE+]*\).*/\1/p' "$work/eval.txt")
[ -n "$embed_nll" ] && [ -n "$eval_nll" ] || fail "no NLL in the output of flowlab_embed or flowlab eval"
echo "test NLL: flowlab_embed $embed_nll, flowlab eval $eval_nll"
# eval prints 6 decimals: equal to 1e-6 relative, or to its rounding for a small NLL.
awk -v a="$embed_nll" -v b="$eval_nll" 'BEGIN { d = a - b; if (d < 0) d = -d; m = (b < 0 ? -b : b);
    exit !(d <= 1e-6 * m || d <= 1e-6) }' ||
    fail "flowlab_embed's test NLL $embed_nll differs from flowlab eval's $eval_nll"
grep -q "round trip: max |x - forward(inverse(x))| = " "$work/embed.txt" || fail "no round trip line"

step "not a plugin: check-plugin exits 4"
expect_exit 4 "$work/notplugin.txt" "check-plugin on libflowlab.so (a plugin error)" \
    "$flowlab" check-plugin "$prefix/lib/libflowlab.so"

step "build the installed example broken_logdet and check it (must fail)"
build_example broken_logdet
expect_exit 8 "$work/broken.txt" "check-plugin on the broken plugin" \
    "$flowlab" check-plugin "$work/broken_logdet/libflowlab_broken_logdet.so"
grep -Eq 'broken_scale_shift +\[5\] +log_det_cancel +FAIL' "$work/broken.txt" || fail "log_det_cancel is not marked FAIL"
grep -Eq 'broken_scale_shift +\[5\] +log_det_vs_jacobian +FAIL' "$work/broken.txt" ||
    fail "log_det_vs_jacobian is not marked FAIL"
grep -Eq 'broken_scale_shift +\[5\] +round_trip_inverse_forward +PASS' "$work/broken.txt" ||
    fail "the round trip should pass: the table must point at the log-det, not everywhere"

step "flowlab run with the broken layer (must stop at the first evaluation, exit 8)"
expect_exit 8 "$work/broken_run.txt" "flowlab run with the broken layer" \
    "$flowlab" run "$examples/broken_logdet/config.json" --set train.steps=600 --set train.eval_every=200 \
    --plugin-dir "$work/broken_logdet" --output "$work/broken_run" --quiet
grep -q "'broken_scale_shift' from plugin 'broken_logdet'.*fails the layer check at step 200" "$work/broken_run.txt" ||
    fail "the run's message does not name the broken layer and the step"

step "build the installed example tanh_step (numerical inverse), check it and train with it"
build_example tanh_step
expect_exit 0 "$work/tanh_check.txt" "check-plugin on the tanh_step example" \
    "$flowlab" check-plugin "$work/tanh_step/libflowlab_tanh_step.so"
grep -q "warning:" "$work/tanh_check.txt" && fail "check-plugin warns about the tanh_step example"
grep -Eq 'tanh_step +\[5\] +grad_inputs +PASS' "$work/tanh_check.txt" || fail "no passing grad_inputs row"
expect_exit 0 "$work/tanh_run.txt" "flowlab run with the tanh_step layer" \
    "$flowlab" run "$examples/tanh_step/config.json" --set train.steps=200 --plugin-dir "$work/tanh_step" \
    --output "$work/tanh_run" --quiet
[ -s "$work/tanh_run/samples.csv" ] || fail "no samples drawn through the numerical forward"

printf '\nsdk test passed\n'

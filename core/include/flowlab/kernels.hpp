// The kernel toolkit: what a fused op needs around its loops, shared by the core and every
// plugin - one dispatch on the dtype, batch shapes, dtype checks, chunk sizes for the parallel
// loops of parallel.hpp, the forward and backward plumbing of a fused row-wise flow op, the
// feature split of coupling layers and their conditioner call, and a memory check for sizes that
// come from a config.
//
// Example: a fused element-wise op in a plugin, y = x * exp(a) over [batch, D]:
//
//   #include <flowlab/kernels.hpp>
//   Tensor scale_rows(const Tensor& x, const Tensor& a) {    // x [B, D], a [D]
//       check_same_dtype(x, a, "scale_rows");
//       Tensor y = Tensor::empty(x.shape(), x.dtype());
//       const std::int64_t d = a.numel();
//       dispatch(x.dtype(), [&](auto t) {
//           using T = decltype(t);
//           const T* xs = x.data<T>(); const T* as = a.data<T>(); T* ys = y.data<T>();
//           // Chunks of rows sized by their cost: d elements, each with an exp.
//           parallel_for(x.size(0), row_grain(d + kTranscendentalCost * d), [&](std::int64_t r0, std::int64_t r1) {
//               for (std::int64_t r = r0; r < r1; ++r)
//                   for (std::int64_t j = 0; j < d; ++j) ys[r * d + j] = xs[r * d + j] * std::exp(as[j]);
//           });
//       });
//       return y;
//   }
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "flowlab/autodiff.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/parallel.hpp"
#include "flowlab/params.hpp"
#include "flowlab/tensor.hpp"

namespace flowlab {

class Conditioner;
struct BuildContext;
class Rng;

// The DType of a C++ element type (float or double).
template <class T>
constexpr DType dtype_of() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "flowlab tensors hold float or double");
    return std::is_same_v<T, double> ? DType::f64 : DType::f32;
}

// Calls fn(T{}) with T = float or double after the dtype, so one generic lambda serves both.
template <class Fn>
decltype(auto) dispatch(DType dt, Fn&& fn) {
    if (dt == DType::f64) return fn(double{});
    return fn(float{});
}

// 1 / (1 + e^-x) without overflow: exp is only taken of a number <= 0.
template <class T>
inline T stable_sigmoid(T x) {
    if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
    const T e = std::exp(x);
    return e / (T(1) + e);
}

// [b, event...]: the shape of a batch of b samples.
inline Shape with_batch(std::int64_t b, const Shape& event) {
    Shape s{b};
    s.insert(s.end(), event.begin(), event.end());
    return s;
}

// Throws ShapeError unless a and b share a dtype (a fused kernel reads both with one type).
inline void check_same_dtype(const Tensor& a, const Tensor& b, const std::string& what) {
    if (a.dtype() != b.dtype())
        throw ShapeError(what + ": dtypes " + dtype_name(a.dtype()) + " and " + dtype_name(b.dtype()) + " differ");
}

// What a call of exp, log, tanh or the like costs, counted in elements of a plain element-wise
// loop (about 10-20 ns against 0.1-0.2), for a row's `cols` in row_grain below.
constexpr std::int64_t kTranscendentalCost = 64;

// Rows per parallel chunk so that a chunk of rows of `cols` elements holds about
// kElementwiseGrain elements (smaller work is not worth a thread hand-off). A row whose
// elements cost more than a plain loop's counts them weighted, e.g. D + kTranscendentalCost k
// for D elements of which k take a transcendental call.
inline std::int64_t row_grain(std::int64_t cols) {
    return std::max<std::int64_t>(1, kElementwiseGrain / std::max<std::int64_t>(1, cols));
}

// The value and per-sample log-det of a fused flow op that maps x [B, ...] row by row with raw
// parameters: allocates out (x's shape) and log_det ([B]) and runs
// kernel(x, raw, out, log_det, r0, r1) on typed pointers over parallel chunks of `grain` rows.
struct OutAndLogDet {
    Tensor out, log_det;
};
template <class Kernel>
OutAndLogDet rows_with_log_det(const Tensor& x, const Tensor& raw, std::int64_t grain, Kernel&& kernel) {
    const std::int64_t B = x.size(0);
    OutAndLogDet r{Tensor::empty(x.shape(), x.dtype()), Tensor::empty({B}, x.dtype())};
    dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = x.data<T>();
        const T* rp = raw.data<T>();
        T* op = r.out.data<T>();
        T* lp = r.log_det.data<T>();
        parallel_for(B, grain, [&](std::int64_t r0, std::int64_t r1) { kernel(xp, rp, op, lp, r0, r1); });
    });
    return r;
}

// For the backward rule of a two-input op whose kernel accumulates into the gradient buffers in
// place: calls fn(T{}, g0, g1) with T after `dt` and gi input i's buffer, or null when input i
// needs no gradient; does nothing when neither does.
template <class Fn>
void with_grad_buffers(GradSink& sink, DType dt, Fn&& fn) {
    const bool need0 = sink.needs(0), need1 = sink.needs(1);
    if (!need0 && !need1) return;
    dispatch(dt, [&](auto tag) {
        using T = decltype(tag);
        T* g0 = need0 ? sink.buffer(0).template data<T>() : nullptr;
        T* g1 = need1 ? sink.buffer(1).template data<T>() : nullptr;
        fn(tag, g0, g1);
    });
}

// For the backward rule of a one-input op that accumulates into its input's gradient buffer in
// place: calls fn(T{}, g) with T after `dt` and g the buffer; does nothing when the input needs
// no gradient.
template <class Fn>
void with_grad_buffer(GradSink& sink, DType dt, Fn&& fn) {
    if (!sink.needs(0)) return;
    dispatch(dt, [&](auto tag) { fn(tag, sink.buffer(0).template data<decltype(tag)>()); });
}

// The two feature sets of a coupling layer over `dim` flat features. kind "alternate" puts
// even indices in set 0 and odd ones in set 1; "half" puts the first ceil(dim/2) in set 0.
// `parity` names the transformed set; the other conditions the transform and passes through.
struct CouplingSplit {
    std::int64_t dim = 0;
    std::vector<std::int64_t> trans, cond;  // feature indices, ascending
    std::vector<std::int32_t> slot;         // slot[j]: j's index in trans, or -1 for a cond feature
    bool cond_contiguous = false;           // cond is one run: a slice feeds the conditioner
    std::int64_t d_trans() const { return static_cast<std::int64_t>(trans.size()); }
};
// Throws ShapeError naming `layer` for fewer than 2 features, ConfigError for an unknown kind.
CouplingSplit coupling_split(const std::string& kind, std::int64_t parity, std::int64_t dim, const std::string& layer);
// The schema entries "mask" (the kind) and "parity" of a layer built on coupling_split.
Schema coupling_split_params();
// A flat coupling layer's conditioner, built from the layer's "conditioner" parameter for the
// s.cond features (and the context) to `width` outputs, initialised from rng; PluginError naming
// `layer` when c has no registry to build it from.
std::unique_ptr<Conditioner> make_coupling_conditioner(const Params& p, const BuildContext& c, const CouplingSplit& s,
                                                       std::int64_t width, Rng& rng, const std::string& layer);
// A flat coupling layer's conditioner output for x [B, dim]: net on the conditioning features (one
// slice when they are contiguous, else a gather) and the context, checked to be [B, width];
// ShapeError naming `layer` otherwise.
Var coupling_conditioner(Conditioner& net, const Var& x, const Var& context, const CouplingSplit& s,
                         std::int64_t width, const std::string& layer);

// PyTorch's default initialisation of nn.Linear and nn.Conv2d, which the shipped networks (the
// mlp and cnn conditioners, the linear and conv2d ops) share so that equal networks start
// equal: weight, then bias (when defined), each ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn
// from rng in that order; with `zero`, both are set to zero and nothing is drawn (a network's
// last layer, so that a coupling starts as the identity).
void init_fan_in_uniform(Tensor& weight, Tensor& bias, std::int64_t fan_in, bool zero, Rng& rng);

// Throws ConfigError "WHERE: N WHAT need about X GB of memory, Y GB is available; hint" when
// count * bytes_each overflows or exceeds the available memory: for sizes a config chooses
// (dataset sizes, sample counts) before anything is allocated.
void check_memory(const std::string& where, std::int64_t count, std::int64_t bytes_each, const std::string& what,
                  const std::string& hint);

}  // namespace flowlab

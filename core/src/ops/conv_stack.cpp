// conv_stack (conv.hpp): Glow's coupling network - thin k x k conv, ReLU, 1x1 conv, ReLU, thin
// k x k conv - as one op that runs a few images at a time.
//
// Why one op: run as three conv2d ops, each GEMM reads its operand from and writes its result to
// memory - at W3's level 1 every hidden activation and its gradient is 6.4 MB, well past a
// core's 1 MB L2 - and the GEMMs measured 1.6 times slower on operands out of cache than in it
// (2 threads). Here each group of images (about 256 pixel rows) goes through the whole
// network, forward or backward, while its hidden activations (about 128 KB each) stay in L2.
// The hidden activations are still stored for the backward pass, but written once and read
// once; without a gradient (sampling, evaluation) they are not stored at all.
//
// The arithmetic is conv_gemm.cpp's: the thin convolutions are one GEMM plus the expand or the
// shifted-sum reduce of their thin side, the 1x1 one a GEMM. The weight and bias gradients are
// summed per slot of groups (slot s takes groups s, s + S, ...), then over the slots in order:
// the result does not depend on the thread count.
#include <algorithm>
#include <tuple>
#include <vector>

#include "backend/onednn.hpp"
#include "flowlab/parallel.hpp"
#include "ops/conv_internal.hpp"

namespace flowlab {

using namespace conv_detail;

namespace {

struct StackShape {
    std::int64_t b, c, h, w, p;  // images, input channels, height, width, pixels per image
    std::int64_t hidden, o;      // hidden and output channels
    std::int64_t k0, k2;         // the outer kernels' sizes (the middle one is 1)
    std::int64_t kc0, kc2;       // k0 k0 c (the first GEMM's depth) and k2 k2 o (the last one's width)
    std::int64_t group;          // images per group
    std::int64_t groups() const { return (b + group - 1) / group; }
};

// Pixel rows per group: a group's hidden activation (rows x 128 channels, 128 KB) and the
// backward's three more of its size fit a core's L2 beside the weights.
constexpr std::int64_t kGroupRows = 256;
// Slots of groups whose gradient partial sums are kept apart (a fixed count: the same sums in
// the same order on any number of threads).
constexpr std::int64_t kSlots = 8;

bool is_f32(const Var& v) { return v.defined() && v.dtype() == DType::f32; }

// The shape when the fused path applies: f32, NCHW x, odd square outer kernels with thin sides
// (conv_gemm.cpp's limits), a 1x1 middle conv, all biases. Otherwise b = 0.
StackShape fused_shape(const Var& x, const Var& w0, const Var& b0, const Var& w1, const Var& b1, const Var& w2,
                       const Var& b2) {
    StackShape s{};
    for (const Var* v : {&x, &w0, &b0, &w1, &b1, &w2, &b2})
        if (!is_f32(*v)) return s;
    if (x.value().dim() != 4 || w0.value().dim() != 4 || w1.value().dim() != 4 || w2.value().dim() != 4) return s;
    const std::int64_t c = x.size(1), hidden = w0.size(0), o = w2.size(0), k0 = w0.size(2), k2 = w2.size(2);
    if (w0.size(1) != c || w0.size(3) != k0 || k0 % 2 == 0 || w2.size(3) != k2 || k2 % 2 == 0) return s;
    if (w1.size(0) != hidden || w1.size(1) != hidden || w1.size(2) != 1 || w1.size(3) != 1) return s;
    if (w2.size(1) != hidden || b0.value().dim() != 1 || b0.size(0) != hidden || b1.value().dim() != 1 ||
        b1.size(0) != hidden || b2.value().dim() != 1 || b2.size(0) != o)
        return s;
    if (c * k0 * k0 > 72 || o * k2 * k2 > 144) return s;
    s = {x.size(0), c, x.size(2), x.size(3), x.size(2) * x.size(3), hidden, o, k0, k2, c * k0 * k0, o * k2 * k2, 1};
    // Images per group: as many as fit kGroupRows, or down to half that when it makes the
    // groups a multiple of the slots, so that slots and threads get equal shares (W3's level
    // 2: 13 groups of 5 images left one thread a group more; 16 of 4 do not). The choice
    // depends on the shape only, never on the thread count.
    const std::int64_t most = std::max<std::int64_t>(1, kGroupRows / std::max<std::int64_t>(1, s.p));
    s.group = most;
    for (std::int64_t g = most; 2 * g >= most; --g)
        if (((s.b + g - 1) / g) % kSlots == 0) {
            s.group = g;
            break;
        }
    return s;
}

// C[m, n] (+)= op(A) B (+ bias) (relu) on the calling thread.
void mm(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, const float* a, std::int64_t lda, const float* b,
        std::int64_t ldb, float* c, std::int64_t ldc, const float* bias = nullptr, bool relu = false,
        bool accumulate = false, bool sparse_a = false) {
    const backend::Gemm g{.m = m, .n = n, .k = k, .trans_a = ta, .trans_b = false, .bias = bias != nullptr,
                          .relu = relu, .beta = accumulate ? 1.0f : 0.0f, .sparse_a = sparse_a};
    backend::sgemm_small(g, lda, ldb, ldc, a, b, c, bias);
}

// C[m, n] = A B, then C = relu_out > 0 ? C : 0 with C's rows added to colsum in order: a hidden
// layer's gradient through its ReLU and its bias gradient, in the GEMM's epilogue.
void mm_gated(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, std::int64_t lda, const float* b,
              std::int64_t ldb, float* c, std::int64_t ldc, const float* relu_out, float* colsum,
              bool sparse_a = false) {
    const backend::Gemm g{.m = m, .n = n, .k = k, .sparse_a = sparse_a};
    backend::sgemm_small(g, lda, ldb, ldc, a, b, c, nullptr, relu_out, ldc, colsum);
}

// A thread's scratch buffers, grown on demand and kept.
float* scratch(int slot, std::int64_t n) {
    thread_local std::vector<float> bufs[6];
    std::vector<float>& v = bufs[slot];
    if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
    return v.data();
}

// The three conv2d ops the fused path replaces (any dtype and shape conv2d takes).
Var unfused(const Var& x, const Var& w0, const Var& b0, const Var& w1, const Var& b1, const Var& w2, const Var& b2) {
    Conv2dOptions o;
    o.in_layout = ConvLayout::nchw;
    o.out_layout = ConvLayout::nhwc;
    o.padding = w0.size(2) / 2;
    o.relu = true;
    Var h = conv2d(x, w0, b0, o);
    o.in_layout = ConvLayout::nhwc;
    o.padding = w1.size(2) / 2;
    h = conv2d(h, w1, b1, o);
    o.out_layout = ConvLayout::nchw;
    o.padding = w2.size(2) / 2;
    o.relu = false;
    return conv2d(h, w2, b2, o);
}

}  // namespace

Var conv_stack(const Var& x, const Var& w0, const Var& b0, const Var& w1, const Var& b1, const Var& w2,
               const Var& b2) {
    const StackShape s = fused_shape(x, w0, b0, w1, b1, w2, b2);
    if (s.b == 0) return unfused(x, w0, b0, w1, b1, w2, b2);
    bool keep = grad_enabled();
    if (keep) {
        keep = false;
        for (const Var* v : {&x, &w0, &b0, &w1, &b1, &w2, &b2}) keep = keep || v->requires_grad();
    }
    const std::int64_t H = s.hidden;
    const Tensor w0p = pack_weights(w0.value(), true);                // [kc0, H]
    const Tensor w1t = detail::transpose_kernel(w1.value().reshape({H, H}));  // [H in, H out]
    const Tensor w2p = pack_weights(w2.value(), false);               // [H, kc2]
    Tensor y = Tensor::empty({s.b, s.o, s.h, s.w}, DType::f32);
    Tensor h1, h2;  // [b p, H] channels-last, kept for the backward pass
    if (keep) {
        h1 = Tensor::empty({s.b * s.p, H}, DType::f32);
        h2 = Tensor::empty({s.b * s.p, H}, DType::f32);
    }
    const float* xp = x.value().f32();
    const float *bias0 = b0.value().f32(), *bias1 = b1.value().f32(), *bias2 = b2.value().f32();
    parallel_for(s.groups(), 1, [&](std::int64_t g0, std::int64_t g1) {
        for (std::int64_t g = g0; g < g1; ++g) {
            const std::int64_t n0 = g * s.group, nb = std::min(s.group, s.b - n0), rows = nb * s.p;
            float* cols = scratch(0, rows * s.kc0);
            expand_images(xp + n0 * s.c * s.p, cols, ConvLayout::nchw, {nb, s.c, s.h, s.w}, s.k0, s.k0, s.k0 / 2, +1);
            float* a1 = scratch(1, rows * H);
            float* a2 = scratch(2, rows * H);
            mm(rows, H, s.kc0, false, cols, s.kc0, w0p.f32(), H, a1, H, bias0, true);
            // The first layer's output went through a ReLU: half zeros, which the product may skip.
            mm(rows, H, H, false, a1, H, w1t.f32(), H, a2, H, bias1, true, false, true);
            float* t = scratch(3, rows * s.kc2);
            mm(rows, s.kc2, H, false, a2, H, w2p.f32(), s.kc2, t, s.kc2);
            if (keep) {
                backend::stream_copy(h1.f32() + n0 * s.p * H, a1, rows * H);
                backend::stream_copy(h2.f32() + n0 * s.p * H, a2, rows * H);
            }
            reduce_images(t, bias2, y.f32() + n0 * s.o * s.p, ConvLayout::nchw, {nb, s.o, s.h, s.w}, s.k2, s.k2,
                          s.k2 / 2, -1, false);
        }
    });
    return make_op(
        "conv_stack", std::move(y), {x, w0, b0, w1, b1, w2, b2},
        [x, w0, w1, w2, s, h1, h2](const Tensor& gy, const Tensor&, GradSink& sink) {
            const bool need_x = sink.needs(0);
            const bool need_w0 = sink.needs(1) || sink.needs(2), need_w1 = sink.needs(3) || sink.needs(4),
                       need_w2 = sink.needs(5) || sink.needs(6);
            const std::int64_t H = s.hidden;
            const Tensor w0p = pack_weights(w0.value(), true);
            const Tensor w0pt = detail::transpose_kernel(w0p);                        // [H, kc0]
            const Tensor w2pt = detail::transpose_kernel(pack_weights(w2.value(), false));  // [kc2, H]
            const float* w1p = w1.value().f32();                       // [H out, H in]
            // Per slot: dW0' [kc0, H], db0 [H], dW1 [H, H], db1 [H], dW2''^T [kc2, H], db2 [o].
            const std::int64_t off_b0 = s.kc0 * H, off_w1 = off_b0 + H, off_b1 = off_w1 + H * H,
                               off_w2 = off_b1 + H, off_b2 = off_w2 + H * s.kc2, per_slot = off_b2 + s.o;
            const std::int64_t slots = std::min(kSlots, s.groups());
            // A tensor, not a vector: the tensor allocator recycles the block step after step.
            // Not zeroed whole (800 KB at W3's level 1, every call): each slot's first group
            // writes the weight-gradient sections; only the bias sums accumulate from zero, and
            // the sections of gradients not asked for are never written.
            Tensor part_t = Tensor::empty({slots * per_slot}, DType::f32);
            float* part = part_t.f32();
            for (std::int64_t slot = 0; slot < slots; ++slot) {
                float* ps = part + slot * per_slot;
                for (const auto& [off, n, written] : {std::tuple{std::int64_t{0}, s.kc0 * H, need_w0},
                                                      std::tuple{off_b0, H, false}, std::tuple{off_w1, H * H, need_w1},
                                                      std::tuple{off_b1, H, false}, std::tuple{off_w2, H * s.kc2, need_w2},
                                                      std::tuple{off_b2, s.o, false}})
                    if (!written) std::fill_n(ps + off, n, 0.0f);
            }
            Tensor gx;
            if (need_x) gx = Tensor::empty(x.shape(), DType::f32);
            const float* xp = x.value().f32();
            const float* gyp = gy.f32();
            parallel_for(slots, 1, [&](std::int64_t s0, std::int64_t s1) {
                for (std::int64_t slot = s0; slot < s1; ++slot) {
                    float* ps = part + slot * per_slot;
                    for (std::int64_t g = slot; g < s.groups(); g += slots) {
                        const bool first = g == slot;
                        const std::int64_t n0 = g * s.group, nb = std::min(s.group, s.b - n0), rows = nb * s.p;
                        const float* a1 = h1.f32() + n0 * s.p * H;
                        const float* a2 = h2.f32() + n0 * s.p * H;
                        // Last conv: its output gradient expanded over the kernel's taps.
                        float* gt = scratch(3, rows * s.kc2);
                        const float* gyg = gyp + n0 * s.o * s.p;
                        expand_images(gyg, gt, ConvLayout::nchw, {nb, s.o, s.h, s.w}, s.k2, s.k2, s.k2 / 2, -1);
                        if (need_w2) {
                            // Transposed, [kc2, H] = gt^T a2: the thin side as rows costs its
                            // size (36 rows, six 6-row blocks), as columns a whole vector more
                            // (36 as 48). The same products in the same order: the same bits.
                            mm(s.kc2, H, rows, true, gt, s.kc2, a2, H, ps + off_w2, H, nullptr, false, !first);
                            for (std::int64_t n = 0; n < nb; ++n)
                                for (std::int64_t o = 0; o < s.o; ++o) {
                                    const float* plane = gyg + (n * s.o + o) * s.p;
                                    float t = 0.0f;
#pragma omp simd reduction(+ : t)
                                    for (std::int64_t q = 0; q < s.p; ++q) t += plane[q];
                                    ps[off_b2 + o] += t;
                                }
                        }
                        if (!need_x && !need_w0 && !need_w1) continue;
                        float* d2 = scratch(4, rows * H);
                        mm_gated(rows, H, s.kc2, gt, s.kc2, w2pt.f32(), H, d2, H, a2, ps + off_b1);
                        if (need_w1) mm(H, H, rows, true, d2, H, a1, H, ps + off_w1, H, nullptr, false, !first);
                        if (!need_x && !need_w0) continue;
                        float* d1 = scratch(5, rows * H);
                        // d2 went through the second ReLU's gate: half zeros.
                        mm_gated(rows, H, H, d2, H, w1p, H, d1, H, a1, ps + off_b0, true);
                        if (need_w0) {
                            float* cols = scratch(0, rows * s.kc0);
                            expand_images(xp + n0 * s.c * s.p, cols, ConvLayout::nchw, {nb, s.c, s.h, s.w}, s.k0, s.k0,
                                          s.k0 / 2, +1);
                            mm(s.kc0, H, rows, true, cols, s.kc0, d1, H, ps, H, nullptr, false, !first);
                        }
                        if (need_x) {
                            float* gcols = scratch(1, rows * s.kc0);
                            mm(rows, s.kc0, H, false, d1, H, w0pt.f32(), s.kc0, gcols, s.kc0);
                            reduce_images(gcols, nullptr, gx.f32() + n0 * s.c * s.p, ConvLayout::nchw,
                                          {nb, s.c, s.h, s.w}, s.k0, s.k0, s.k0 / 2, +1, false);
                        }
                    }
                }
            });
            // The slots' partial sums, each entry over the slots in order, the entries split
            // over the threads.
            Tensor total_t = Tensor::empty({per_slot}, DType::f32);
            float* total = total_t.f32();
            parallel_for(per_slot, std::max<std::int64_t>(1, kElementwiseGrain / slots), [&](std::int64_t i0, std::int64_t i1) {
                std::fill(total + i0, total + i1, 0.0f);
                for (std::int64_t slot = 0; slot < slots; ++slot) {
                    const float* ps = part + slot * per_slot;
#pragma omp simd
                    for (std::int64_t i = i0; i < i1; ++i) total[i] += ps[i];
                }
            });
            const auto vec = [&](std::int64_t off, std::int64_t n) {
                Tensor t = Tensor::empty({n}, DType::f32);
                std::copy_n(total + off, n, t.f32());
                return t;
            };
            if (need_x) sink.add(0, std::move(gx));
            if (sink.needs(1)) sink.add(1, unpack_weights(vec(0, s.kc0 * H).reshape({s.kc0, H}), w0.shape(), true));
            if (sink.needs(2)) sink.add(2, vec(off_b0, H));
            if (sink.needs(3)) sink.add(3, vec(off_w1, H * H).reshape(w1.shape()));
            if (sink.needs(4)) sink.add(4, vec(off_b1, H));
            if (sink.needs(5))
                sink.add(5, unpack_weights(detail::transpose_kernel(vec(off_w2, H * s.kc2).reshape({s.kc2, H})), w2.shape(),
                                           false));
            if (sink.needs(6)) sink.add(6, vec(off_b2, s.o));
        });
}

}  // namespace flowlab

// block_sparse_linear: a linear layer whose weight is zero outside a fixed support (MADE's
// masked layers, where about half the entries are zero by construction), run as one GEMM per
// column block and row range of the support instead of one dense GEMM.
//
// Each of the three products keeps to the support: the forward reads, for each block of output
// columns, only the input rows it can see; the weight gradient is computed only inside the
// support (zero outside); the input gradient, for each block of input rows, reads only the
// column blocks those rows feed. Every task writes its own part of the output with a fixed
// sequence of GEMM calls, so the result is the same bits on any number of threads.
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cstring>

#include "backend/onednn.hpp"
#include "flowlab/ops/linalg.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab {

// ------------------------------------------------------------------------------- the support

std::shared_ptr<const WeightSupport> WeightSupport::from_mask(
    std::int64_t in, std::int64_t out, const std::function<bool(std::int64_t, std::int64_t)>& keep,
    std::int64_t block) {
    if (in < 1 || out < 1 || block < 1)
        throw ShapeError("WeightSupport: needs in, out and block >= 1 (got " + std::to_string(in) + ", " +
                         std::to_string(out) + ", " + std::to_string(block) + ")");
    // Rows between two ranges closer than this are read anyway: a GEMM call costs a few
    // microseconds, more than multiplying a few rows of zeros.
    constexpr std::int64_t kBridge = 16;
    // Above this share of the dense work, one dense GEMM (tiled its own way) is as fast.
    constexpr double kDenseAbove = 0.9;

    auto s = std::make_shared<WeightSupport>();
    s->in_ = in;
    s->out_ = out;
    s->block_ = block;
    const std::int64_t nj = (out + block - 1) / block, nr = (in + block - 1) / block;
    s->rows_.resize(static_cast<std::size_t>(nj));
    double covered = 0;
    std::vector<char> used(static_cast<std::size_t>(in));
    for (std::int64_t j = 0; j < nj; ++j) {
        const std::int64_t c0 = j * block, c1 = std::min(out, c0 + block);
        for (std::int64_t i = 0; i < in; ++i) {
            char u = 0;
            for (std::int64_t c = c0; c < c1 && !u; ++c) u = keep(i, c) ? 1 : 0;
            used[static_cast<std::size_t>(i)] = u;
        }
        auto& ranges = s->rows_[static_cast<std::size_t>(j)];
        for (std::int64_t i = 0; i < in; ++i) {
            if (!used[static_cast<std::size_t>(i)]) continue;
            if (!ranges.empty() && i - ranges.back().end < kBridge)
                ranges.back().end = i + 1;
            else
                ranges.push_back({i, i + 1});
        }
        for (const Range& r : ranges) covered += static_cast<double>(r.end - r.begin) * static_cast<double>(c1 - c0);
    }
    s->density_ = covered / (static_cast<double>(in) * static_cast<double>(out));
    s->dense_ = s->density_ >= kDenseAbove;
    if (s->dense_) {
        s->density_ = 1.0;
        for (auto& r : s->rows_) r.assign(1, Range{0, in});
    }
    // The transpose, at column-block granularity: row block r feeds column block j when one of
    // j's ranges meets it (w is zero in the rest of that block, so reading it is harmless).
    s->cols_.resize(static_cast<std::size_t>(nr));
    for (std::int64_t r = 0; r < nr; ++r) {
        const std::int64_t r0 = r * block, r1 = std::min(in, r0 + block);
        auto& cols = s->cols_[static_cast<std::size_t>(r)];
        for (std::int64_t j = 0; j < nj; ++j) {
            const auto& ranges = s->rows_[static_cast<std::size_t>(j)];
            const bool meets =
                std::any_of(ranges.begin(), ranges.end(), [&](const Range& q) { return q.begin < r1 && q.end > r0; });
            if (!meets) continue;
            const std::int64_t c0 = j * block, c1 = std::min(out, c0 + block);
            if (!cols.empty() && cols.back().end == c0)
                cols.back().end = c1;
            else
                cols.push_back({c0, c1});
        }
    }
    return s;
}

namespace {

using Range = WeightSupport::Range;

void check_block_sparse(const Var& x, const Var& w, const Var& b, const WeightSupport* s) {
    const char* op = "block_sparse_linear";
    const Tensor& X = x.value();
    const Tensor& W = w.value();
    detail::check_dtypes(op, X, W);
    if (X.dim() != 2 || W.dim() != 2 || X.size(1) != W.size(0))
        detail::shape_error(op, X.shape(), W.shape(), "incompatible (want x [batch, in] and w [in, out])");
    if (!s) throw ShapeError(std::string(op) + ": no support given");
    if (s->in() != W.size(0) || s->out() != W.size(1))
        throw ShapeError(std::string(op) + ": weight " + shape_str(W.shape()) + " does not match its support [" +
                         std::to_string(s->in()) + ", " + std::to_string(s->out()) + "]");
    if (b.defined()) {
        detail::check_dtypes(op, X, b.value());
        if (b.value().dim() != 1 || b.value().size(0) != W.size(1))
            detail::shape_error(op, W.shape(), b.value().shape(), "incompatible (want w [in, out] and b [out])");
    }
}

// Runs the tasks, largest first so that the last ones to start are short; inline on one thread.
template <class F>
void run_tasks(std::vector<std::pair<double, std::int64_t>>& tasks, const F& fn) {
    std::stable_sort(tasks.begin(), tasks.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    const auto n = static_cast<std::int64_t>(tasks.size());
    if (n <= 1 || num_threads() == 1) {
        for (const auto& t : tasks) fn(t.second);
        return;
    }
    tbb::parallel_for(
        tbb::blocked_range<std::int64_t>(0, n, 1),
        [&](const tbb::blocked_range<std::int64_t>& r) {
            for (std::int64_t i = r.begin(); i < r.end(); ++i) fn(tasks[static_cast<std::size_t>(i)].second);
        },
        tbb::simple_partitioner());
}

// Batches are split into chunks of this many rows (a fixed split, for bit-identical results
// on any thread count), so that large evaluation batches have tasks for every thread.
constexpr std::int64_t kRowChunk = 256;

std::int64_t rows_of(const std::vector<Range>& ranges) {
    std::int64_t n = 0;
    for (const Range& r : ranges) n += r.end - r.begin;
    return n;
}

// Runs fn(first row, rows, block) for every chunk of the batch's rows and every one of `blocks`
// blocks; work(block) weighs a block's task (with the chunk's rows) for the ordering.
template <class Work, class F>
void run_chunked(std::int64_t B, std::int64_t blocks, const Work& work, const F& fn) {
    const std::int64_t chunks = (B + kRowChunk - 1) / kRowChunk;
    std::vector<std::pair<double, std::int64_t>> tasks;
    for (std::int64_t c = 0; c < chunks; ++c)
        for (std::int64_t j = 0; j < blocks; ++j)
            tasks.push_back({static_cast<double>(work(j)) * static_cast<double>(std::min(kRowChunk, B - c * kRowChunk)),
                             c * blocks + j});
    run_tasks(tasks, [&](std::int64_t t) {
        const std::int64_t r0 = (t / blocks) * kRowChunk;
        fn(r0, std::min(kRowChunk, B - r0), t % blocks);
    });
}

// Zeroes the entries of column block j of g [in, out] that lie outside the block's ranges.
template <class T>
void clear_outside(const WeightSupport& s, std::int64_t j, T* g) {
    const std::int64_t in = s.in(), out = s.out(), c0 = j * s.block(), n = std::min(s.block(), out - c0);
    std::int64_t next = 0;  // rows before `next` are inside a range or cleared
    auto clear = [&](std::int64_t a, std::int64_t b) {
        for (std::int64_t i = a; i < b; ++i) std::fill(g + i * out + c0, g + i * out + c0 + n, T(0));
    };
    for (const Range& r : s.rows(j)) {
        clear(next, r.begin);
        next = r.end;
    }
    clear(next, in);
}

// y [B, out] = relu?(x [B, in] w + bias) over the support.
void forward_f32(const WeightSupport& s, const float* x, const float* w, const float* bias, float* y, std::int64_t B,
                 bool relu) {
    const std::int64_t in = s.in(), out = s.out(), blk = s.block(), nj = s.column_blocks();
    run_chunked(
        B, nj, [&](std::int64_t j) { return rows_of(s.rows(j)); },
        [&](std::int64_t r0, std::int64_t m, std::int64_t j) {
            const std::int64_t c0 = j * blk, n = std::min(blk, out - c0);
            float* yc = y + r0 * out + c0;
            const auto& ranges = s.rows(j);
            if (ranges.empty()) {  // no input reaches these outputs: the bias alone
                for (std::int64_t i = 0; i < m; ++i)
                    for (std::int64_t k = 0; k < n; ++k) {
                        const float v = bias ? bias[c0 + k] : 0.0f;
                        yc[i * out + k] = relu && v < 0 ? 0.0f : v;
                    }
                return;
            }
            for (std::size_t q = 0; q < ranges.size(); ++q) {
                const Range& r = ranges[q];
                const bool first = q == 0, last = q + 1 == ranges.size();
                const backend::Gemm g{.m = m,
                                      .n = n,
                                      .k = r.end - r.begin,
                                      .trans_a = false,
                                      .trans_b = false,
                                      .bias = first && bias != nullptr,
                                      .relu = relu && last,
                                      .alpha = 1.0f,
                                      .beta = first ? 0.0f : 1.0f};
                backend::sgemm_tile(g, in, out, out, x + r0 * in + r.begin, w + r.begin * out + c0, yc,
                                    first && bias ? bias + c0 : nullptr);
            }
        });
}

// dx [B, in] (= or += by beta) gy [B, out] w^T over the support.
void input_grad_f32(const WeightSupport& s, const float* gy, const float* w, float* dx, std::int64_t B, float beta) {
    const std::int64_t in = s.in(), out = s.out(), blk = s.block(), nr = s.row_blocks();
    run_chunked(
        B, nr, [&](std::int64_t r) { return rows_of(s.columns(r)); },
        [&](std::int64_t r0, std::int64_t m, std::int64_t rb) {
            const std::int64_t k0 = rb * blk, n = std::min(blk, in - k0);
            float* dc = dx + r0 * in + k0;
            const auto& cols = s.columns(rb);
            if (cols.empty()) {  // these inputs reach no output
                if (beta == 0.0f)
                    for (std::int64_t i = 0; i < m; ++i)
                        std::memset(dc + i * in, 0, static_cast<std::size_t>(n) * sizeof(float));
                return;
            }
            for (std::size_t q = 0; q < cols.size(); ++q) {
                const Range& cr = cols[q];
                const backend::Gemm g{.m = m,
                                      .n = n,
                                      .k = cr.end - cr.begin,
                                      .trans_a = false,
                                      .trans_b = true,
                                      .bias = false,
                                      .relu = false,
                                      .alpha = 1.0f,
                                      .beta = q == 0 ? beta : 1.0f};
                backend::sgemm_tile(g, out, out, in, gy + r0 * out + cr.begin, w + k0 * out + cr.begin, dc, nullptr);
            }
        });
}

// dw [in, out] (= or += by beta) x^T gy inside the support; zero outside when beta = 0.
void weight_grad_f32(const WeightSupport& s, const float* x, const float* gy, float* dw, std::int64_t B, float beta) {
    const std::int64_t in = s.in(), out = s.out(), blk = s.block(), nj = s.column_blocks();
    if (B == 0) {  // an empty batch: no GEMM (k = 0), a zero gradient
        if (beta == 0.0f) std::memset(dw, 0, static_cast<std::size_t>(in * out) * sizeof(float));
        return;
    }
    // Long ranges are cut into pieces, each a task of its own (a column block's rows are few
    // tasks otherwise); the first piece of a block also clears the rows outside its ranges.
    constexpr std::int64_t kPiece = 256;
    struct Piece {
        std::int64_t j, begin, end;
        bool clears;
    };
    std::vector<Piece> pieces;
    std::vector<std::pair<double, std::int64_t>> tasks;
    for (std::int64_t j = 0; j < nj; ++j) {
        bool first = true;
        for (const Range& r : s.rows(j))
            for (std::int64_t p = r.begin; p < r.end; p += kPiece) {
                const std::int64_t e = std::min(r.end, p + kPiece);
                tasks.push_back({static_cast<double>(e - p), static_cast<std::int64_t>(pieces.size())});
                pieces.push_back({j, p, e, first});
                first = false;
            }
        if (first) {  // an empty block: only the clearing
            tasks.push_back({0.0, static_cast<std::int64_t>(pieces.size())});
            pieces.push_back({j, 0, 0, true});
        }
    }
    run_tasks(tasks, [&](std::int64_t t) {
        const Piece& p = pieces[static_cast<std::size_t>(t)];
        const std::int64_t c0 = p.j * blk, n = std::min(blk, out - c0);
        if (p.clears && beta == 0.0f) clear_outside(s, p.j, dw);
        if (p.end == p.begin) return;
        const backend::Gemm g{.m = p.end - p.begin,
                              .n = n,
                              .k = B,
                              .trans_a = true,
                              .trans_b = false,
                              .bias = false,
                              .relu = false,
                              .alpha = 1.0f,
                              .beta = beta};
        backend::sgemm_tile(g, in, out, out, x + p.begin, gy + c0, dw + p.begin * out + c0, nullptr);
    });
}

}  // namespace

Var block_sparse_linear(const Var& x, const Var& w, const Var& b, const std::shared_ptr<const WeightSupport>& support,
                        bool relu) {
    check_block_sparse(x, w, b, support.get());
    if (support->dense()) return relu ? linear_relu(x, w, b) : linear(x, w, b);
    if (x.dtype() != DType::f32) {
        // The plain layer gives the same values (w is zero outside); only w's gradient is
        // projected onto the support.
        Var wv = w;
        Var ws = make_op(
            "weight_support", wv.mutable_value(), {w}, [support](const Tensor& gy, const Tensor&, GradSink& sink) {
                if (!sink.needs(0)) return;
                Tensor g = gy.clone();
                detail::dispatch(g.dtype(), [&](auto tag) {
                    for (std::int64_t j = 0; j < support->column_blocks(); ++j)
                        clear_outside(*support, j, g.data<decltype(tag)>());
                });
                sink.add(0, std::move(g));
            });
        return relu ? linear_relu(x, ws, b) : linear(x, ws, b);
    }
    const std::int64_t B = x.size(0);
    Tensor y = Tensor::empty({B, support->out()}, DType::f32);
    if (B > 0)
        forward_f32(*support, x.value().data<float>(), w.value().data<float>(),
                    b.defined() ? b.value().data<float>() : nullptr, y.data<float>(), B, relu);
    return make_op(
        relu ? "block_sparse_linear_relu" : "block_sparse_linear", std::move(y), {x, w, b},
        [x, w, support, relu](const Tensor& gy, const Tensor& y, GradSink& g) {
            // Where the ReLU passed its input through (and only there) it has a gradient.
            const Tensor gz = relu ? detail::map2<float>(gy, y, [](float u, float v) { return v > 0 ? u : 0.0f; }) : gy;
            const std::int64_t B = x.size(0);
            const float* pgz = gz.data<float>();
            detail::gemm_grad(g, 0, x, [&](Tensor& d, double beta) {
                input_grad_f32(*support, pgz, w.value().data<float>(), d.data<float>(), B, static_cast<float>(beta));
            });
            detail::gemm_grad(g, 1, w, [&](Tensor& d, double beta) {
                weight_grad_f32(*support, x.value().data<float>(), pgz, d.data<float>(), B, static_cast<float>(beta));
            });
            if (g.needs(2)) g.add(2, kern::sum(gz, 0));
        });
}

}  // namespace flowlab

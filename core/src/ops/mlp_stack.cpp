// mlp_stack (linalg.hpp): an MLP - Linear layers with a ReLU between them - as one op that runs a
// block of rows at a time through every layer.
//
// Why one op: a 2-d coupling's conditioner (1 -> 128 -> 128 -> 2 on a batch of 512) run as a
// chain of linear ops splits each 128-wide GEMM over the threads but runs the narrow layers,
// the ReLU masks and the bias sums between them on one thread, with a hand-off at every op: on
// 2 threads W1's step took 3.4-3.6 ms where its GEMMs alone take 1.85. Here a block of rows
// goes through all layers on one thread - forward, or backward down to the input gradient -
// so everything row-wise runs in parallel, with one hand-off per pass. The weight and bias
// gradients (sums over the whole batch) follow as the unfused ops compute them.
//
// The blocks are the row tiles the core's tiled GEMM gives the widest layer, and every product
// goes through detail::gemm_rows: when the other products tile the same way (W1's do), the op
// gives the unfused chain's bits exactly.
//
// Each block has a home thread, the same in the forward pass, the backward rows and (in the
// weight gradients' chain blocks) the partial weight gradients: a block's rows stay in the cache
// of the core that wrote them. On two cores without a shared last-level cache, W1 on 2 fixed
// threads went from about 105k to about 117k samples/s with that (docs/PERFORMANCE.md).
#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "backend/onednn.hpp"
#include "flowlab/parallel.hpp"
#include "ops/ops_internal.hpp"

namespace flowlab {

namespace {

Var unfused(const Var& x, const std::vector<Var>& w, const std::vector<Var>& b) {
    Var h = x;
    for (std::size_t l = 0; l < w.size(); ++l)
        h = l + 1 < w.size() ? linear_relu(h, w[l], b[l]) : linear(h, w[l], b[l]);
    return h;
}

bool is_f32(const Var& v) { return v.defined() && v.dtype() == DType::f32; }

// The share of nonzeros in up to 16 rows spread over a 2-d f32 tensor: enough to tell which
// of two ReLU-gated operands is the sparser.
double density(const Tensor& t) {
    const std::int64_t rows = t.size(0), cols = t.size(1), step = std::max<std::int64_t>(1, rows / 16);
    std::int64_t nonzero = 0, seen = 0;
    for (std::int64_t r = 0; r < rows; r += step) {
        const float* p = t.f32() + r * cols;
        for (std::int64_t j = 0; j < cols; ++j) nonzero += p[j] != 0.0f;
        seen += cols;
    }
    return seen ? static_cast<double>(nonzero) / static_cast<double>(seen) : 1.0;
}

// Rows per block when the fused path applies (f32, 2-d x, at least two layers of matching
// shapes, all biases, no parameter used twice, and a widest product the tiled GEMM splits by
// rows), else 0. Everything else - including shapes the ops reject - runs the chain of linear
// ops.
std::int64_t block_rows(const Var& x, const std::vector<Var>& w, const std::vector<Var>& b) {
    if (w.size() < 2 || b.size() != w.size() || !is_f32(x) || x.value().dim() != 2) return 0;
    // A tensor used twice would have its two gradients written by two tasks at once.
    std::vector<const Node*> nodes = {x.node().get()};
    for (std::size_t l = 0; l < w.size(); ++l) nodes.insert(nodes.end(), {w[l].node().get(), b[l].node().get()});
    std::sort(nodes.begin(), nodes.end());
    if (std::adjacent_find(nodes.begin(), nodes.end()) != nodes.end()) return 0;
    const std::int64_t rows = x.size(0);
    std::int64_t in = x.size(1), step = 0;
    double widest = 0.0;
    for (std::size_t l = 0; l < w.size(); ++l) {
        if (!is_f32(w[l]) || !is_f32(b[l]) || w[l].value().dim() != 2 || b[l].value().dim() != 1) return 0;
        const std::int64_t out = w[l].size(1);
        if (w[l].size(0) != in || b[l].size(0) != out) return 0;
        const double flops = static_cast<double>(in) * static_cast<double>(out);
        if (!detail::gemm_is_skinny(rows, out, in) && flops > widest) {
            widest = flops;
            const backend::GemmTiling t = backend::gemm_tiling(rows, out, in);
            step = t.count >= 2 && t.mode == backend::GemmTiling::rows ? t.step : 0;
        }
        in = out;
    }
    return step;
}

// The chain blocks over the batch in which the widest non-skinny layer's weight gradient
// H^T G is summed (backend::sgemm_tiles_chain), when there are at least two, else 0. Each chain
// block's partial sum is then a product over that block's rows alone, computed from scratch:
// a thread can keep a block's rows through the forward pass, the backward rows and its partial
// weight gradients, and the sum of the partials gives the same bits.
std::int64_t batch_chain(std::int64_t rows, const std::vector<std::int64_t>& width) {
    std::int64_t chain = 0;
    double widest = 0.0;
    for (std::size_t l = 0; l + 1 < width.size(); ++l) {
        const std::int64_t in = width[l], out = width[l + 1];
        const double flops = static_cast<double>(in) * static_cast<double>(out);
        if (detail::gemm_is_skinny(in, out, rows) || flops <= widest) continue;
        widest = flops;
        const backend::Gemm g{.m = in, .n = out, .k = rows, .trans_a = true};
        chain = backend::sgemm_tiles_chain(g, backend::gemm_tiling(in, out, rows));
    }
    return chain > 0 && chain < rows ? chain : 0;
}

// The home thread (parallel_tasks_homed) of each block of R rows: the chain block it falls in,
// or with no chain blocks an even split over the threads.
std::vector<int> row_homes(std::int64_t rows, std::int64_t R, std::int64_t chain) {
    const std::int64_t blocks = (rows + R - 1) / R, threads = num_threads();
    std::vector<int> home(static_cast<std::size_t>(blocks));
    for (std::int64_t k = 0; k < blocks; ++k)
        home[static_cast<std::size_t>(k)] = static_cast<int>(chain > 0 ? k * R / chain : k * threads / blocks);
    return home;
}

}  // namespace

Var mlp_stack(const Var& x, const std::vector<Var>& w, const std::vector<Var>& b) {
    const std::int64_t R = block_rows(x, w, b);
    if (R == 0) return unfused(x, w, b);
    const std::size_t L = w.size();
    const std::int64_t B = x.size(0), blocks = (B + R - 1) / R;
    std::vector<std::int64_t> width = {x.size(1)};  // width[l]: layer l's input width
    for (const Var& wl : w) width.push_back(wl.size(1));
    std::vector<Var> inputs = {x};
    bool keep = false;
    for (std::size_t l = 0; l < L; ++l) {
        inputs.push_back(w[l]);
        inputs.push_back(b[l]);
    }
    if (grad_enabled())
        for (const Var& v : inputs) keep = keep || v.requires_grad();
    // acts[l]: layer l's input (acts[0] = x), after the ReLU.
    std::vector<Tensor> acts = {x.value()};
    for (std::size_t l = 1; l < L; ++l) acts.push_back(Tensor::empty({B, width[l]}, DType::f32));
    Tensor y = Tensor::empty({B, width[L]}, DType::f32);
    const std::int64_t chain = keep ? batch_chain(B, width) : 0;
    parallel_tasks_homed(row_homes(B, R, chain), [&](std::int64_t k) {
        const std::int64_t r0 = k * R, r1 = std::min(B, r0 + R);
        for (std::size_t l = 0; l < L; ++l) {
            float* out = l + 1 < L ? acts[l + 1].f32() : y.f32();
            // Layer l > 0's input is the ReLU's output: about half zeros, which the product
            // may skip.
            detail::gemm_rows(acts[l].f32(), w[l].value().f32(), false, out, B, width[l + 1], width[l], r0, r1,
                              b[l].value().f32(), l + 1 < L, nullptr, l > 0);
        }
    });
    if (!keep) acts.clear();
    return make_op("mlp_stack", std::move(y), std::move(inputs),
                   [w, acts, R, width, chain](const Tensor& gy, const Tensor&, GradSink& sink) {
        const std::size_t L = w.size();
        const std::int64_t B = gy.size(0);
        const bool need_x = sink.needs(0);
        // The lowest layer whose gradient is needed: everything below it is skipped.
        std::size_t lo = L;
        for (std::size_t l = 0; l < L && lo == L; ++l)
            if (need_x || sink.needs(1 + 2 * l) || sink.needs(2 + 2 * l)) lo = l;
        if (lo == L) return;
        // grads[l]: the gradient of layer l's output before its ReLU (grads[L - 1] = gy).
        std::vector<Tensor> grads(L);
        grads[L - 1] = gy;
        for (std::size_t l = lo; l + 1 < L; ++l) grads[l] = Tensor::empty({B, width[l + 1]}, DType::f32);
        Tensor gx;
        if (need_x) gx = Tensor::empty({B, width[0]}, DType::f32);
        // The gradients below the top layer were gated by a ReLU, half zeros: their products with
        // the weights may skip them, given the weights transposed (row k of W^T is what a
        // nonzero in column k multiplies).
        // Each thread transposes them for itself, at its first block: made once by the calling
        // thread, they were read by the other threads from its cache (64 KB a layer).
        std::vector<bool> transposed(L, false);
        if (backend::own_gemm())
            for (std::size_t l = lo + 1; l + 1 < L; ++l)
                transposed[l] = !detail::gemm_is_skinny(B, width[l], width[l + 1]);
        static std::atomic<std::uint64_t> passes{0};
        const std::uint64_t pass = ++passes;
        const std::vector<int> homes = row_homes(B, R, chain);
        parallel_tasks_homed(homes, [&](std::int64_t k) {
            thread_local std::uint64_t made_for = 0;
            thread_local std::vector<Tensor> wt;
            if (made_for != pass) {
                wt.assign(L, Tensor());
                for (std::size_t l = 0; l < L; ++l)
                    if (transposed[l]) wt[l] = detail::transpose_kernel(w[l].value());
                made_for = pass;
            }
            const std::int64_t r0 = k * R, r1 = std::min(B, r0 + R);
            // Gated by the ReLU's output: where it passed its input through (and only there)
            // the input has a gradient.
            for (std::size_t l = L - 1; l > lo; --l)
                if (wt[l].defined())
                    detail::gemm_rows(grads[l].f32(), wt[l].f32(), false, grads[l - 1].f32(), B, width[l],
                                      width[l + 1], r0, r1, nullptr, false, acts[l].f32(), true);
                else
                    detail::gemm_rows(grads[l].f32(), w[l].value().f32(), true, grads[l - 1].f32(), B, width[l],
                                      width[l + 1], r0, r1, nullptr, false, acts[l].f32());
            if (need_x)
                detail::gemm_rows(grads[0].f32(), w[0].value().f32(), true, gx.f32(), B, width[0], width[1], r0, r1,
                                  nullptr, false);
        });
        // The weight and bias gradients, sums over the batch, as linear's backward computes them
        // (the same tiles, the same loops), but in one parallel section: the tiles of the wide
        // layers' products beside the narrow layers' products and the bias sums. Where the batch
        // is summed in chain blocks (batch_chain), a wide layer's product is instead one task per
        // chain block - that block's partial sum, homed on the thread that computed its rows -
        // and the task that finishes a layer's last block adds the partials in order.
        struct Task {
            std::size_t layer;
            std::int64_t tile;   // the weight gradient's tile, or -1 for the bias gradient
            std::int64_t block;  // the chain block of a partial sum, or -1
            int continued = 0;   // a block of a continued sum: 1 the bias's, 2 the weight's
        };
        std::vector<Task> tasks;
        std::vector<int> task_home;
        std::vector<Tensor> dw(L), db(L);
        std::vector<std::vector<Tensor>> partial(L);  // partial[l][q]: chain block q's sum, q >= 1
        std::vector<backend::GemmTiling> tiling(L);
        std::vector<float> beta(L, 0.0f);
        std::vector<std::int64_t> column_chain(L, 0);
        // On one thread the whole products are faster (about 2 % of the backward pass: twice the
        // calls, each on half the operands); the bits are the same either way.
        const std::int64_t chain_blocks = chain > 0 && num_threads() > 1 ? (B + chain - 1) / chain : 0;
        // The sums that run in one chain over the whole batch - the bias gradients and the skinny
        // layers' weight gradients - continued block by block, each block on its rows' thread,
        // instead of read whole by one thread, half of them from the other core's cache. The
        // same sums in the same order, so the same bits.
        const bool continue_sums = chain_blocks >= 2;
        std::vector<Task> continued;
        std::vector<std::vector<float>> state(L);
        constexpr std::int64_t kColumns = 32;
        auto block_gemm = [&](std::size_t l, std::int64_t q) {
            const std::int64_t k0 = q * chain;
            return backend::Gemm{.m = width[l], .n = width[l + 1], .k = std::min(B, k0 + chain) - k0, .trans_a = true};
        };
        for (std::size_t l = lo; l < L; ++l) {
            if (sink.needs(1 + 2 * l)) {
                const std::int64_t in = width[l], out = width[l + 1];
                // Accumulated into w's gradient when it has one, else into a fresh tensor.
                if (detail::has_grad(w[l])) {
                    dw[l] = sink.buffer(1 + 2 * l);
                    beta[l] = 1.0f;
                } else {
                    dw[l] = Tensor::empty({in, out}, DType::f32);
                }
                // Skinny products run whole on gemm_impl's loops, the others in sgemm's tiles -
                // or, where the gated gradient is the sparser operand, in 32-column tiles that
                // skip its zeros (the tiles' order of sums, so the same bits).
                std::int64_t count = 1;
                bool by_blocks = false;
                if (!detail::gemm_is_skinny(in, out, B)) {
                    tiling[l] = backend::gemm_tiling(in, out, B);
                    count = tiling[l].count;
                    if (beta[l] == 0.0f) {
                        const backend::Gemm g{.m = in, .n = out, .k = B, .trans_a = true};
                        const std::int64_t layer_chain = backend::sgemm_tiles_chain(g, tiling[l]);
                        if (l > 0 && layer_chain > 0 &&
                            density(grads[l]) < std::min(backend::kSparseMaxDensity, density(acts[l])))
                            column_chain[l] = layer_chain;
                        // Each block's product alone must sum in one chain, as its block of the
                        // whole product does.
                        by_blocks = chain_blocks >= 2 && layer_chain == chain;
                        for (std::int64_t q = 0; by_blocks && q < chain_blocks; ++q) {
                            const backend::Gemm bg = block_gemm(l, q);
                            by_blocks = column_chain[l] > 0 || backend::sgemm_chain(bg, in, out, out) == bg.k;
                        }
                        if (!by_blocks && column_chain[l] > 0) count = (out + kColumns - 1) / kColumns;
                    }
                }
                if (continue_sums && beta[l] == 0.0f && detail::gemm_is_skinny(in, out, B) &&
                    detail::skinny_grad_state_size(in, out) > 0) {
                    state[l].resize(static_cast<std::size_t>(detail::skinny_grad_state_size(in, out)));
                    continued.push_back({l, 0, -1, 2});
                } else if (by_blocks) {
                    for (std::int64_t q = 0; q < chain_blocks; ++q) {
                        if (q > 0) partial[l].push_back(Tensor::empty({in, out}, DType::f32));
                        tasks.push_back({l, 0, q});
                        task_home.push_back(static_cast<int>(q));
                    }
                } else {
                    for (std::int64_t i = 0; i < count; ++i) {
                        tasks.push_back({l, i, -1});
                        task_home.push_back(-1);
                    }
                }
            }
            if (sink.needs(2 + 2 * l)) {
                if (continue_sums && width[l + 1] >= 2) {
                    db[l] = Tensor::empty({width[l + 1]}, DType::f32);
                    continued.push_back({l, -1, -1, 1});
                } else {
                    tasks.push_back({l, -1, -1});
                    task_home.push_back(-1);
                }
            }
        }
        // The continued sums' blocks: the first blocks ahead of everything (cheap, and what the
        // other threads' blocks wait for), the later ones after the products, each after the
        // same sum's previous block.
        std::vector<std::int64_t> after(tasks.size(), -1);
        if (!continued.empty()) {
            std::vector<Task> all;
            std::vector<int> all_home;
            std::vector<std::int64_t> all_after;
            for (Task t : continued) {
                t.block = 0;
                all.push_back(t);
                all_home.push_back(0);
                all_after.push_back(-1);
            }
            for (std::size_t i = 0; i < tasks.size(); ++i) {
                all.push_back(tasks[i]);
                all_home.push_back(task_home[i]);
                all_after.push_back(-1);
            }
            for (std::int64_t q = 1; q < chain_blocks; ++q)
                for (std::size_t c = 0; c < continued.size(); ++c) {
                    Task t = continued[c];
                    t.block = q;
                    all_after.push_back(q == 1 ? static_cast<std::int64_t>(c)
                                               : static_cast<std::int64_t>(all.size()) -
                                                     static_cast<std::int64_t>(continued.size()));
                    all.push_back(t);
                    all_home.push_back(static_cast<int>(q));
                }
            tasks = std::move(all);
            task_home = std::move(all_home);
            after = std::move(all_after);
        }
        std::unique_ptr<std::atomic<std::int64_t>[]> blocks_done(new std::atomic<std::int64_t>[L]);
        for (std::size_t l = 0; l < L; ++l) blocks_done[l].store(0, std::memory_order_relaxed);
        parallel_tasks_homed(task_home, after, [&](std::int64_t i) {
            const Task& t = tasks[static_cast<std::size_t>(i)];
            const std::size_t l = t.layer;
            const std::int64_t in = width[l], out = width[l + 1];
            if (t.continued > 0) {
                // Block q of a sum over the batch, on the thread that holds its rows, carrying on
                // the running sums of blocks 0..q-1.
                const std::int64_t k0 = t.block * chain, k1 = std::min(B, k0 + chain);
                const bool first = t.block == 0, last = k1 == B;
                if (t.continued == 1)
                    detail::column_sum_block(grads[l].f32(), out, k0, k1, first, db[l].f32());
                else
                    detail::skinny_grad_block(acts[l].f32(), grads[l].f32(), in, out, k0, k1, first, last,
                                              state[l].data(), dw[l].f32());
            } else if (t.block >= 0) {
                const std::int64_t q = t.block, k0 = q * chain;
                const backend::Gemm g = block_gemm(l, q);
                float* c = q == 0 ? dw[l].f32() : partial[l][static_cast<std::size_t>(q - 1)].f32();
                const float *a = acts[l].f32() + k0 * in, *gr = grads[l].f32() + k0 * out;
                if (column_chain[l] > 0)
                    backend::sgemm_sparse_columns(g, g.k, a, in, gr, out, c, out, 0, out);
                else
                    backend::sgemm_tile(backend::Gemm{.m = in, .n = out, .k = g.k, .trans_a = true, .sparse_a = l > 0},
                                        in, out, out, a, gr, c, nullptr);
                // The last block's task adds the partials to block 0's, in the chain blocks'
                // order: the whole product's sums.
                if (blocks_done[l].fetch_add(1, std::memory_order_acq_rel) + 1 == chain_blocks) {
                    float* total = dw[l].f32();
                    for (const Tensor& p : partial[l]) {
                        const float* pp = p.f32();
                        for (std::int64_t e = 0; e < in * out; ++e) total[e] += pp[e];
                    }
                }
            } else if (t.tile < 0) {
                db[l] = kern::sum(grads[l], 0);
            } else if (detail::gemm_is_skinny(in, out, B)) {
                detail::gemm_impl("mlp_stack backward", acts[l], true, grads[l], false, dw[l], 1.0, beta[l], nullptr);
            } else if (column_chain[l] > 0) {
                const std::int64_t j0 = t.tile * kColumns;
                const backend::Gemm g{.m = in, .n = out, .k = B, .trans_a = true};
                backend::sgemm_sparse_columns(g, column_chain[l], acts[l].f32(), in, grads[l].f32(), out, dw[l].f32(),
                                              out, j0, std::min(out, j0 + kColumns));
            } else {
                // Layer l > 0's input, the ReLU's output, is half zeros.
                const backend::Gemm g{.m = in, .n = out, .k = B, .trans_a = true, .beta = beta[l], .sparse_a = l > 0};
                backend::sgemm_tile_of(g, tiling[l], t.tile, acts[l].f32(), grads[l].f32(), dw[l].f32());
            }
        });
        for (std::size_t l = lo; l < L; ++l) {
            if (sink.needs(1 + 2 * l) && beta[l] == 0.0f) sink.add(1 + 2 * l, std::move(dw[l]));
            if (sink.needs(2 + 2 * l)) sink.add(2 + 2 * l, std::move(db[l]));
        }
        if (need_x) sink.add(0, std::move(gx));
    });
}

}  // namespace flowlab

#include "output.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "flowlab/autodiff.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/image_io.hpp"
#include "flowlab/kernels.hpp"
#include "flowlab/report.hpp"
#include "flowlab/rng.hpp"

namespace flowlab::cli {

void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path);
    if (!f) throw IoError(path + ": cannot write (check the directory exists and is writable)");
    f << text;
    if (!f) throw IoError(path + ": write failed (disk full?)");
}

std::string tensor_csv(const Tensor& t) {
    std::ostringstream csv;
    csv.precision(7);
    const std::int64_t n = t.size(0), d = t.numel() / std::max<std::int64_t>(1, n);
    for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t j = 0; j < d; ++j) csv << (j ? "," : "") << t.item(i * d + j);
        csv << "\n";
    }
    return csv.str();
}

void write_npy(const std::string& path, const Tensor& t) {
    std::string shape = "(";
    for (auto d : t.shape()) shape += std::to_string(d) + ",";
    if (t.dim() > 1) shape.pop_back();
    shape += ")";
    std::string header = std::string("{'descr': '") + (t.dtype() == DType::f32 ? "<f4" : "<f8") +
                         "', 'fortran_order': False, 'shape': " + shape + ", }";
    std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += "\n";
    std::ofstream f(path, std::ios::binary);
    if (!f) throw IoError(path + ": cannot write");
    const unsigned short hl = static_cast<unsigned short>(header.size());
    f.write("\x93NUMPY\x01\x00", 8);
    f.put(static_cast<char>(hl & 0xff));
    f.put(static_cast<char>(hl >> 8));
    f << header;
    f.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
    if (!f) throw IoError(path + ": write failed");
}

namespace {

// The contexts a conditional flow is sampled or scored for: those of the test split (the
// training split's when there is none), row i mod N for i < n; undefined for an unconditional flow.
Tensor example_contexts(Experiment& exp, std::int64_t n) {
    if (exp.flow->context_shape().empty()) return Tensor();
    const Tensor& c = exp.data.test.context.defined() ? exp.data.test.context : exp.data.train.context;
    if (!c.defined() || c.size(0) == 0)
        throw ConfigError(exp.config.where("data") + ": the model is conditional but the data carry no contexts to "
                          "sample it for; use the dataset it was trained on");
    Tensor out = Tensor::empty(with_batch(n, exp.flow->context_shape()), c.dtype());
    const std::int64_t row = numel(exp.flow->context_shape());
    const auto* src = static_cast<const char*>(c.raw());
    auto* dst = static_cast<char*>(out.raw());
    const std::size_t bytes = static_cast<std::size_t>(row) * dtype_size(c.dtype());
    for (std::int64_t i = 0; i < n; ++i)
        std::memcpy(dst + static_cast<std::size_t>(i) * bytes, src + static_cast<std::size_t>(i % c.size(0)) * bytes, bytes);
    return out;
}

}  // namespace

Tensor draw_samples(Experiment& exp, std::int64_t n, Rng& rng, double temperature, Communicator* comm) {
    if (!comm || comm->size() == 1) return exp.flow->sample(n, rng, temperature, example_contexts(exp, n));
    // Each rank draws its rows inside a RowSlice (the noise one process draws for them) into a
    // zero-filled tensor of all n; the sum over the ranks is then the whole draw, bit for bit.
    const Tensor contexts = example_contexts(exp, n);
    const RowShare share = row_share(n, comm->rank(), comm->size());
    Tensor mine;
    if (share.rows > 0) {
        RowSlice slice(share.offset, share.rows, n);
        mine = exp.flow->sample(share.rows, rng, temperature,
                                contexts.defined() ? contexts.rows(share.offset, share.rows) : Tensor());
    }
    // Rank 0 has rows whenever n > 0: its dtype is the draw's.
    std::uint8_t f64 = mine.defined() && mine.dtype() == DType::f64 ? 1 : 0;
    comm->broadcast(&f64, 1, 0);
    Tensor all = Tensor::zeros(with_batch(n, exp.data.event_shape), f64 ? DType::f64 : DType::f32);
    if (mine.defined()) {
        const std::size_t row = all.nbytes() / static_cast<std::size_t>(n);
        std::memcpy(static_cast<char*>(all.raw()) + static_cast<std::size_t>(share.offset) * row, mine.raw(), mine.nbytes());
    }
    if (f64)
        comm->allreduce_sum(all.data<double>(), static_cast<std::size_t>(all.numel()));
    else
        comm->allreduce_sum(all.data<float>(), static_cast<std::size_t>(all.numel()));
    return all;
}

// The flow's output lives in the dequantized space x' = (level + u) / levels, so
// floor(x' * levels) recovers the pixel level.
void write_image_samples(Experiment& exp, const std::string& path, std::int64_t n, double temperature, Rng& rng,
                         Communicator* comm) {
    Tensor xs = draw_samples(exp, n, rng, temperature, comm).to(DType::f32);
    if (comm && comm->rank() != 0) return;
    const double levels = exp.data.discrete ? std::ldexp(1.0, exp.data.bits) : 0.0;
    float* p = xs.f32();
    std::int64_t finite = 0;
    for (std::int64_t i = 0; i < xs.numel(); ++i) {
        double v = p[i];
        if (std::isfinite(v)) ++finite; else v = 0.0;
        if (levels > 0) v = std::floor(std::clamp(v, 0.0, 1.0 - 1e-7) * levels) / (levels - 1.0);
        p[i] = static_cast<float>(std::clamp(v, 0.0, 1.0));
    }
    write_png_grid(path, xs, static_cast<std::int64_t>(std::ceil(std::sqrt(static_cast<double>(n)))));
    if (finite != xs.numel())
        std::fprintf(stderr, "flowlab: %s: %lld of %lld sample values were not finite (drawn as black)\n", path.c_str(),
                     static_cast<long long>(xs.numel() - finite), static_cast<long long>(xs.numel()));
}

namespace {

// log p(x) of a 2-D model on a g x g grid over the test data's range, as CSV x,y,logp; for a
// conditional model, the mixture over the first (up to 16) test contexts, log mean_c p(x | c).
std::string density_grid_csv(Experiment& exp, int g) {
    const Tensor& t = exp.data.test.x;
    double lo[2] = {INFINITY, INFINITY}, hi[2] = {-INFINITY, -INFINITY};
    for (std::int64_t i = 0; i < t.size(0); ++i)
        for (int d = 0; d < 2; ++d) lo[d] = std::min(lo[d], t.item(2 * i + d)), hi[d] = std::max(hi[d], t.item(2 * i + d));
    for (int d = 0; d < 2; ++d) {
        double m = 0.1 * (hi[d] - lo[d]);
        lo[d] -= m, hi[d] += m;
    }
    std::vector<double> pts;
    for (int i = 0; i < g; ++i)
        for (int j = 0; j < g; ++j) {
            pts.push_back(lo[0] + (hi[0] - lo[0]) * (j + 0.5) / g);
            pts.push_back(lo[1] + (hi[1] - lo[1]) * (i + 0.5) / g);
        }
    NoGradGuard guard;
    exp.flow->set_training(false);
    const Tensor grid = Tensor::from_vector({g * g, 2}, pts, t.dtype());
    std::vector<double> lp(static_cast<std::size_t>(g * g), -INFINITY);
    const bool conditional = !exp.flow->context_shape().empty();
    const std::int64_t contexts = conditional ? std::min<std::int64_t>(16, example_contexts(exp, 16).size(0)) : 1;
    const Tensor all = example_contexts(exp, contexts);
    std::vector<std::vector<double>> per(static_cast<std::size_t>(contexts));
    for (std::int64_t k = 0; k < contexts; ++k) {
        Tensor ctx;
        if (conditional) {
            ctx = Tensor::empty(with_batch(g * g, exp.flow->context_shape()), all.dtype());
            const std::size_t bytes = all.nbytes() / static_cast<std::size_t>(contexts);
            const auto* src = static_cast<const char*>(all.raw()) + static_cast<std::size_t>(k) * bytes;
            for (std::int64_t r = 0; r < g * g; ++r)
                std::memcpy(static_cast<char*>(ctx.raw()) + static_cast<std::size_t>(r) * bytes, src, bytes);
        }
        const Tensor v = exp.flow->log_prob(Var(grid), ctx.defined() ? Var(ctx) : Var()).value();
        for (std::int64_t r = 0; r < g * g; ++r) per[static_cast<std::size_t>(k)].push_back(v.item(r));
    }
    for (std::size_t r = 0; r < lp.size(); ++r) {
        double m = -INFINITY, acc = 0;
        for (const auto& v : per) m = std::max(m, v[r]);
        for (const auto& v : per) acc += std::exp(v[r] - m);
        lp[r] = std::isfinite(m) ? m + std::log(acc / static_cast<double>(contexts)) : m;
    }
    exp.flow->set_training(true);
    std::ostringstream csv;
    csv << "x,y,logp\n";
    for (std::int64_t k = 0; k < g * g; ++k)
        csv << pts[2 * k] << "," << pts[2 * k + 1] << "," << lp[static_cast<std::size_t>(k)] << "\n";
    return csv.str();
}

}  // namespace

void write_artifacts(Experiment& exp, const std::string& run_dir, Communicator* comm) {
    const Params ev = exp.config.get_object("eval");
    const std::int64_t n = ev.get_int("samples");
    const Shape& ev_shape = exp.data.event_shape;
    const bool root = !comm || comm->rank() == 0;
    Rng rng(static_cast<std::uint64_t>(exp.config.get_int("seed")) + 7, 0);
    if (n > 0 && ev_shape.size() == 1) {
        Tensor xs = draw_samples(exp, n, rng, ev.get_number("temperature"), comm);
        if (root) write_text(run_dir + "/samples.csv", tensor_csv(xs));
    }
    if (n > 0 && ev_shape.size() == 3)
        write_image_samples(exp, run_dir + "/samples.png", std::min<std::int64_t>(n, 64), ev.get_number("temperature"), rng,
                            comm);
    if (!root) return;  // the rest is rank 0's: a small grid and the report
    if (ev_shape.size() == 1 && ev_shape[0] == 2) {
        // Test data and the model density on a grid, for the report's 2-D plots.
        const Tensor& test = exp.data.test.x;
        write_text(run_dir + "/data.csv", tensor_csv(test.rows(0, std::min<std::int64_t>(test.size(0), 2000))));
        write_text(run_dir + "/density.csv", density_grid_csv(exp, 60));
    }
    write_report(run_dir);
}

}  // namespace flowlab::cli

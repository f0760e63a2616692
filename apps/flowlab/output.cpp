#include "output.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "flowlab/autodiff.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/image_io.hpp"
#include "flowlab/report.hpp"

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

// The flow's output lives in the dequantized space x' = (level + u) / levels, so
// floor(x' * levels) recovers the pixel level.
void write_image_samples(Experiment& exp, const std::string& path, std::int64_t n, double temperature, Rng& rng) {
    Tensor xs = exp.flow->sample(n, rng, temperature).to(DType::f32);
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

// log p(x) of a 2-D model on a g x g grid over the test data's range, as CSV x,y,logp.
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
    Tensor lp = exp.flow->log_prob(Var(Tensor::from_vector({g * g, 2}, pts, t.dtype()))).value();
    exp.flow->set_training(true);
    std::ostringstream csv;
    csv << "x,y,logp\n";
    for (std::int64_t k = 0; k < g * g; ++k) csv << pts[2 * k] << "," << pts[2 * k + 1] << "," << lp.item(k) << "\n";
    return csv.str();
}

}  // namespace

void write_artifacts(Experiment& exp, const std::string& run_dir) {
    const Params ev = exp.config.get_object("eval");
    const std::int64_t n = ev.get_int("samples");
    const Shape& ev_shape = exp.data.event_shape;
    Rng rng(static_cast<std::uint64_t>(exp.config.get_int("seed")) + 7, 0);
    if (n > 0 && ev_shape.size() == 1) {
        Tensor xs = exp.flow->sample(n, rng, ev.get_number("temperature"));
        write_text(run_dir + "/samples.csv", tensor_csv(xs));
    }
    if (n > 0 && ev_shape.size() == 3)
        write_image_samples(exp, run_dir + "/samples.png", std::min<std::int64_t>(n, 64), ev.get_number("temperature"), rng);
    if (ev_shape.size() == 1 && ev_shape[0] == 2) {
        // Test data and the model density on a grid, for the report's 2-D plots.
        const Tensor& test = exp.data.test.x;
        write_text(run_dir + "/data.csv", tensor_csv(test.rows(0, std::min<std::int64_t>(test.size(0), 2000))));
        write_text(run_dir + "/density.csv", density_grid_csv(exp, 60));
    }
    write_report(run_dir);
}

}  // namespace flowlab::cli

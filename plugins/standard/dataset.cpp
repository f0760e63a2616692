// Seeded 2-D toy datasets (the usual density-estimation toys of the FFJORD / NSF papers).
//
// Each split is drawn from its own generator, derived from (seed, 1000) for train, (seed, 2000)
// for test and (seed, 3000) for valid, so the splits are independent and a split does not change
// when another one changes size. Points are generated in double, shuffled, stored as f32 [n, 2].
#include <cmath>
#include <functional>
#include <numbers>
#include <string>
#include <vector>

#include "standard.hpp"

namespace flowlab::standard {
namespace {

constexpr double kPi = std::numbers::pi;

// n points as x0, y0, x1, y1, ...
using Points = std::vector<double>;
using Generator = std::function<Points(std::int64_t n, double noise, Rng& rng)>;

void add_noise(Points& p, double noise, Rng& rng) {
    if (noise == 0.0) return;
    for (double& v : p) v += noise * rng.normal();
}

Tensor shuffled_tensor(const Points& p, Rng& rng) {
    const std::int64_t n = static_cast<std::int64_t>(p.size() / 2);
    const std::vector<std::int64_t> perm = rng.permutation(n);
    Tensor t = Tensor::empty({n, 2});
    float* out = t.f32();
    for (std::int64_t i = 0; i < n; ++i) {
        const auto src = static_cast<std::size_t>(2 * perm[static_cast<std::size_t>(i)]);
        out[2 * i] = static_cast<float>(p[src]);
        out[2 * i + 1] = static_cast<float>(p[src + 1]);
    }
    return t;
}

// Two moons (W1): n/2 outer points (cos t, sin t), the rest inner (1 - cos t, 0.5 - sin t),
// t ~ U(0, pi) (all outer angles first, then the inner ones), then N(0, noise^2) on both
// coordinates. Not standardised.
Points moons(std::int64_t n, double noise, Rng& rng) {
    const std::int64_t n_out = n / 2;
    Points p(static_cast<std::size_t>(2 * n));
    std::vector<double> t(static_cast<std::size_t>(n));
    for (double& v : t) v = rng.uniform() * kPi;
    for (std::int64_t i = 0; i < n; ++i) {
        const double a = t[static_cast<std::size_t>(i)];
        const bool outer = i < n_out;
        p[static_cast<std::size_t>(2 * i)] = outer ? std::cos(a) : 1.0 - std::cos(a);
        p[static_cast<std::size_t>(2 * i + 1)] = outer ? std::sin(a) : 0.5 - std::sin(a);
    }
    add_noise(p, noise, rng);
    return p;
}

// Eight Gaussians: centres 4 * (the 8 unit vectors at multiples of 45 degrees), blob std
// `noise`, everything divided by 1.414 (the usual definition).
Points eight_gaussians(std::int64_t n, double noise, Rng& rng) {
    Points p(static_cast<std::size_t>(2 * n));
    const double r = 1.0 / std::sqrt(2.0);
    const double cx[8] = {1, -1, 0, 0, r, r, -r, -r};
    const double cy[8] = {0, 0, 1, -1, r, -r, r, -r};
    for (std::int64_t i = 0; i < n; ++i) {
        const double ex = rng.normal(), ey = rng.normal();
        const auto k = rng.below(8);
        p[static_cast<std::size_t>(2 * i)] = (4.0 * cx[k] + noise * ex) / 1.414;
        p[static_cast<std::size_t>(2 * i + 1)] = (4.0 * cy[k] + noise * ey) / 1.414;
    }
    return p;
}

// Checkerboard on [-4, 4]^2: x1 ~ U(-2, 2), x2 in one of the two unit squares above the
// alternating cells, both scaled by 2; optional Gaussian noise.
Points checkerboard(std::int64_t n, double noise, Rng& rng) {
    Points p(static_cast<std::size_t>(2 * n));
    for (std::int64_t i = 0; i < n; ++i) {
        const double x1 = rng.uniform() * 4.0 - 2.0;
        const double x2 = rng.uniform() - 2.0 * static_cast<double>(rng.below(2)) + std::fmod(std::floor(x1) + 4.0, 2.0);
        p[static_cast<std::size_t>(2 * i)] = 2.0 * x1;
        p[static_cast<std::size_t>(2 * i + 1)] = 2.0 * x2;
    }
    add_noise(p, noise, rng);
    return p;
}

// Two concentric circles (scikit-learn's make_circles with factor 0.5): n/2 points on the
// unit circle, the rest on radius 0.5, evenly spaced angles, noise on both coordinates, all
// scaled by 3.
Points circles(std::int64_t n, double noise, Rng& rng) {
    const std::int64_t n_out = n / 2, n_in = n - n_out;
    Points p(static_cast<std::size_t>(2 * n));
    for (std::int64_t i = 0; i < n; ++i) {
        const bool outer = i < n_out;
        const std::int64_t k = outer ? i : i - n_out, m = outer ? n_out : n_in;
        const double a = 2.0 * kPi * static_cast<double>(k) / static_cast<double>(m);
        const double radius = outer ? 1.0 : 0.5;
        p[static_cast<std::size_t>(2 * i)] = radius * std::cos(a);
        p[static_cast<std::size_t>(2 * i + 1)] = radius * std::sin(a);
    }
    add_noise(p, noise, rng);
    for (double& v : p) v *= 3.0;
    return p;
}

// Pinwheel: 5 arms; a point has radial feature 1 + noise*e1 and tangential feature
// (noise/3)*e2 and is rotated by its arm's angle + 0.25 * exp(radial); all scaled by 2.
Points pinwheel(std::int64_t n, double noise, Rng& rng) {
    constexpr int classes = 5;
    const double tangential = noise / 3.0;
    Points p(static_cast<std::size_t>(2 * n));
    for (std::int64_t i = 0; i < n; ++i) {
        const double f0 = 1.0 + noise * rng.normal();
        const double f1 = tangential * rng.normal();
        const double angle = 2.0 * kPi * static_cast<double>(i % classes) / classes + 0.25 * std::exp(f0);
        const double c = std::cos(angle), s = std::sin(angle);
        p[static_cast<std::size_t>(2 * i)] = 2.0 * (f0 * c + f1 * s);
        p[static_cast<std::size_t>(2 * i + 1)] = 2.0 * (-f0 * s + f1 * c);
    }
    return p;
}

// Two spirals: radius r = sqrt(u) * 3 pi (1.5 turns), a point (-cos r * r, sin r * r) plus
// U(0, 0.5) jitter per coordinate, mirrored for the second arm, divided by 3, plus noise.
Points spirals(std::int64_t n, double noise, Rng& rng) {
    Points p(static_cast<std::size_t>(2 * n));
    for (std::int64_t i = 0; i < n; ++i) {
        const double r = std::sqrt(rng.uniform()) * 540.0 * (2.0 * kPi) / 360.0;
        const double x = -std::cos(r) * r + rng.uniform() * 0.5;
        const double y = std::sin(r) * r + rng.uniform() * 0.5;
        const double sign = i % 2 == 0 ? 1.0 : -1.0;
        p[static_cast<std::size_t>(2 * i)] = sign * x / 3.0;
        p[static_cast<std::size_t>(2 * i + 1)] = sign * y / 3.0;
    }
    add_noise(p, noise, rng);
    return p;
}

DataSplit make_split(const Generator& gen, std::int64_t n, double noise, std::uint64_t seed, std::uint64_t stream) {
    DataSplit s;
    if (n <= 0) {
        s.x = Tensor::empty({0, 2});
        return s;
    }
    Rng rng(Rng::bits(seed, stream));
    s.x = shuffled_tensor(gen(n, noise, rng), rng);
    return s;
}

// A split's size comes from the config: refuse one that cannot fit before allocating it. The
// generator's doubles, its temporaries, the shuffle's permutation and the f32 tensor take about
// 48 bytes a point.
void check_fits(const Params& p, const char* key) {
    check_memory(p.where(key), p.get_int(key), 48, "points", "use fewer points");
}

void add_toy(Registry& reg, const char* name, const char* doc, double noise, const char* noise_doc, Generator gen) {
    reg.add_dataset({name,
                     doc,
                     {param_int("train", 10000, "training points").min(1),
                      param_int("test", 2000, "test points").min(0),
                      param_int("valid", 0, "validation points").min(0),
                      param_number("noise", noise, noise_doc).min(0.0)},
                     [name = std::string(name), gen](const Params& p, std::uint64_t seed) {
                         const double noise = p.get_number("noise");
                         for (const char* key : {"train", "test", "valid"}) check_fits(p, key);
                         Dataset d;
                         d.event_shape = {2};
                         d.train = make_split(gen, p.get_int("train"), noise, seed, 1000);
                         d.test = make_split(gen, p.get_int("test"), noise, seed, 2000);
                         d.valid = make_split(gen, p.get_int("valid"), noise, seed, 3000);
                         d.description = name + " (2-D toy, noise " + std::to_string(noise) + ")";
                         return d;
                     }});
}

}  // namespace

void register_datasets(Registry& reg) {
    add_toy(reg, "moons", "two interleaved half circles (W1): outer (cos t, sin t), inner (1-cos t, 0.5-sin t)", 0.05,
            "std of the Gaussian noise on both coordinates", moons);
    add_toy(reg, "eight_gaussians", "a mixture of 8 Gaussians on a circle of radius 4/1.414", 0.5,
            "std of each Gaussian before the 1/1.414 scaling", eight_gaussians);
    add_toy(reg, "checkerboard", "uniform on the 8 dark cells of a 4x4 checkerboard over [-4, 4]^2", 0.0,
            "std of extra Gaussian noise on both coordinates (0 = none)", checkerboard);
    add_toy(reg, "circles", "two concentric circles of radius 3 and 1.5", 0.08,
            "std of the Gaussian noise on both coordinates, before the x3 scaling", circles);
    add_toy(reg, "pinwheel", "5 curved arms of a pinwheel", 0.3,
            "radial std of an arm (the tangential std is a third of it)", pinwheel);
    add_toy(reg, "spirals", "two interleaved spirals", 0.1, "std of the Gaussian noise on both coordinates", spirals);
}

}  // namespace flowlab::standard

#include "flowlab/rng.hpp"

#include <cmath>
#include <numbers>

#include "flowlab/errors.hpp"
#include "flowlab/parallel.hpp"

namespace flowlab {

namespace {
constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ull;

inline std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
// The seed is mixed once into a key so that nearby seeds give unrelated streams.
inline std::uint64_t key_of(std::uint64_t seed) { return mix64(seed + kGolden); }
// SplitMix64's output for state key + (counter + 1) * golden.
inline std::uint64_t draw(std::uint64_t key, std::uint64_t counter) {
    return mix64(key + (counter + 1) * kGolden);
}
inline double to_unit(std::uint64_t b) { return static_cast<double>(b >> 11) * 0x1.0p-53; }
// Box-Muller from two counter values; 1 - u1 lies in (0, 1], so the log is finite.
inline double box_muller(std::uint64_t key, std::uint64_t c) {
    const double u1 = to_unit(draw(key, c));
    const double u2 = to_unit(draw(key, c + 1));
    return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

// The open RowSlice of this thread: {offset, rows, total}; rows == 0 when none.
thread_local std::int64_t t_slice[3] = {0, 0, 0};

// Where a fill of t starts (relative to the counter) and how far it advances it, in units of
// `per` counter values per element.
struct FillSpan {
    std::uint64_t start, advance;
};
FillSpan fill_span(const Tensor& t, std::uint64_t per) {
    const auto n = static_cast<std::uint64_t>(t.numel());
    if (t_slice[1] <= 0 || t.dim() < 1 || t.size(0) != t_slice[1]) return {0, per * n};
    const std::uint64_t row = n / static_cast<std::uint64_t>(t_slice[1]);
    return {per * row * static_cast<std::uint64_t>(t_slice[0]), per * row * static_cast<std::uint64_t>(t_slice[2])};
}

template <class T, class F>
void fill_with(Tensor& t, const F& f) {
    T* p = t.data<T>();
    parallel_for(t.numel(), kElementwiseGrain / 8, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t i = b; i < e; ++i) p[i] = static_cast<T>(f(i));
    });
}
}  // namespace

std::uint64_t Rng::bits(std::uint64_t seed, std::uint64_t counter) { return draw(key_of(seed), counter); }

double Rng::uniform() { return to_unit(next_u64()); }

double Rng::normal() {
    const double v = box_muller(key_of(seed_), counter_);
    counter_ += 2;
    return v;
}

std::uint64_t Rng::below(std::uint64_t n) {
    if (n == 0) throw Error("Rng::below: n must be positive");
    // Rejection sampling removes the modulo bias: accept r only below the largest multiple of n.
    const std::uint64_t threshold = (0 - n) % n;  // = 2^64 mod n
    for (;;) {
        const std::uint64_t r = next_u64();
        if (r >= threshold) return r % n;
    }
}

RowSlice::RowSlice(std::int64_t offset, std::int64_t rows, std::int64_t total) {
    if (offset < 0 || rows < 0 || offset + rows > total)
        throw Error("RowSlice: rows [" + std::to_string(offset) + ", " + std::to_string(offset + rows) +
                    ") are not inside a batch of " + std::to_string(total));
    for (int i = 0; i < 3; ++i) prev_[i] = t_slice[i];
    t_slice[0] = offset;
    t_slice[1] = rows;
    t_slice[2] = total;
}

RowSlice::~RowSlice() {
    for (int i = 0; i < 3; ++i) t_slice[i] = prev_[i];
}

void Rng::fill_uniform(Tensor& t, double lo, double hi) {
    const FillSpan span = fill_span(t, 1);
    const std::uint64_t key = key_of(seed_), c0 = counter_ + span.start;
    const double w = hi - lo;
    auto f = [=](std::int64_t i) { return lo + w * to_unit(draw(key, c0 + static_cast<std::uint64_t>(i))); };
    if (t.dtype() == DType::f32)
        fill_with<float>(t, f);
    else
        fill_with<double>(t, f);
    counter_ += span.advance;
}

void Rng::fill_normal(Tensor& t, double mean, double stddev) {
    const FillSpan span = fill_span(t, 2);
    const std::uint64_t key = key_of(seed_), c0 = counter_ + span.start;
    auto f = [=](std::int64_t i) {
        return mean + stddev * box_muller(key, c0 + 2 * static_cast<std::uint64_t>(i));
    };
    if (t.dtype() == DType::f32)
        fill_with<float>(t, f);
    else
        fill_with<double>(t, f);
    counter_ += span.advance;
}

std::vector<std::int64_t> Rng::permutation(std::int64_t n) {
    std::vector<std::int64_t> p(static_cast<std::size_t>(n > 0 ? n : 0));
    for (std::int64_t i = 0; i < n; ++i) p[i] = i;
    for (std::int64_t i = n - 1; i > 0; --i) {
        const auto j = static_cast<std::int64_t>(below(static_cast<std::uint64_t>(i + 1)));
        std::swap(p[i], p[j]);
    }
    return p;
}

}  // namespace flowlab

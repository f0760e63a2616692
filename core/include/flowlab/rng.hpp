// Rng: a counter-based random generator (SplitMix64 over (seed, counter)).
//
// Its whole state is two integers, so it checkpoints exactly and a tensor can be filled in
// parallel with a result that does not depend on the thread count: element i of a fill uses
// counter + i.
#pragma once

#include <cstdint>

#include "flowlab/tensor.hpp"

namespace flowlab {

class Rng {
public:
    explicit Rng(std::uint64_t seed = 0, std::uint64_t counter = 0) : seed_(seed), counter_(counter) {}

    std::uint64_t seed() const { return seed_; }
    std::uint64_t counter() const { return counter_; }
    void set_state(std::uint64_t seed, std::uint64_t counter) { seed_ = seed; counter_ = counter; }

    std::uint64_t next_u64() { return bits(seed_, counter_++); }
    double uniform();            // [0, 1)
    double normal();             // N(0, 1)
    std::uint64_t below(std::uint64_t n);  // uniform integer in [0, n)

    // In-place fills; consume numel (uniform) or 2*numel (normal) counter values.
    void fill_uniform(Tensor& t, double lo = 0.0, double hi = 1.0);
    void fill_normal(Tensor& t, double mean = 0.0, double stddev = 1.0);
    // A uniformly random permutation of 0..n-1 (Fisher-Yates).
    std::vector<std::int64_t> permutation(std::int64_t n);
    // An independent generator derived from this one (consumes one value).
    Rng split() { return Rng(next_u64(), 0); }

    static std::uint64_t bits(std::uint64_t seed, std::uint64_t counter);

private:
    std::uint64_t seed_;
    std::uint64_t counter_;
};

// While alive, this thread's fill_uniform and fill_normal of a tensor of `rows` rows (its first
// dimension) draw rows [offset, offset + rows) of the same fill of a `total`-row tensor, and
// advance the counter as that whole fill would. Data-parallel training and evaluation
// (communicator.hpp) open one around a rank's share of a batch, so that every rank draws exactly
// the noise one process draws for those rows - dequantisation, sampling, stochastic estimators -
// whatever the number of ranks, and the generators stay in step on every rank. Fills of any
// other row count and the scalar draws (uniform(), normal(), below()) are unaffected.
//
//   { RowSlice share(256, 256, 512); dq.dequantize(x_rows_256_to_511, rng); }  // rank 1 of 2
class RowSlice {
public:
    RowSlice(std::int64_t offset, std::int64_t rows, std::int64_t total);
    ~RowSlice();
    RowSlice(const RowSlice&) = delete;
    RowSlice& operator=(const RowSlice&) = delete;

private:
    std::int64_t prev_[3];
};

}  // namespace flowlab

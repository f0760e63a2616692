// Threading. oneDNN (GEMM, convolution) runs on its OpenMP pool; element-wise and fused
// kernels run on TBB through parallel_for below. Two pools spinning on two cores fight, so
// small ranges (under `grain` elements per chunk) run inline on the calling thread, and the
// thread count is set once for both pools by set_num_threads().
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace flowlab {

// Runs fn(begin, end) over [0, n) in chunks of at least `grain`; inline when n <= grain or
// when only one thread is configured.
void parallel_for(std::int64_t n, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& fn);

// Runs fn(part, begin, end) over [0, sizes[part]) for every part as one parallel loop, in
// chunks of about `grain` elements: many small tensors (an optimizer's parameters) share the
// threads, where one loop per tensor would leave each too small to split. Inline when the total
// is small or one thread is configured.
void parallel_for_parts(const std::vector<std::int64_t>& sizes, std::int64_t grain,
                        const std::function<void(std::size_t, std::int64_t, std::int64_t)>& fn);

// Runs fn(begin, end) over samples [0, n), one contiguous part per thread, on oneDNN's
// OpenMP pool. For kernels that sit between oneDNN primitives (convolutions, GEMMs): a TBB
// loop there competes for the cores with OpenMP workers still spinning after the last
// primitive (W3 on 2 threads lost ~20% to that); an OpenMP loop reuses them. Inline when
// n * work_per_sample is small or one thread is configured.
void parallel_samples(std::int64_t n, std::int64_t work_per_sample,
                      const std::function<void(std::int64_t, std::int64_t)>& fn);

// Sets the threads of both pools (oneDNN/OpenMP and TBB). 0 = all cores.
void set_num_threads(int n);
int num_threads();

// Elements per chunk below which element-wise kernels stay single-threaded.
constexpr std::int64_t kElementwiseGrain = 1 << 15;

}  // namespace flowlab

#include "flowlab/parallel.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <thread>

#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

namespace flowlab {

namespace {
std::atomic<int> g_threads{0};  // 0 = not set yet: use TBB's default
std::mutex g_mutex;
std::unique_ptr<tbb::global_control> g_control;  // lives until exit, caps TBB's pool
}  // namespace

void set_num_threads(int n) {
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::lock_guard<std::mutex> lock(g_mutex);
    // oneDNN's pool is OpenMP's: this sets it for parallel regions started from this thread.
    omp_set_num_threads(n);
    g_control.reset();
    g_control = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                      static_cast<std::size_t>(n));
    g_threads.store(n, std::memory_order_relaxed);
}

int num_threads() {
    int n = g_threads.load(std::memory_order_relaxed);
    if (n > 0) return n;
    return std::max(1, tbb::this_task_arena::max_concurrency());
}

void parallel_for(std::int64_t n, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<std::int64_t>(grain, 1);
    if (n <= grain || num_threads() == 1) {
        fn(0, n);
        return;
    }
    tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, n, grain),
                      [&](const tbb::blocked_range<std::int64_t>& r) { fn(r.begin(), r.end()); });
}

void parallel_samples(std::int64_t n, std::int64_t work_per_sample,
                      const std::function<void(std::int64_t, std::int64_t)>& fn) {
    if (n <= 0) return;
    const std::int64_t threads = num_threads();
    if (threads <= 1 || n < 2 || n * work_per_sample < 2 * kElementwiseGrain) {
        fn(0, n);
        return;
    }
    const int parts = static_cast<int>(std::min(threads, n));
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int t = 0; t < parts; ++t) fn(n * t / parts, n * (t + 1) / parts);
}

}  // namespace flowlab

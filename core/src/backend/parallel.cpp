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
#include <tbb/task_scheduler_observer.h>

namespace flowlab {

namespace {
std::atomic<int> g_threads{0};  // pool size; 0 = not set yet: TBB's default
std::atomic<bool> g_single{false};
std::mutex g_mutex;
std::unique_ptr<tbb::global_control> g_control;  // lives until exit, caps TBB's pool

// oneDNN is built on OpenMP, whose threads spin after each parallel region and split work
// statically: on a machine where another process holds a core, every region waits for a
// thread that is not running (W1 on 2 threads fell from 185k to 62k samples/s beside one busy
// process, well under its 154k on 1 thread). So oneDNN runs single-threaded inside each
// thread that calls it, and the parallelism comes from TBB's work-stealing pool, which splits
// GEMMs into tiles (backend/onednn.cpp). Every TBB worker sets its OpenMP thread count to one
// as it joins the pool.
class SingleThreadedOpenMP final : public tbb::task_scheduler_observer {
public:
    SingleThreadedOpenMP() { observe(true); }
    void on_scheduler_entry(bool) override { omp_set_num_threads(1); }
};

// Installed when the library loads, on the loading (main) thread.
[[maybe_unused]] const bool g_policy = [] {
    static SingleThreadedOpenMP observer;
    omp_set_num_threads(1);
    return true;
}();
}  // namespace

void set_num_threads(int n) {
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::lock_guard<std::mutex> lock(g_mutex);
    g_control.reset();
    g_control = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                      static_cast<std::size_t>(n));
    g_threads.store(n, std::memory_order_relaxed);
}

namespace {
int pool_size() {
    const int n = g_threads.load(std::memory_order_relaxed);
    return n > 0 ? n : std::max(1, tbb::this_task_arena::max_concurrency());
}
}  // namespace

int num_threads() { return g_single.load(std::memory_order_relaxed) ? 1 : pool_size(); }

void set_single_threaded(bool on) { g_single.store(on, std::memory_order_relaxed); }

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

void parallel_for_parts(const std::vector<std::int64_t>& sizes, std::int64_t grain,
                        const std::function<void(std::size_t, std::int64_t, std::int64_t)>& fn) {
    grain = std::max<std::int64_t>(grain, 1);
    std::int64_t total = 0;
    for (std::int64_t n : sizes) total += std::max<std::int64_t>(n, 0);
    if (total <= grain || num_threads() == 1) {
        for (std::size_t p = 0; p < sizes.size(); ++p)
            if (sizes[p] > 0) fn(p, 0, sizes[p]);
        return;
    }
    struct Chunk {
        std::size_t part;
        std::int64_t begin, end;
    };
    // Reused across calls: the optimizer calls this every step.
    thread_local std::vector<Chunk> reused;
    std::vector<Chunk>& chunks = reused;  // the caller's, also inside the workers' lambda
    chunks.clear();
    for (std::size_t p = 0; p < sizes.size(); ++p)
        for (std::int64_t b = 0; b < sizes[p]; b += grain) chunks.push_back({p, b, std::min(sizes[p], b + grain)});
    // Each chunk homed by its place in the whole: at every call the same elements go to the same
    // thread (an optimizer's state then stays in one core's cache from step to step).
    thread_local std::vector<int> reused_home;
    std::vector<int>& home = reused_home;
    home.clear();
    const int threads = num_threads();
    std::int64_t before = 0;
    for (const Chunk& c : chunks) {
        home.push_back(static_cast<int>((before + (c.end - c.begin) / 2) * threads / total));
        before += c.end - c.begin;
    }
    parallel_tasks_homed(home, [&](std::int64_t i) {
        const Chunk& c = chunks[static_cast<std::size_t>(i)];
        fn(c.part, c.begin, c.end);
    });
}

void parallel_tasks(std::int64_t n, const std::function<void(std::int64_t)>& fn) {
    if (n <= 0) return;
    if (n == 1 || num_threads() == 1) {
        for (std::int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, n, 1),
                      [&](const tbb::blocked_range<std::int64_t>& r) {
                          for (std::int64_t i = r.begin(); i < r.end(); ++i) fn(i);
                      },
                      tbb::simple_partitioner());
}

void parallel_tasks_homed(const std::vector<int>& home, const std::function<void(std::int64_t)>& fn) {
    const auto n = static_cast<std::int64_t>(home.size());
    const int threads = num_threads();
    if (n <= 0) return;
    if (n == 1 || threads == 1) {
        for (std::int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    // One claim flag per task; each of `threads` sweeps claims what it can, in the order: its
    // own tasks, the unhomed, the others' (the sweep that runs on a thread that arrives late
    // finds its own tasks already taken).
    std::unique_ptr<std::atomic<bool>[]> claimed(new std::atomic<bool>[static_cast<std::size_t>(n)]);
    for (std::int64_t i = 0; i < n; ++i) claimed[static_cast<std::size_t>(i)].store(false, std::memory_order_relaxed);
    auto claim = [&](std::int64_t i) {
        auto& c = claimed[static_cast<std::size_t>(i)];
        if (!c.load(std::memory_order_relaxed) && !c.exchange(true, std::memory_order_acq_rel)) fn(i);
    };
    auto sweep = [&] {
        const int slot = std::max(0, tbb::this_task_arena::current_thread_index()) % threads;
        auto owner = [&](std::int64_t i) {
            const int h = home[static_cast<std::size_t>(i)];
            return h < 0 ? -1 : h % threads;
        };
        for (std::int64_t i = 0; i < n; ++i)
            if (owner(i) == slot) claim(i);
        for (std::int64_t i = 0; i < n; ++i)
            if (owner(i) < 0) claim(i);
        for (std::int64_t i = 0; i < n; ++i) claim(i);
    };
    tbb::parallel_for(tbb::blocked_range<int>(0, threads, 1),
                      [&](const tbb::blocked_range<int>& r) {
                          for (int t = r.begin(); t < r.end(); ++t) sweep();
                      },
                      tbb::simple_partitioner());
}

void parallel_samples(std::int64_t n, std::int64_t work_per_sample,
                      const std::function<void(std::int64_t, std::int64_t)>& fn) {
    if (n <= 0) return;
    const std::int64_t threads = num_threads();
    if (threads <= 1 || n < 2 || n * work_per_sample < 2 * kElementwiseGrain) {
        fn(0, n);
        return;
    }
    // Parts of at least kElementwiseGrain work each, more parts than threads so that a
    // thread that is not running does not hold the others up.
    const std::int64_t parts = std::min(n, std::max<std::int64_t>(1, n * work_per_sample / kElementwiseGrain));
    tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, parts, 1),
                      [&](const tbb::blocked_range<std::int64_t>& r) {
                          for (std::int64_t t = r.begin(); t < r.end(); ++t) fn(n * t / parts, n * (t + 1) / parts);
                      },
                      tbb::simple_partitioner());
}

}  // namespace flowlab

#include "flowlab/parallel.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
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

namespace {
std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// parallel_tasks_homed's sections; `after` may be null (no order between the tasks).
void run_homed(const std::vector<int>& home, const std::int64_t* after, const std::function<void(std::int64_t)>& fn) {
    const auto n = static_cast<std::int64_t>(home.size());
    const int threads = num_threads();
    if (n <= 0) return;
    if (n == 1 || threads == 1) {  // in index order, which every order allows
        for (std::int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    const auto N = static_cast<std::size_t>(n), T = static_cast<std::size_t>(threads);
    std::unique_ptr<std::atomic<bool>[]> claimed(new std::atomic<bool>[N]), done(new std::atomic<bool>[N]);
    for (std::size_t i = 0; i < N; ++i) {
        claimed[i].store(false, std::memory_order_relaxed);
        done[i].store(false, std::memory_order_relaxed);
    }
    // Per home slot: whether its thread has joined the section, and when it last took a task.
    std::unique_ptr<std::atomic<bool>[]> joined(new std::atomic<bool>[T]);
    std::unique_ptr<std::atomic<std::int64_t>[]> last_take(new std::atomic<std::int64_t>[T]);
    for (std::size_t t = 0; t < T; ++t) {
        joined[t].store(false, std::memory_order_relaxed);
        last_take[t].store(0, std::memory_order_relaxed);
    }
    std::atomic<std::int64_t> unclaimed{n};
    std::atomic<bool> failed{false};  // a task threw: its exception ends the section
    auto owner = [&](std::int64_t i) {
        const int h = home[static_cast<std::size_t>(i)];
        return h < 0 ? -1 : h % threads;
    };
    auto sweep = [&] {
        const int slot = std::max(0, tbb::this_task_arena::current_thread_index()) % threads;
        const auto S = static_cast<std::size_t>(slot);
        joined[S].store(true, std::memory_order_relaxed);
        last_take[S].store(now_ns(), std::memory_order_relaxed);
        std::int64_t longest = 0;  // this thread's longest task in the section
        auto claim = [&](std::int64_t i) {
            const auto I = static_cast<std::size_t>(i);
            const std::int64_t a = after ? after[I] : -1;
            if (claimed[I].load(std::memory_order_relaxed) ||
                (a >= 0 && !done[static_cast<std::size_t>(a)].load(std::memory_order_acquire)))
                return false;
            if (claimed[I].exchange(true, std::memory_order_acq_rel)) return false;
            unclaimed.fetch_sub(1, std::memory_order_relaxed);
            const std::int64_t t0 = now_ns();
            last_take[S].store(t0, std::memory_order_relaxed);
            try {
                if (after)
                    // A task waited for must not wait itself: isolated, a thread inside it cannot
                    // pick up this section's other sweeps (one of which might wait for it).
                    tbb::this_task_arena::isolate([&] { fn(i); });
                else
                    fn(i);
            } catch (...) {
                failed.store(true, std::memory_order_relaxed);  // the others stop waiting
                throw;
            }
            done[I].store(true, std::memory_order_release);
            longest = std::max(longest, now_ns() - t0);
            return true;
        };
        // Another slot's task is taken only when its thread has not joined, or has taken
        // nothing for twice the time this thread's longest task took (it is most likely not
        // running): its rows are in that thread's cache, and on two cores that share no
        // cache a thread that writes the other's rows costs both more than a short wait.
        auto may_take = [&](std::int64_t i) {
            const int o = owner(i);
            if (o < 0 || o == slot || !joined[static_cast<std::size_t>(o)].load(std::memory_order_relaxed)) return true;
            const std::int64_t patience = std::max<std::int64_t>(20000, 2 * longest);
            return now_ns() - last_take[static_cast<std::size_t>(o)].load(std::memory_order_relaxed) > patience;
        };
        for (int idle = 0; unclaimed.load(std::memory_order_relaxed) > 0 && !failed.load(std::memory_order_relaxed);) {
            bool took = false;
            for (std::int64_t i = 0; i < n; ++i)
                if (owner(i) == slot) took = claim(i) || took;
            for (std::int64_t i = 0; i < n; ++i)
                if (owner(i) < 0) took = claim(i) || took;
            if (!took)
                for (std::int64_t i = 0; i < n && !took; ++i)
                    if (!claimed[static_cast<std::size_t>(i)].load(std::memory_order_relaxed) && may_take(i))
                        took = claim(i);
            if (took)
                idle = 0;
            else if (++idle > 64)
                std::this_thread::yield();
        }
    };
    tbb::parallel_for(tbb::blocked_range<int>(0, threads, 1),
                      [&](const tbb::blocked_range<int>& r) {
                          for (int t = r.begin(); t < r.end(); ++t) sweep();
                      },
                      tbb::simple_partitioner());
}
}  // namespace

void parallel_tasks_homed(const std::vector<int>& home, const std::function<void(std::int64_t)>& fn) {
    run_homed(home, nullptr, fn);
}

void parallel_tasks_homed(const std::vector<int>& home, const std::vector<std::int64_t>& after,
                          const std::function<void(std::int64_t)>& fn) {
    const auto n = static_cast<std::int64_t>(home.size());
    if (static_cast<std::int64_t>(after.size()) != n)
        throw std::invalid_argument("parallel_tasks_homed: " + std::to_string(after.size()) + " orders for " +
                                    std::to_string(n) + " tasks");
    for (std::int64_t i = 0; i < n; ++i)
        if (after[static_cast<std::size_t>(i)] >= i)
            throw std::invalid_argument("parallel_tasks_homed: task " + std::to_string(i) + " after task " +
                                        std::to_string(after[static_cast<std::size_t>(i)]) + ", not an earlier one");
    // Without an order the tasks need no isolation (run_homed).
    const bool ordered = std::any_of(after.begin(), after.end(), [](std::int64_t a) { return a >= 0; });
    run_homed(home, ordered ? after.data() : nullptr, fn);
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

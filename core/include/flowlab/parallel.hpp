// Threading: one pool, TBB's. Element-wise and fused kernels run on it through the loops
// below, and so do GEMMs, split into tiles (each tile one single-threaded oneDNN call); oneDNN's
// own OpenMP threads are not used, because their static split and spin-waiting collapse when
// another process holds a core. Work stealing lets the threads that are running take every
// chunk. Small ranges (under `grain` elements) run inline on the calling thread.
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

// Runs fn(begin, end) over samples [0, n) in contiguous parts of about kElementwiseGrain
// work each (work_per_sample per sample). Inline when n * work_per_sample is small or one
// thread is configured.
void parallel_samples(std::int64_t n, std::int64_t work_per_sample,
                      const std::function<void(std::int64_t, std::int64_t)>& fn);

// Runs fn(i) for every i in [0, n), each as a task of its own (no two grouped), for a few
// uneven pieces of work - say a GEMM's tiles beside smaller products - that the threads share
// by taking the next one as they come free. Inline when one thread is configured.
void parallel_tasks(std::int64_t n, const std::function<void(std::int64_t)>& fn);

// Like parallel_tasks, but task i with home[i] >= 0 runs, when the threads allow, on the pool
// thread whose slot is home[i] % num_threads() (slot 0 is the calling thread): every thread first
// takes the tasks homed on it, then the unhomed ones, and only then another thread's - at once
// when that thread has not joined the section, else once it has taken nothing for twice this
// thread's longest task (at least 20 us) - so a thread that is not running holds nobody up for
// long, and one a little behind keeps its rows. Work split the same way at every step (the rows of
// a batch, say) then stays in the cache of the core that wrote it, which is what two cores that
// do not share a last-level cache need. Which thread ran a task never changes its result.
// Example: two passes over the halves of a batch, each half on the same thread both times:
//     parallel_tasks_homed({0, 1}, [&](std::int64_t h) { forward(h); });
//     parallel_tasks_homed({0, 1}, [&](std::int64_t h) { backward(h); });
void parallel_tasks_homed(const std::vector<int>& home, const std::function<void(std::int64_t)>& fn);

// Like parallel_tasks_homed, with an order between some tasks: task i starts only after task
// after[i] has finished (after[i] < i, or -1 for none; std::invalid_argument otherwise). A
// thread whose own tasks all wait runs others' that are ready, so the section finishes on any
// number of running threads. For a sum continued block by block, each block on the thread
// that holds its rows:
//     parallel_tasks_homed({0, 1}, {-1, 0}, [&](std::int64_t q) { continue_sum(q); });
void parallel_tasks_homed(const std::vector<int>& home, const std::vector<std::int64_t>& after,
                          const std::function<void(std::int64_t)>& fn);

// Sets the pool's size, and the threads in use, to n (0 = all cores).
void set_num_threads(int n);
// The threads parallel sections use now.
int num_threads();
// While on, every parallel section runs inline on the calling thread; the pool keeps its size
// and its threads sleep. A cheap switch, which the training loop's thread governor flips when
// one thread is measured faster (a busy machine).
void set_single_threaded(bool on);

// Elements per chunk below which element-wise kernels stay single-threaded.
constexpr std::int64_t kElementwiseGrain = 1 << 15;

}  // namespace flowlab

// The thread pool's loops: every index runs exactly once, whatever the thread count, and the
// homed tasks (parallel_tasks_homed) whatever their homes.
#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <vector>

#include "flowlab/parallel.hpp"

using namespace flowlab;

namespace {

// Runs `homes` through parallel_tasks_homed and returns how many times each task ran.
std::vector<int> run_counts(const std::vector<int>& homes) {
    std::unique_ptr<std::atomic<int>[]> runs(new std::atomic<int>[homes.size()]);
    for (std::size_t i = 0; i < homes.size(); ++i) runs[i].store(0);
    parallel_tasks_homed(homes, [&](std::int64_t i) {
        // Uneven work, so that the threads finish their own tasks at different times and take
        // each other's.
        volatile double x = 0.0;
        for (std::int64_t j = 0; j < 2000 * (i % 7 + 1); ++j) x = x + 1.0;
        runs[static_cast<std::size_t>(i)].fetch_add(1);
    });
    std::vector<int> out;
    for (std::size_t i = 0; i < homes.size(); ++i) out.push_back(runs[i].load());
    return out;
}

}  // namespace

TEST_CASE("parallel_tasks_homed runs every task once, on any homes and thread counts", "[parallel]") {
    const std::vector<std::vector<int>> cases = {
        {},                                  // nothing to do
        {0},                                 // one task runs inline
        {0, 0, 1, 1},                        // halves of a batch
        {-1, -1, -1},                        // no homes: plain tasks
        {0, 1, -1, 3, 7, -1, 0, 2, 5, 1},    // homes past the thread count wrap around
        std::vector<int>(200, 1),            // everything on one thread's list: the others take it
    };
    for (int threads : {1, 2, 3}) {
        set_num_threads(threads);
        for (std::size_t c = 0; c < cases.size(); ++c) {
            INFO(threads << " threads, case " << c);
            for (int repeat = 0; repeat < 20; ++repeat)
                CHECK(run_counts(cases[c]) == std::vector<int>(cases[c].size(), 1));
        }
    }
    set_num_threads(0);
}

TEST_CASE("parallel_tasks_homed with an order starts each task after its predecessor", "[parallel]") {
    // Chains across the homes (a sum continued block by block on alternate threads), tasks
    // without an order between them, a chain homed all on one thread, a long chain.
    struct Case {
        std::vector<int> home;
        std::vector<std::int64_t> after;
    };
    std::vector<Case> cases = {
        {{0, 0, 1, 1, 0, 1}, {-1, -1, 0, 1, 2, 3}},
        {{-1, 1, 0, 1, 2}, {-1, 0, -1, 2, 1}},
        {{1, 1, 1, 1}, {-1, 0, 1, 2}},
    };
    Case longest;
    for (int i = 0; i < 64; ++i) {
        longest.home.push_back(i % 3);
        longest.after.push_back(i - 1);
    }
    cases.push_back(longest);
    for (int threads : {1, 2, 3}) {
        set_num_threads(threads);
        for (std::size_t c = 0; c < cases.size(); ++c) {
            const Case& k = cases[c];
            for (int repeat = 0; repeat < 20; ++repeat) {
                std::atomic<int> clock{0};
                std::unique_ptr<std::atomic<int>[]> begin(new std::atomic<int>[k.home.size()]);
                std::unique_ptr<std::atomic<int>[]> end(new std::atomic<int>[k.home.size()]);
                std::unique_ptr<std::atomic<int>[]> runs(new std::atomic<int>[k.home.size()]);
                for (std::size_t i = 0; i < k.home.size(); ++i) runs[i].store(0);
                parallel_tasks_homed(k.home, k.after, [&](std::int64_t i) {
                    begin[static_cast<std::size_t>(i)].store(clock.fetch_add(1));
                    volatile double x = 0.0;
                    for (std::int64_t j = 0; j < 1000 * (i % 5 + 1); ++j) x = x + 1.0;
                    runs[static_cast<std::size_t>(i)].fetch_add(1);
                    end[static_cast<std::size_t>(i)].store(clock.fetch_add(1));
                });
                INFO(threads << " threads, case " << c);
                for (std::size_t i = 0; i < k.home.size(); ++i) {
                    INFO("task " << i);
                    CHECK(runs[i].load() == 1);
                    if (k.after[i] >= 0) CHECK(end[static_cast<std::size_t>(k.after[i])].load() < begin[i].load());
                }
            }
        }
    }
    // A task that throws ends the section with its exception, also for the tasks that wait for
    // it (which then never run).
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        std::atomic<int> later{0};
        CHECK_THROWS_AS(parallel_tasks_homed({0, 1, 1, 0}, {-1, 0, 1, 2},
                                             [&](std::int64_t i) {
                                                 if (i == 1) throw std::runtime_error("task 1");
                                                 if (i > 1) later.fetch_add(1);
                                             }),
                        std::runtime_error);
        CHECK(later.load() == 0);
    }
    set_num_threads(2);
    CHECK_THROWS_AS(parallel_tasks_homed({0, 1}, {-1, 1}, [](std::int64_t) {}), std::invalid_argument);
    CHECK_THROWS_AS(parallel_tasks_homed({0, 1}, {-1}, [](std::int64_t) {}), std::invalid_argument);
    set_num_threads(0);
}

TEST_CASE("parallel_tasks_homed nests inside itself and inside the other loops", "[parallel]") {
    set_num_threads(2);
    std::atomic<int> inner{0};
    parallel_for(8, 1, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t i = b; i < e; ++i)
            parallel_tasks_homed({0, 1, -1}, [&](std::int64_t) {
                parallel_tasks_homed({1, 0}, [&](std::int64_t) { inner.fetch_add(1); });
            });
    });
    set_num_threads(0);
    CHECK(inner.load() == 8 * 3 * 2);
}

TEST_CASE("parallel_for_parts covers every element of every part once", "[parallel]") {
    const std::vector<std::int64_t> sizes = {0, 5, 100000, 1, 70000, 0, 3};
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        std::vector<std::vector<int>> seen;
        for (std::int64_t n : sizes) seen.emplace_back(static_cast<std::size_t>(n), 0);
        parallel_for_parts(sizes, 4096, [&](std::size_t p, std::int64_t b, std::int64_t e) {
            for (std::int64_t i = b; i < e; ++i) ++seen[p][static_cast<std::size_t>(i)];
        });
        for (std::size_t p = 0; p < sizes.size(); ++p) {
            INFO(threads << " threads, part " << p);
            CHECK(seen[p] == std::vector<int>(static_cast<std::size_t>(sizes[p]), 1));
        }
    }
    set_num_threads(0);
}

// Ranks as threads of one process (communicator.hpp: ReplicaGroup).
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>

#include "flowlab/communicator.hpp"

namespace flowlab {

namespace {
using Clock = std::chrono::steady_clock;
}

struct ReplicaGroup::State {
    explicit State(int n) : size(n), ptrs(static_cast<std::size_t>(n)), vals(static_cast<std::size_t>(n)) {}

    // A reusable barrier that a failed member can break: every waiter then throws.
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex);
        if (aborted) throw DistributedError(abort_message);
        const std::uint64_t gen = generation;
        if (++arrived == size) {
            arrived = 0;
            ++generation;
            cv.notify_all();
            return;
        }
        cv.wait(lock, [&] { return generation != gen || aborted; });
        if (generation == gen) throw DistributedError(abort_message);
    }

    const int size;
    std::mutex mutex;
    std::condition_variable cv;
    int arrived = 0;
    std::uint64_t generation = 0;
    bool aborted = false;
    int failed_rank = -1;
    std::string abort_message;
    std::vector<void*> ptrs;             // each member's buffer in the collective under way
    std::vector<std::uint64_t> vals;     // allgather's values
};

namespace {

// One member. Reductions are summed in rank order, element by element, each member summing
// its own slice of the buffer into every member's buffer: the same bits everywhere, and the
// work split across the replicas' threads.
class Member final : public Communicator {
public:
    Member(ReplicaGroup::State& g, int rank) : g_(g), rank_(rank) {}

    int rank() const override { return rank_; }
    int size() const override { return g_.size; }
    int node_size() const override { return g_.size; }  // one process: the replicas share its cores

    void allreduce_sum(float* d, std::size_t n) override { sum(d, n); }
    void allreduce_sum(double* d, std::size_t n) override { sum(d, n); }

    void broadcast(void* data, std::size_t bytes, int root) override {
        if (root < 0 || root >= g_.size) throw DistributedError("broadcast from rank " + std::to_string(root) + " of " + std::to_string(g_.size));
        g_.ptrs[idx()] = data;
        g_.arrive_and_wait();
        if (rank_ != root && bytes > 0) std::memcpy(data, g_.ptrs[static_cast<std::size_t>(root)], bytes);
        g_.arrive_and_wait();
    }

    std::vector<std::uint64_t> allgather(std::uint64_t v) override {
        g_.vals[idx()] = v;
        g_.arrive_and_wait();
        std::vector<std::uint64_t> all = g_.vals;
        g_.arrive_and_wait();
        return all;
    }

    void barrier() override { g_.arrive_and_wait(); }

    // Deferred to wait(): the replicas finish their backward passes at about the same time, so
    // one meeting at the end costs less than one per bucket in the middle of the pass.
    Ticket start_allreduce_sum(float* d, std::size_t n) override {
        pending_.push_back({++issued_, d, n});
        return issued_;
    }
    void wait(Ticket t) override {
        while (!pending_.empty() && pending_.front().ticket <= t) {
            const Pending p = pending_.front();
            pending_.pop_front();
            sum(p.data, p.n);
        }
    }

    Stats stats() const override { return stats_; }

private:
    struct Pending {
        Ticket ticket;
        float* data;
        std::size_t n;
    };

    std::size_t idx() const { return static_cast<std::size_t>(rank_); }

    template <class T>
    void sum(T* d, std::size_t n) {
        const auto t0 = Clock::now();
        g_.ptrs[idx()] = d;
        g_.arrive_and_wait();
        const std::size_t m = static_cast<std::size_t>(g_.size);
        const std::size_t lo = n * idx() / m, hi = n * (idx() + 1) / m;
        for (std::size_t i = lo; i < hi; ++i) {
            T s = static_cast<const T*>(g_.ptrs[0])[i];
            for (std::size_t q = 1; q < m; ++q) s += static_cast<const T*>(g_.ptrs[q])[i];
            for (std::size_t q = 0; q < m; ++q) static_cast<T*>(g_.ptrs[q])[i] = s;
        }
        g_.arrive_and_wait();
        stats_.busy_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
        ++stats_.reductions;
        stats_.bytes += n * sizeof(T);
    }

    ReplicaGroup::State& g_;
    const int rank_;
    Ticket issued_ = 0;
    std::deque<Pending> pending_;
    Stats stats_;
};

}  // namespace

ReplicaGroup::ReplicaGroup(int size) {
    if (size < 1) throw DistributedError("a replica group needs at least one member, not " + std::to_string(size));
    state_ = std::make_unique<State>(size);
    for (int r = 0; r < size; ++r) members_.push_back(std::make_unique<Member>(*state_, r));
}

ReplicaGroup::~ReplicaGroup() = default;

int ReplicaGroup::size() const { return state_->size; }

Communicator& ReplicaGroup::member(int rank) { return *members_.at(static_cast<std::size_t>(rank)); }

void ReplicaGroup::abort(int rank, const std::string& why) {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->aborted) return;  // the first failure is the one worth naming
    state_->aborted = true;
    state_->failed_rank = rank;
    state_->abort_message = "replica " + std::to_string(rank) + " failed: " + why;
    state_->cv.notify_all();
}

int ReplicaGroup::failed_rank() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->failed_rank;
}

}  // namespace flowlab

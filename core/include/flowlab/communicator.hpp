// Communicator: the processes of a data-parallel run, as the trainer and evaluation see them.
//
// A run on N processes ("ranks") trains one model: every rank holds the same parameters, takes
// its share of every global batch, and the gradients are summed across ranks before clipping
// and the optimizer step (docs/DISTRIBUTED.md). This interface is all the core knows of the
// transport: the MPI implementation lives in its own library (flowlab/mpi.hpp, linked by the
// flowlab program only), so that the core, plugins and embedding programs never see mpi.h.
// One process is SingleProcess below, where every collective is the identity.
//
// Every collective must be called by every rank, in the same order, with the same sizes.
// Implementations fail instead of waiting forever: a peer that crashed or hangs ends the call
// with a DistributedError (or ends the job) within the implementation's timeout.
//
// A transport of your own (e.g. for a test, or another launcher):
//
//   class Loopback : public flowlab::Communicator {   // one rank, like SingleProcess
//   public:
//       int rank() const override { return 0; }
//       int size() const override { return 1; }
//       void allreduce_sum(float*, std::size_t) override {}
//       void allreduce_sum(double*, std::size_t) override {}
//       void broadcast(void*, std::size_t, int) override {}
//       std::vector<std::uint64_t> allgather(std::uint64_t v) override { return {v}; }
//       void barrier() override {}
//       Ticket start_allreduce_sum(float*, std::size_t) override { return ++n_; }
//       void wait(Ticket) override {}
//   private:
//       Ticket n_ = 0;
//   };
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flowlab/errors.hpp"

namespace flowlab {

// A data-parallel run failed as a whole: a rank crashed or hung past the timeout, or the ranks'
// parameters diverged. The flowlab program exits with code 11.
class DistributedError : public Error {
public:
    using Error::Error;
};

class Communicator {
public:
    virtual ~Communicator() = default;

    virtual int rank() const = 0;
    virtual int size() const = 0;
    // The ranks on this machine (they share its cores): the default thread count of a rank is
    // the machine's cores divided by this.
    virtual int node_size() const { return 1; }

    // Blocking collectives. allreduce_sum leaves the elementwise sum over ranks in every rank's
    // buffer, the same bits on every rank.
    virtual void allreduce_sum(float* data, std::size_t n) = 0;
    virtual void allreduce_sum(double* data, std::size_t n) = 0;
    virtual void broadcast(void* data, std::size_t bytes, int root) = 0;
    // Every rank's value, by rank.
    virtual std::vector<std::uint64_t> allgather(std::uint64_t value) = 0;
    virtual void barrier() = 0;

    // Asynchronous in-place sum: returns at once; the buffer must stay untouched until wait()
    // returns for its ticket. Reductions run one after the other in the order they were
    // started, overlapping the caller's computation (the gradient buckets of a backward pass).
    using Ticket = std::uint64_t;
    virtual Ticket start_allreduce_sum(float* data, std::size_t n) = 0;
    virtual void wait(Ticket ticket) = 0;

    // Where the run is, for the message of a fault (a peer that crashed or hangs): the training
    // step, and what the user can do next (e.g. the resume command).
    virtual void set_step(std::int64_t) {}
    virtual void set_fault_hint(const std::string&) {}
    // Polled by the transport while it waits: a set flag (SIGINT/SIGTERM) that leaves a
    // reduction waiting for a silent peer is worth a line saying which.
    virtual void set_stop_flag(const volatile int*) {}

    // The transport's own account: time with a reduction in flight (overlapping computation or
    // not), reductions and bytes reduced, since the start.
    struct Stats {
        double busy_seconds = 0.0;
        std::uint64_t reductions = 0;
        std::uint64_t bytes = 0;
    };
    virtual Stats stats() const { return {}; }
};

// One process: every collective is the identity.
class SingleProcess final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void allreduce_sum(float*, std::size_t) override {}
    void allreduce_sum(double*, std::size_t) override {}
    void broadcast(void*, std::size_t, int) override {}
    std::vector<std::uint64_t> allgather(std::uint64_t value) override { return {value}; }
    void barrier() override {}
    Ticket start_allreduce_sum(float*, std::size_t) override { return ++tickets_; }
    void wait(Ticket) override {}

private:
    Ticket tickets_ = 0;
};

// Ranks as threads of one process (train.replicas: each replica a copy of the model on its own
// thread, docs/DISTRIBUTED.md). Collectives meet at a barrier; sums are in rank order, so every
// member gets the same bits. A member that fails calls abort(), which ends every collective
// of the others, now and later, with a DistributedError naming it, instead of a wait forever.
//
//   flowlab::ReplicaGroup group(2);
//   std::vector<std::thread> threads;
//   for (int r = 0; r < 2; ++r)
//       threads.emplace_back([&, r] {
//           flowlab::TrainOptions o;
//           o.comm = &group.member(r);
//           try { flowlab::train(experiments[r], o); }
//           catch (const std::exception& e) { group.abort(r, e.what()); }
//       });
//   for (auto& t : threads) t.join();
class ReplicaGroup {
public:
    explicit ReplicaGroup(int size);
    ~ReplicaGroup();
    ReplicaGroup(const ReplicaGroup&) = delete;
    ReplicaGroup& operator=(const ReplicaGroup&) = delete;

    int size() const;
    Communicator& member(int rank);
    void abort(int rank, const std::string& why);
    // The rank whose abort() came first, or -1.
    int failed_rank() const;

    struct State;

private:
    std::unique_ptr<State> state_;
    std::vector<std::unique_ptr<Communicator>> members_;
};

// Rank `rank`'s contiguous share of n rows split over `size` ranks as evenly as possible (the
// first n % size ranks take one more).
struct RowShare {
    std::int64_t offset = 0, rows = 0;
};
inline RowShare row_share(std::int64_t n, int rank, int size) {
    const std::int64_t q = n / size, r = n % size;
    return {rank * q + (rank < r ? rank : r), q + (rank < r ? 1 : 0)};
}

// Broadcasts a string from `root` (its length first).
std::string broadcast_string(Communicator& comm, const std::string& s, int root = 0);

}  // namespace flowlab

// Data-parallel runs over MPI: the Communicator (communicator.hpp) that `mpirun -np N flowlab run`
// uses. It lives in its own static library, flowlab_mpi, linked into the flowlab program only:
// libflowlab, the plugins and programs that embed flowlab never link libmpi nor see mpi.h.
//
// Every MPI call is made on one communication thread that this runtime owns (it initialises MPI
// with MPI_THREAD_FUNNELED and finalises it). The training thread hands it reductions and
// waits; the thread posts non-blocking operations (a ring of point-to-point messages for the
// sums, non-blocking collectives for the rest) and polls them, so that (1) the gradient buckets
// of a backward pass are summed while the pass goes on, (2) no wait lasts forever: a reduction
// that a peer has not joined within the timeout ends the job with a message naming that rank and
// the step, and (3) the ranks tell each other of a failure, so that an error every rank meets is
// printed once. The header keeps mpi.h out: the implementation is in runtime.cpp.
//
//   if (flowlab::mpi::launched()) {
//       auto mpi = flowlab::mpi::Runtime::start();          // MPI_Init_thread on its thread
//       ... train with *mpi as the TrainOptions' communicator ...
//       return mpi->finish(exit_code);                        // barrier, MPI_Finalize
//   }
#pragma once

#include <cstdlib>
#include <memory>
#include <string>

#include "flowlab/communicator.hpp"

namespace flowlab::mpi {

// Whether an MPI launcher started this process: Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE,
// PMIx-based launchers PMIX_RANK, MPICH's Hydra and Slurm's PMI PMI_SIZE. Only then does flowlab
// initialise MPI; otherwise it runs as one process, as always.
inline bool launched() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
        if (std::getenv(v)) return true;
    return false;
}

// Another rank failed and reported it (that rank prints the error); this one only ends.
class PeerFailed : public DistributedError {
public:
    PeerFailed(const std::string& what, int rank, int exit_code)
        : DistributedError(what), rank_(rank), exit_code_(exit_code) {}
    int rank() const { return rank_; }
    int exit_code() const { return exit_code_; }

private:
    int rank_, exit_code_;
};

class Runtime final : public Communicator {
public:
    // Initialises MPI on the communication thread. Throws Error when MPI cannot start.
    static std::unique_ptr<Runtime> start();
    ~Runtime() override;
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;

    int rank() const override;
    int size() const override;
    int node_size() const override;
    void allreduce_sum(float* data, std::size_t n) override;
    void allreduce_sum(double* data, std::size_t n) override;
    void broadcast(void* data, std::size_t bytes, int root) override;
    std::vector<std::uint64_t> allgather(std::uint64_t value) override;
    void barrier() override;
    Ticket start_allreduce_sum(float* data, std::size_t n) override;
    void wait(Ticket ticket) override;
    void set_step(std::int64_t step) override;
    void set_fault_hint(const std::string& hint) override;
    void set_stop_flag(const volatile int* flag) override;
    Stats stats() const override;

    // How long a collective may wait for a peer before the job is aborted (train.distributed.
    // timeout_seconds; 300 s until a config sets it).
    void set_timeout(double seconds);

    // Ends this process after an error, the way a job should end. The ranks tell each other
    // (a message on a communicator of its own, so it never meets a training collective); the
    // lowest rank with a given error prints it - an error that every rank meets (a config
    // error) is printed once, by rank 0 - and exits with `exit_code`, after which the launcher
    // ends the others. `message` is the whole line to print. A PeerFailed error prints nothing
    // and exits with the failed rank's code. Never returns.
    [[noreturn]] void fail(int exit_code, const std::string& message, bool peer_failed = false);

    // The orderly end of every rank: a barrier (with the timeout), then MPI_Finalize. Returns
    // exit_code.
    int finish(int exit_code);

    struct Impl;

private:
    Runtime();
    std::unique_ptr<Impl> impl_;
};

}  // namespace flowlab::mpi

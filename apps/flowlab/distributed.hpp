// The processes of this flowlab job: one, or the ranks of a data-parallel run when an MPI
// launcher started it (`mpirun -np N flowlab run CONFIG`; docs/DISTRIBUTED.md). main() starts
// and finishes it; the commands that run on every rank (run, eval) use communicator(), every
// other command runs on rank 0 alone.
#pragma once

#include <string>

#include "flowlab/communicator.hpp"
#include "flowlab/params.hpp"

namespace flowlab::cli {

// Initialises MPI when an MPI launcher started this process (mpi::launched()); otherwise, or
// when there is one rank, nothing. Throws Error when MPI cannot start, or when this flowlab
// was built without MPI but started by a launcher.
void start_distributed();
// The job's ranks (a SingleProcess when not under MPI).
Communicator& communicator();
// Whether this process prints for the job: rank 0, or a plain process.
bool is_root();
// Several ranks.
bool distributed();
// Takes train.distributed.timeout_seconds of the experiment being run.
void configure_distributed(const Params& config);
// The thread count of a command that evaluates or samples a trained model: train.threads when
// the config sets one, else the machine's cores divided by the ranks on it (all of them in one
// process), as a training run chooses.
void set_command_threads(const Params& config);
// The end of the job on this rank: for a command that ran on every rank, a barrier first, so
// that no rank exits (and has the launcher end the others) while rank 0 still writes. Returns
// exit_code.
int finish_distributed(int exit_code, bool collective);
// Ends this rank after an error: `line` is printed once for the job (see mpi::Runtime::fail).
// Never returns. peer: the error is another rank's failure, printed there.
[[noreturn]] void fail_distributed(int exit_code, const std::string& line, bool peer);
// Whether `e` reports another rank's failure, and that rank's exit code.
bool peer_failure(const std::exception& e, int& exit_code);

}  // namespace flowlab::cli

// train.replicas: data-parallel training on threads of one process (docs/DISTRIBUTED.md,
// "Replicas: data parallel in one process"). Each replica is a copy of the model on its own
// thread, taking its share of every batch; gradients are summed across them before clipping
// and the optimizer step, as across the ranks of an MPI run.
#pragma once

#include <functional>

#include "flowlab/communicator.hpp"
#include "flowlab/trainer.hpp"
#include "session.hpp"

namespace flowlab::cli {

// train.replicas of the session's config, checked against the job: a job of several MPI ranks
// takes 1 (each rank is a process of its own already).
int replicas_of(const Params& config, bool under_mpi);

// Runs work(experiment, communicator) for every replica: rank 0 on this thread with the
// session's experiment, the others on threads of their own with copies (Session::replica).
// Returns rank 0's result. A replica that throws ends the others' collectives at once, and
// its exception is rethrown here after every thread has finished.
TrainSummary run_replicas(Session& s, int replicas, const std::function<TrainSummary(Experiment&, Communicator&)>& work);

}  // namespace flowlab::cli

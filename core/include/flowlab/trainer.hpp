// The MLE trainer: the training loop (gradient clipping, schedules, EMA, non-finite-step
// policy, early stopping), checkpoints and exact resume. Implemented in
// core/src/train/trainer.cpp (the loop) and train/trainer_checkpoints.cpp (its checkpoints).
// What a trainer's callers use with it comes along: evaluate() (evaluate.hpp) and
// load_weights() (checkpoint.hpp); a run directory's files, run_checkpoints() among them, are
// in run_dir.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "flowlab/builder.hpp"
#include "flowlab/checkpoint.hpp"
#include "flowlab/communicator.hpp"
#include "flowlab/evaluate.hpp"

namespace flowlab {

struct TrainOptions {
    std::string run_dir;             // metrics, checkpoints and summary go here ("" = nowhere)
    bool quiet = false;              // no progress output
    bool progress_line = false;      // one updating terminal line instead of log lines
    std::int64_t steps_override = -1;
    std::function<void(const std::string&)> log;  // progress sink (default: stderr)
    bool final_eval = true;          // evaluate on the test split at the end
    // Called after every step with the number of steps done (benchmarks time windows with it).
    std::function<void(std::int64_t)> on_step;
    bool resume = false;             // continue from run_dir's latest checkpoint
    std::int64_t stop_after = -1;    // stop with a checkpoint after this many steps of this call
    // Polled after every step; when it becomes non-zero the current step finishes, a
    // checkpoint is written and train() returns with interrupted = true.
    const volatile int* stop_flag = nullptr;
    // Data-parallel training (docs/DISTRIBUTED.md): the ranks of the run, each of which calls
    // train() with its own. nullptr (or one rank) = one process, exactly as without it. Rank 0
    // logs and writes the run directory; every rank returns the same summary.
    Communicator* comm = nullptr;
};

struct TrainSummary {
    std::int64_t steps = 0;          // steps done in total (including before a resume)
    std::int64_t start_step = 0;     // where this call started (after a resume)
    double final_train_loss = 0.0;   // mean over the last logging window, nats
    double test_nll = 0.0;           // nats per sample
    double test_bpd = 0.0;           // bits per dimension (dequantisation terms included)
    double samples_per_s = 0.0;      // training throughput
    double train_seconds = 0.0;        // this call's training steps (from start_step)
    double total_train_seconds = NAN;  // every call's, as checkpoints carry it; NaN: unknown
    std::int64_t skipped_steps = 0;  // non-finite steps skipped, over the whole run
    bool interrupted = false;        // stopped by stop_flag or stop_after before the last step
    bool early_stopped = false;
    double best_valid_nll = 0.0;
    std::int64_t best_step = -1;
    // The thread governor (train.adaptive_threads): the share of this call's steps that ran on
    // one thread, and how often the chosen setting changed.
    double single_thread_share = 0.0;
    int thread_switches = 0;
    // Wall time of this call's run-time layer checks (train.check_layers), next to train_seconds.
    double layer_check_seconds = 0.0;
    // Data-parallel runs: the ranks, the gradient buckets, and per step of this call the time a
    // reduction was in flight (overlapping the backward pass or not) and the time the step
    // waited for reductions after its backward pass (what the overlap did not hide).
    int ranks = 1;
    int gradient_buckets = 0;
    double comm_seconds_per_step = 0.0;
    double comm_wait_seconds_per_step = 0.0;
};

TrainSummary train(Experiment& exp, const TrainOptions& opt);

// Whether `run_dir` holds a finished run: its summary.json is written and the checkpoint a
// resume would load is at train.steps (or early-stopped). `run --resume` then changes nothing.
// Read-only.
bool run_finished(Experiment& exp, const std::string& run_dir);

}  // namespace flowlab

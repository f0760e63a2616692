// SIGINT and SIGTERM as a request to stop training: TrainOptions::stop_flag set from a thread
// that waits for the two signals, never from a handler that interrupts the computation.
//
// Why: the f32 GEMM kernels of oneDNN 2.6 (Debian 12's) point the stack pointer into a heap
// workspace while they run, and Linux writes a signal's frame at the stack pointer of the
// thread it interrupts. A handler that lands in one of those kernels overwrites heap memory
// (the process aborts later in free(), "corrupted size vs. prev_size"; one stop in five did on
// the quickstart). So route_stop_signals() blocks both signals in the calling thread - every
// thread started after it inherits the block - and starts one thread that takes them with
// sigwait: no thread that computes is ever interrupted by them.
//
// Call it first in main, before anything starts a thread (TBB, oneDNN, MPI). Outside a
// StopSignalScope the signals keep the disposition the process started with (end it, or be
// ignored); inside one they set the scope's flag, a second time too.
//
//   #include "flowlab/stop_signals.hpp"
//   #include "flowlab/trainer.hpp"
//
//   int main() {
//       flowlab::route_stop_signals();
//       flowlab::Experiment exp = ...;              // built from a config
//       volatile int stop = 0;
//       flowlab::TrainOptions opt;
//       opt.stop_flag = &stop;
//       flowlab::StopSignalScope scope(&stop);      // Ctrl-C: finish the step, checkpoint
//       const flowlab::TrainSummary s = flowlab::train(exp, opt);
//       return s.interrupted ? 10 : 0;
//   }
#pragma once

namespace flowlab {

// Idempotent; thread-safe. Threads that already exist keep their signal mask.
void route_stop_signals();

class StopSignalScope {
public:
    // Routes the signals if that was not done yet (then only threads started from here on are
    // protected). Scopes nest: the innermost flag is set.
    explicit StopSignalScope(volatile int* flag);
    ~StopSignalScope();
    StopSignalScope(const StopSignalScope&) = delete;
    StopSignalScope& operator=(const StopSignalScope&) = delete;

private:
    volatile int* previous_;
};

}  // namespace flowlab

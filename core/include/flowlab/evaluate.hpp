// Evaluation: the mean NLL and bits/dim of a data split under an experiment's flow (a run's
// periodic and final evaluations, `flowlab eval`). Implemented in core/src/train/evaluate.cpp;
// trainer.hpp includes this header.
#pragma once

#include <cstdint>
#include <string>

#include "flowlab/builder.hpp"

namespace flowlab {

// Mean NLL (nats) and bits/dim of `split` ("test", "valid", "train") under the flow. With a
// stochastic dequantizer (uniform, variational) and importance_samples K > 1 the bound is the
// importance-weighted one: log (1/K) sum_k exp(log p(x + u_k) - log q(u_k | x)).
// nll: nats per example of the data as given (for integer data: the dequantization bound,
// an importance-weighted one with K > 1 samples); bpd = nll / (D ln 2); dequantized_nll:
// -log p(x') of the dequantized values (equal to nll without a dequantizer).
class Communicator;

struct EvalResult {
    double nll = 0.0, bpd = 0.0, dequantized_nll = 0.0;
    std::int64_t n = 0;
};
// With a communicator of several ranks every rank calls it, each takes its rows of every batch
// (drawing the dequantisation noise one process draws for them) and every rank returns the
// one-process result, up to the order of the sums.
EvalResult evaluate(Experiment& exp, const std::string& split, std::int64_t batch_size,
                    int importance_samples = 1, Communicator* comm = nullptr);

}  // namespace flowlab

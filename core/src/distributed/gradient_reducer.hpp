// GradientReducer: sums the gradients of a model's parameters over the ranks of a data-parallel
// run, in buckets, while the backward pass is still running (as Horovod and PyTorch's DDP do).
//
// The parameters are grouped into buckets of about `bucket_bytes`, at first from the last
// parameter to the first - roughly the order in which a backward pass completes them - and
// after the first step in the order the pass really completed them (rank 0's order, so that
// every rank has the same buckets), the parameters it never reached last: one of those in an
// early bucket would hold every later bucket back to the end of the pass. The backward pass reports each
// parameter as its gradient completes (Var::backward(LeafGradReady)); once every parameter of a
// bucket is in, its gradients are copied into the bucket's buffer and the Communicator starts
// summing it in the background. Buckets start strictly in index order, so every rank starts the
// same reductions in the same order whatever its timing. finish() starts what is left (the
// parameters that the pass did not reach), sums the small `control` vector after them, waits,
// and writes the sums back: a parameter gets a gradient when any rank had one (zeros stand in
// for the others), and none when no rank had one, exactly as one process on the whole batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "flowlab/autodiff.hpp"
#include "flowlab/communicator.hpp"

namespace flowlab::distributed {

class GradientReducer {
public:
    // overlap = false: nothing starts before finish() (one reduction after the pass, to
    // measure what the overlap gains).
    GradientReducer(Communicator& comm, std::vector<Var> params, std::size_t bucket_bytes, bool overlap);

    // Before each backward pass.
    void begin();
    // The backward pass's LeafGradReady: a leaf that is not one of the parameters is ignored.
    void on_ready(const Node& leaf);
    // After the pass: see above. `control` is summed over the ranks too (after the gradients).
    void finish(std::vector<double>& control);

    std::size_t buckets() const { return buckets_.size(); }
    // Seconds finish() waited for reductions the backward pass had not hidden, this step.
    double last_wait_seconds() const { return last_wait_; }

private:
    struct Bucket {
        std::vector<std::size_t> params;   // indices into params_
        std::vector<std::size_t> offsets;  // of each in buf
        std::vector<float> buf;  // allocated on first use
        std::size_t floats = 0;
        std::size_t ready = 0;
        Communicator::Ticket ticket = 0;
        bool started = false;
        // A bucket of one parameter is summed in that parameter's gradient itself (no copies):
        // a complete leaf's gradient is its own, and nothing writes it again in the pass.
        bool in_place = false;
        // Each gradient's storage when the bucket started: finish() checks that the pass did
        // not replace one afterwards (a reduction writing into freed memory, or a sum missing
        // a late contribution).
        std::vector<const void*> storage;
        // An in-place bucket's gradient, held until finish(): whatever the pass does, the
        // reduction never writes into freed memory.
        Tensor held;
    };
    void mark(std::size_t param);
    void start_ready_buckets();
    // Buckets of about bucket_bytes over the f32 parameters in `order`.
    void layout(const std::vector<std::size_t>& order);

    Communicator& comm_;
    std::vector<Var> params_;
    bool overlap_;
    std::vector<Bucket> buckets_;
    std::vector<std::size_t> bucket_of_;        // params_ index -> bucket (f32 parameters)
    std::vector<std::size_t> f64_params_;       // summed with the control vector
    std::unordered_map<const Node*, std::size_t> index_;
    std::vector<char> reported_;
    std::vector<std::size_t> completed_;  // this pass's parameters in the order they completed
    std::size_t bucket_floats_ = 1;
    bool relaid_ = false;
    std::size_t next_ = 0;  // the next bucket to start
    double last_wait_ = 0.0;
};

}  // namespace flowlab::distributed

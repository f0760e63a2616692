// The built form of a flow's graph: steps in topological order over numbered tensor slots, the
// outputs that form the latent and their base distributions. Nothing is looked up by name while
// it runs. Internal to the core: the builder fills it, Flow runs it, the layer check walks it.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "flowlab/bijector.hpp"
#include "flowlab/conditioner.hpp"
#include "flowlab/distribution.hpp"

namespace flowlab {

class Network;

// Split: the multi-scale node. Output 0 keeps the first `keep` channels (features), output 1 is
// the rest. An optional learned prior (Glow's "split prior") makes the factored part
// conditionally Gaussian given the kept part: z_f = (x_f - mu(x_k)) * exp(-log_sigma(x_k)), with
// mu and log_sigma from a conditioner whose last layer starts at zero (the prior starts as N(0, I)).
class SplitNode : public Module {
public:
    SplitNode(const Shape& in, std::int64_t keep, std::unique_ptr<Conditioner> prior);
    // x -> (kept, factored); log_det gains the prior's term.
    void inverse(const Var& x, const Var& context, Var& kept, Var& factored, Var& log_det);
    // (kept, factored) -> x.
    Var forward(const Var& kept, const Var& factored, const Var& context, Var& log_det);
    Shape kept_shape() const;
    Shape factored_shape() const;

private:
    void prior_params(const Var& kept, const Var& context, Var& mu, Var& log_sigma);
    Shape in_;
    std::int64_t keep_;
    std::unique_ptr<Conditioner> prior_;
};

struct FlowStep {
    enum class Kind { bijector, split, slice, concat, network };
    Kind kind = Kind::bijector;
    std::unique_ptr<Module> owned;  // the node's module, if it has one
    Bijector* bijector = nullptr;
    SplitNode* split = nullptr;
    Network* network = nullptr;
    std::vector<int> in, out;         // slots read and written (data direction)
    int context = -1;                 // slot of the context it reads, -1: none
    std::vector<std::int64_t> sizes;  // slice: channels of each output; concat: of each input
    std::vector<bool> release;        // per input: drop the slot once read (nothing else needs it)
};

struct FlowOutput {
    int slot = -1;
    Shape shape;
    std::unique_ptr<BaseDistribution> base;  // null: under the shared base
    int given = -1;                          // slot its own base is conditioned on, -1: none
};

struct FlowGraph {
    static constexpr int kInputSlot = 0, kContextSlot = 1;
    std::vector<Shape> slot_shapes;  // per slot, per sample
    std::vector<FlowStep> steps;     // topological order (data -> latent)
    std::vector<FlowOutput> outputs;
    std::vector<std::size_t> shared;  // outputs under the shared base, in latent order
    Shape shared_shape;               // the shared base's event shape
    std::unique_ptr<BaseDistribution> shared_base;
    // Sampling: an output with its own base is drawn as soon as what it is conditioned on is
    // known - before the reverse pass, or right after the step that reconstructs its "given".
    std::vector<std::size_t> sample_first;
    std::vector<std::vector<std::size_t>> sample_after;  // per step

    // Data -> latent over `slots` (slot 0 the data, 1 the context); log_det summed [batch].
    // With data_init, layers with a data-dependent initialisation run it on the way.
    void run_inverse(std::vector<Var>& slots, Var& log_det, bool data_init) const;
    // One step of it.
    void run_step(const FlowStep& step, std::vector<Var>& slots, Var& log_det, bool data_init) const;
    // Latent -> data: the outputs' slots are filled; runs the context networks, then the steps
    // backwards, drawing n samples of each output with its own base (rng non-null) as they
    // become needed.
    void run_forward(std::vector<Var>& slots, Var& log_det, Rng* rng, double temperature, std::int64_t n) const;
    // The context networks alone (a reverse pass needs them before any step).
    void run_networks(std::vector<Var>& slots) const;
    std::vector<Var> empty_slots(const Var& x, const Var& context) const;
    // Fills sample_first and sample_after: sampling runs the steps backwards, draws an output
    // with its own base as soon as its "given" is known, and needs every step's outputs known
    // when it reaches it. `known` marks the slots known from the start (the context tensors).
    // Returns the output that cannot be drawn in time, if any.
    std::optional<std::size_t> plan_sampling(std::vector<bool> known);
};

}  // namespace flowlab

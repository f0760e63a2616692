// The flow builder on arbitrary model objects: both forms read into a graph spec, the canonical
// form emitted and read back, and the graph built (references, cycles, consumption, shapes, the
// sampling plan) with the shipped standard plugin's layers on a small input. Anything but a
// flowlab::Error is a finding; the allocation budget keeps sizes a config chooses in check.
#include <cstdint>
#include <string>

#include "flowlab/builder.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/plugin.hpp"
#include "graph/graph_spec.hpp"
#include "graph/json_internal.hpp"

namespace {

const flowlab::Registry& registry() {
    static flowlab::Registry* reg = [] {
        auto* r = new flowlab::Registry();
        flowlab::load_plugin(*r, std::string(FLOWLAB_FUZZ_PLUGIN_DIR) + "/libflowlab_standard.so");
        return r;
    }();
    return *reg;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        const flowlab::Params model = flowlab::make_params(flowlab::parse_json_strict(text, "fuzz.json"), "fuzz.json", "/model");
        const flowlab::graph::GraphSpec spec = flowlab::graph::model_graph(model);
        // Building costs a fixed time per layer (linear, tested with 5,000 layers in the unit
        // tests); under the sanitizers a flow near the 10,000-layer limit takes seconds, which
        // would read as a timeout. The limit itself is checked by model_graph above.
        if (spec.nodes.size() > 1000) return 0;
        const nlohmann::json emitted = flowlab::graph::graph_to_json(spec);
        (void)flowlab::graph::model_graph(flowlab::make_params({{"graph", emitted}}, "emitted.json", "/model"));
        flowlab::AllocationBudget budget(std::size_t{64} << 20, "the fuzzed model");
        flowlab::Rng rng(1);
        (void)flowlab::build_flow(model, {4}, {}, registry(), rng);
    } catch (const flowlab::Error&) {
    }
    return 0;
}

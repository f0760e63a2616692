// The experiment loader on arbitrary bytes: strict JSON parsing (depth, duplicates, numbers)
// and validation against the experiment's schema. Anything but a flowlab::Error is a finding.
#include <cstdint>
#include <string>

#include "flowlab/errors.hpp"
#include "graph/json_internal.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        flowlab::Params p = flowlab::load_experiment_json(flowlab::parse_json_strict(text, "fuzz.json"), "fuzz.json", "", {});
        (void)p.dump();
    } catch (const flowlab::Error&) {
    }
    return 0;
}

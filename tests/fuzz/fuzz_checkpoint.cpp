// The safetensors checkpoint reader on arbitrary bytes, then the training-state metadata
// validation on whatever it accepted. Anything but a flowlab::Error is a finding.
#include <cstdint>
#include <string_view>

#include "flowlab/checkpoint.hpp"
#include "flowlab/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        flowlab::Checkpoint ck = flowlab::parse_checkpoint(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
        (void)flowlab::parse_train_state(ck.metadata, "fuzz", {46, 2000, 64});
    } catch (const flowlab::Error&) {
    }
    return 0;
}

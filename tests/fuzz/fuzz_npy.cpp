// The NumPy .npy parser on arbitrary bytes. Anything but a flowlab::Error is a finding.
#include <cstdint>
#include <span>

#include "data_readers.hpp"
#include "flowlab/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        (void)flowlab::density::parse_npy(std::span<const std::uint8_t>(data, size), "fuzz.npy");
    } catch (const flowlab::Error&) {
    }
    return 0;
}

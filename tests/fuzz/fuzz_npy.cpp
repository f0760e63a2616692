// The NumPy .npy parsers (tables, and uint8 image arrays) on arbitrary bytes. Anything but a
// flowlab::Error is a finding.
#include <cstdint>
#include <span>

#include "data_readers.hpp"
#include "flowlab/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::uint8_t> bytes(data, size);
    try {
        (void)flowlab::density::parse_npy(bytes, "fuzz.npy");
    } catch (const flowlab::Error&) {
    }
    try {
        (void)flowlab::density::parse_npy_u8(bytes, "fuzz.npy");
    } catch (const flowlab::Error&) {
    }
    return 0;
}

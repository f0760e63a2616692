// The CIFAR-10 binary batch parser on arbitrary bytes. Anything but a flowlab::Error is a finding.
#include <cstdint>
#include <span>

#include "data_readers.hpp"
#include "flowlab/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        (void)flowlab::density::parse_cifar_batch(std::span<const std::uint8_t>(data, size), "fuzz.bin");
    } catch (const flowlab::Error&) {
    }
    return 0;
}

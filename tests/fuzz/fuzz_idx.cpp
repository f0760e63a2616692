// The IDX (Fashion-MNIST/MNIST) image and label parsers on arbitrary bytes. Anything but a
// flowlab::Error is a finding.
#include <cstdint>
#include <span>

#include "data_readers.hpp"
#include "flowlab/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::span<const std::uint8_t> bytes(data, size);
    try {
        (void)flowlab::density::parse_idx_images(bytes, "fuzz-images.idx");
    } catch (const flowlab::Error&) {
    }
    try {
        (void)flowlab::density::parse_idx_labels(bytes, "fuzz-labels.idx");
    } catch (const flowlab::Error&) {
    }
    return 0;
}

// The CSV table parser on arbitrary text, with each header mode. Anything but a flowlab::Error
// is a finding.
#include <cstdint>
#include <string_view>

#include "data_readers.hpp"
#include "flowlab/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    for (std::string_view header : {"auto", "yes", "no"}) {
        try {
            (void)flowlab::density::parse_csv(text, "fuzz.csv", ',', header);
        } catch (const flowlab::Error&) {
        }
    }
    return 0;
}

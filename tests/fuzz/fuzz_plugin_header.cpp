// The check a plugin file passes before dlopen maps it (ELF header, program headers, segments
// inside the file). It must never read out of bounds and must answer for every input.
#include <cstdint>

#include "runtime/elf_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    (void)flowlab::elf_shared_object_problem(data, size);
    return 0;
}

#include "runtime/elf_check.hpp"

#include <elf.h>

#include <cstring>

namespace flowlab {

namespace {

#if defined(__x86_64__)
constexpr unsigned kMachine = EM_X86_64;
constexpr const char* kMachineName = "x86-64";
#elif defined(__aarch64__)
constexpr unsigned kMachine = EM_AARCH64;
constexpr const char* kMachineName = "aarch64";
#else
#error "flowlab's plugin check knows x86-64 and aarch64 only"
#endif

// [offset, offset + length) inside a file of `size` bytes, without overflow.
bool inside(std::uint64_t offset, std::uint64_t length, std::size_t size) {
    return offset <= size && length <= size - offset;
}

}  // namespace

std::string elf_shared_object_problem(const unsigned char* data, std::size_t size) {
    if (size < EI_NIDENT || std::memcmp(data, ELFMAG, SELFMAG) != 0) return "not an ELF file";
    if (data[EI_CLASS] != ELFCLASS64) return "not a 64-bit ELF file";
    if (data[EI_DATA] != ELFDATA2LSB) return "not a little-endian ELF file";
    if (size < sizeof(Elf64_Ehdr)) return "truncated ELF header";
    Elf64_Ehdr eh;
    std::memcpy(&eh, data, sizeof eh);
    if (eh.e_type != ET_DYN) return "an ELF file, but not a shared library (e_type " + std::to_string(eh.e_type) + ")";
    if (eh.e_machine != kMachine)
        return "a shared library for another architecture (ELF machine " + std::to_string(eh.e_machine) +
               "; this is " + kMachineName + ")";
    if (eh.e_phentsize != sizeof(Elf64_Phdr)) return "corrupt ELF header (program header size)";
    if (eh.e_phnum == 0 || eh.e_phnum == PN_XNUM) return "corrupt ELF header (no program headers)";
    if (!inside(eh.e_phoff, std::uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr), size))
        return "truncated or corrupt: the program headers run past the end of the file";
    bool has_load = false, has_dynamic = false;
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph;
        std::memcpy(&ph, data + eh.e_phoff + i * sizeof(Elf64_Phdr), sizeof ph);
        if (ph.p_type != PT_LOAD && ph.p_type != PT_DYNAMIC) continue;
        if (!inside(ph.p_offset, ph.p_filesz, size))
            return "truncated or corrupt: segment " + std::to_string(i) + " runs past the end of the file";
        if (ph.p_filesz > ph.p_memsz) return "corrupt: segment " + std::to_string(i) + " is larger on disk than in memory";
        has_load = has_load || ph.p_type == PT_LOAD;
        has_dynamic = has_dynamic || ph.p_type == PT_DYNAMIC;
    }
    if (!has_load) return "corrupt: no loadable segment";
    if (!has_dynamic) return "not a dynamically linked shared library (no dynamic section)";
    return "";
}

}  // namespace flowlab

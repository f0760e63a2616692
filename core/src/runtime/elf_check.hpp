// A plugin file is checked as an ELF shared object of this machine before dlopen sees it:
// the dynamic loader trusts the headers it maps, so a truncated or corrupt library can crash
// it instead of failing. Internal to the core (the loader and the plugin-header fuzz target).
#pragma once

#include <cstddef>
#include <string>

namespace flowlab {

// "" when `data` (the whole file) is a 64-bit little-endian shared object for this machine's
// architecture whose program headers, loadable segments and dynamic section lie inside the
// file; otherwise what is wrong, in words for an error message.
std::string elf_shared_object_problem(const unsigned char* data, std::size_t size);

}  // namespace flowlab

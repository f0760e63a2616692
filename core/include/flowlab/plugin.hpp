// Plugins: shared libraries that register types at run time. Every layer flowlab ships is one.
//
// A plugin declares itself with one macro; the body registers into `reg` (a flowlab::Registry):
//
//   #include <flowlab/plugin.hpp>
//
//   FLOWLAB_PLUGIN("my_layers", "0.1.0", "layers from my paper") {
//       reg.add_bijector({"my_layer", "what it does, in one line", {/* schema */},
//           [](const flowlab::Params& p, const flowlab::BuildContext& c) {
//               return std::make_unique<MyLayer>(p, c);
//           }});
//   }
//
// and is built with the CMake function flowlab_add_plugin(my_layers my_layers.cpp).
//
// The ABI: the library exports one C function, `flowlab_plugin_entry`, returning a pointer to
// a static `flowlab_plugin_info` whose first field is the ABI version. The loader reads that
// field before anything else and refuses a mismatch, then checks the flowlab version
// (major.minor must match, the C++ types cross the boundary) and the compiler id, then calls
// `register_types` on a staging registry; exceptions never cross the C boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>

#include "flowlab/registry.hpp"
#include "flowlab/version.hpp"

// 2: the registry gained the op table, BuildContext and ConditionerSpec the network library.
#define FLOWLAB_PLUGIN_ABI_VERSION 2u

#define FLOWLAB_STR2_(x) #x
#define FLOWLAB_STR_(x) FLOWLAB_STR2_(x)
// Plugins share C++ types with the core, so the compiler family, major version and the
// standard library ABI must agree.
#if defined(__clang__)
#define FLOWLAB_COMPILER_ID "clang-" FLOWLAB_STR_(__clang_major__) "-cxx11abi" FLOWLAB_STR_(_GLIBCXX_USE_CXX11_ABI)
#elif defined(__GNUC__)
#define FLOWLAB_COMPILER_ID "gcc-" FLOWLAB_STR_(__GNUC__) "-cxx11abi" FLOWLAB_STR_(_GLIBCXX_USE_CXX11_ABI)
#else
#define FLOWLAB_COMPILER_ID "unknown"
#endif

extern "C" {
struct flowlab_plugin_info {
    std::uint32_t abi_version;  // must stay the first field
    std::uint32_t struct_size;
    const char* flowlab_version;
    const char* compiler_id;
    const char* name;
    const char* version;
    const char* description;
    // Registers into the Registry behind `registry`; returns 0, or non-zero with a message.
    int (*register_types)(void* registry, char* error, std::size_t error_size);
};
typedef const flowlab_plugin_info* (*flowlab_plugin_entry_fn)(void);
}

#define FLOWLAB_PLUGIN_ENTRY_SYMBOL "flowlab_plugin_entry"

#define FLOWLAB_PLUGIN(NAME, VERSION, DESCRIPTION)                                                \
    static void flowlab_plugin_body_(::flowlab::Registry& reg);                                   \
    static int flowlab_plugin_register_(void* r, char* err, std::size_t n) {                      \
        try {                                                                                     \
            flowlab_plugin_body_(*static_cast<::flowlab::Registry*>(r));                          \
            return 0;                                                                             \
        } catch (const std::exception& e) {                                                       \
            std::snprintf(err, n, "%s", e.what());                                                \
        } catch (...) {                                                                           \
            std::snprintf(err, n, "unknown exception");                                           \
        }                                                                                         \
        return 1;                                                                                 \
    }                                                                                             \
    extern "C" __attribute__((visibility("default"))) const flowlab_plugin_info*                  \
    flowlab_plugin_entry(void) {                                                                  \
        static const flowlab_plugin_info info = {FLOWLAB_PLUGIN_ABI_VERSION,                      \
                                                 sizeof(flowlab_plugin_info),                     \
                                                 FLOWLAB_VERSION_STRING,                          \
                                                 FLOWLAB_COMPILER_ID,                             \
                                                 NAME,                                            \
                                                 VERSION,                                         \
                                                 DESCRIPTION,                                     \
                                                 &flowlab_plugin_register_};                      \
        return &info;                                                                             \
    }                                                                                             \
    static void flowlab_plugin_body_(::flowlab::Registry& reg)

namespace flowlab {

// What `flowlab plugin-info` prints: read from the info struct without registering anything.
struct PluginInfo {
    std::uint32_t abi_version = 0;
    std::string flowlab_version, compiler_id, name, version, description, path;
};

// Loads a plugin library into `registry` (staged, then committed). Throws PluginError with
// one distinct message per failure: file not found, not a flowlab plugin, ABI mismatch,
// version or compiler mismatch, registration failed, duplicate name. A library is never
// unloaded (the types it registered live as long as the process).
PluginRecord load_plugin(Registry& registry, const std::string& path);
// Loads each plugin (a name looked up in `dirs`, or a path) that is not loaded yet, then the
// plugins each one requires (Registry::require_plugin), by name from `dirs`. A requirement that
// cannot be found is a PluginError naming the plugin that needs it and where it was looked for.
void load_plugins(Registry& registry, const std::vector<std::string>& names_or_paths,
                  const std::vector<std::string>& dirs);
// Reads the info struct only.
PluginInfo read_plugin_info(const std::string& path);
// Resolves a plugin reference: a path (contains '/' or ends in .so), or a bare name looked up
// as libflowlab_<name>.so / <name>.so in each search directory.
std::string resolve_plugin(const std::string& name_or_path, const std::vector<std::string>& dirs);
// Every plugin library (libflowlab_*.so) in `dirs`, in search order, each file once (by its
// canonical path): what `flowlab list` loads.
std::vector<std::string> plugin_files(const std::vector<std::string>& dirs);
// The plugins in `dirs` that register a `kind` ("bijector", "conditioner", ... as the registry's
// tables name themselves) called `name`, leaving out those already in `loaded`. Each candidate
// is loaded into a scratch registry (its library stays loaded, as every plugin's does); one that
// does not load is no candidate. For the hint of a type the loaded plugins do not register.
std::vector<PluginRecord> plugins_providing(const std::string& kind, const std::string& name,
                                            const std::vector<std::string>& dirs, const Registry& loaded);
// The directory of the running executable's plugins (next to the binary: ../lib/flowlab/plugins
// when installed, ./plugins in the build tree).
std::vector<std::string> default_plugin_dirs();

}  // namespace flowlab

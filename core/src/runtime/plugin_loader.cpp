// Loading plugin libraries: check the info struct before any plugin code registers anything,
// register into a staging registry, commit all or nothing, never unload what registered.
#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <system_error>

#include "flowlab/errors.hpp"
#include "flowlab/plugin.hpp"
#include "runtime/elf_check.hpp"

#ifndef FLOWLAB_PLUGIN_INSTALL_DIR
#define FLOWLAB_PLUGIN_INSTALL_DIR "lib/flowlab/plugins"
#endif

namespace flowlab {

namespace fs = std::filesystem;

namespace {

const char* const kHintRebuild = "rebuild the plugin against this flowlab's headers (flowlab_add_plugin in CMake)";

std::string str_or_empty(const char* s) { return s ? std::string(s) : std::string(); }

// The path used in messages and as the origin of the plugin's entries: absolute and tidy, so
// that two plugins registering the same name are told apart.
std::string display_path(const std::string& path) {
    std::error_code ec;
    fs::path abs = fs::absolute(path, ec);
    return ec ? path : abs.lexically_normal().string();
}

// The loaded segment that maps `addr`: its protection (PF_R, PF_W, PF_X) and how many bytes of it
// follow addr. Flags 0 when no loaded object maps the address. A symbol is only called or read
// after this says it is code or data, because a malformed plugin can export anything under the
// entry point's name (an `int`, say) and calling that would crash the loader.
struct Segment {
    unsigned flags = 0;
    std::uintptr_t bytes_left = 0;
};

Segment segment_of(const void* addr) {
    struct Query {
        std::uintptr_t addr;
        Segment found;
    } q{reinterpret_cast<std::uintptr_t>(addr), {}};
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) -> int {
            auto* q = static_cast<Query*>(data);
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& ph = info->dlpi_phdr[i];
                if (ph.p_type != PT_LOAD) continue;
                const std::uintptr_t begin = info->dlpi_addr + ph.p_vaddr, end = begin + ph.p_memsz;
                if (q->addr >= begin && q->addr < end) {
                    q->found = {ph.p_flags, end - q->addr};
                    return 1;
                }
            }
            return 0;
        },
        &q);
    return q.found;
}

// dlopen maps what the headers say; a file that would mislead it is refused first.
void check_elf_file(const std::string& path, const std::string& shown) {
    constexpr std::uintmax_t kMaxPluginBytes = 1ull << 30;
    std::error_code ec;
    const std::uintmax_t size = fs::file_size(path, ec);
    if (ec) throw PluginError(shown + ": cannot read the plugin file (" + ec.message() + ")");
    if (size > kMaxPluginBytes) throw PluginError(shown + ": larger than 1 GB; not a plugin library");
    std::string bytes(size, '\0');
    std::ifstream in(path, std::ios::binary);
    if (!in.read(bytes.data(), static_cast<std::streamsize>(size)))
        throw PluginError(shown + ": cannot read the plugin file");
    const std::string problem = elf_shared_object_problem(reinterpret_cast<const unsigned char*>(bytes.data()), size);
    if (!problem.empty())
        throw PluginError(shown + ": not a loadable shared library: " + problem +
                          " (a plugin is a .so built for this machine with flowlab_add_plugin)");
}

struct Opened {
    void* handle = nullptr;
    const flowlab_plugin_info* info = nullptr;
    std::string path;  // display path
};

// dlopen + dlsym + the ABI version check: the part shared by load_plugin and read_plugin_info.
Opened open_plugin(const std::string& path_in) {
    Opened o;
    o.path = display_path(path_in);
    std::error_code ec;
    if (!fs::exists(path_in, ec))
        throw PluginError(o.path + ": plugin file not found (check the path, or the plugin name and FLOWLAB_PLUGIN_PATH)");
    if (fs::is_directory(path_in, ec))
        throw PluginError(o.path + ": is a directory, not a plugin library (give the .so file inside it)");

    check_elf_file(path_in, o.path);

    // Without a slash dlopen would search the library path instead of opening this file.
    std::string open_path = path_in.find('/') == std::string::npos ? "./" + path_in : path_in;
    dlerror();
    o.handle = dlopen(open_path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!o.handle) {
        const char* err = dlerror();
        throw PluginError(o.path + ": not a loadable shared library: " + str_or_empty(err) +
                          " (a plugin is a .so built for this machine with flowlab_add_plugin, and its "
                          "dependencies must be installed)");
    }
    dlerror();
    void* sym = dlsym(o.handle, FLOWLAB_PLUGIN_ENTRY_SYMBOL);
    if (!sym) {
        // Nothing of this library has run but its static initialisers, so it may go.
        dlclose(o.handle);
        throw PluginError(o.path + ": not a flowlab plugin: it has no '" FLOWLAB_PLUGIN_ENTRY_SYMBOL
                          "' entry point (declare the plugin with FLOWLAB_PLUGIN(name, version, description) "
                          "in one of its sources)");
    }
    if (!(segment_of(sym).flags & PF_X))
        throw PluginError(o.path + ": not a flowlab plugin: its '" FLOWLAB_PLUGIN_ENTRY_SYMBOL
                          "' is not a function (a data symbol of that name?); declare the plugin with "
                          "FLOWLAB_PLUGIN(name, version, description) instead of defining the symbol by hand");
    auto entry = reinterpret_cast<flowlab_plugin_entry_fn>(sym);
    o.info = entry();
    if (!o.info) throw PluginError(o.path + ": the plugin's entry point returned no info; " + kHintRebuild);
    const Segment info_segment = segment_of(o.info);
    if (!(info_segment.flags & PF_R) || info_segment.bytes_left < sizeof(std::uint32_t))
        throw PluginError(o.path + ": the plugin's entry point returned a pointer that is not readable data; " +
                          kHintRebuild);

    // Only the first field is known to exist until its version says which struct follows.
    std::uint32_t abi = 0;
    std::memcpy(&abi, o.info, sizeof abi);
    if (abi != FLOWLAB_PLUGIN_ABI_VERSION)
        throw PluginError(o.path + ": plugin ABI mismatch: the plugin has ABI version " + std::to_string(abi) +
                          ", this flowlab (" FLOWLAB_VERSION_STRING ") expects ABI version " +
                          std::to_string(FLOWLAB_PLUGIN_ABI_VERSION) + "; " + kHintRebuild);
    if (info_segment.bytes_left < sizeof(flowlab_plugin_info))
        throw PluginError(o.path + ": the plugin's info struct runs past the end of its segment; " + kHintRebuild);
    if (o.info->struct_size < sizeof(flowlab_plugin_info))
        throw PluginError(o.path + ": the plugin's info struct is " + std::to_string(o.info->struct_size) +
                          " bytes, expected at least " + std::to_string(sizeof(flowlab_plugin_info)) + "; " +
                          kHintRebuild);
    return o;
}

bool same_major_minor(const std::string& a, const std::string& b) {
    auto major_minor = [](const std::string& v) {
        auto first = v.find('.');
        if (first == std::string::npos) return v;
        auto second = v.find('.', first + 1);
        return v.substr(0, second);
    };
    return !a.empty() && major_minor(a) == major_minor(b);
}

bool same_file(const std::string& a, const std::string& b) {
    std::error_code ec;
    bool eq = fs::equivalent(a, b, ec);
    return !ec && eq;
}

}  // namespace

PluginInfo read_plugin_info(const std::string& path) {
    Opened o = open_plugin(path);
    PluginInfo info;
    info.abi_version = o.info->abi_version;
    info.flowlab_version = str_or_empty(o.info->flowlab_version);
    info.compiler_id = str_or_empty(o.info->compiler_id);
    info.name = str_or_empty(o.info->name);
    info.version = str_or_empty(o.info->version);
    info.description = str_or_empty(o.info->description);
    info.path = o.path;
    return info;
}

PluginRecord load_plugin(Registry& registry, const std::string& path) {
    // Loading the same file twice (a config and the command line both name it) is harmless.
    for (const auto& rec : registry.plugins)
        if (same_file(rec.path, path)) return rec;

    Opened o = open_plugin(path);
    const flowlab_plugin_info& info = *o.info;
    const std::string plugin_version = str_or_empty(info.flowlab_version);
    if (!same_major_minor(plugin_version, FLOWLAB_VERSION_STRING))
        throw PluginError(o.path + ": flowlab version mismatch: the plugin was built for flowlab " +
                          (plugin_version.empty() ? std::string("(unknown)") : plugin_version) +
                          ", this is flowlab " FLOWLAB_VERSION_STRING
                          " (major.minor must match: C++ types cross the plugin boundary); " +
                          kHintRebuild);
    const std::string compiler = str_or_empty(info.compiler_id);
    if (compiler != FLOWLAB_COMPILER_ID)
        throw PluginError(o.path + ": compiler mismatch: the plugin was built with '" + compiler +
                          "', flowlab with '" FLOWLAB_COMPILER_ID
                          "' (C++ types cross the plugin boundary); rebuild the plugin with the compiler flowlab "
                          "was built with");
    if (!info.register_types) throw PluginError(o.path + ": the plugin has no registration function; " + kHintRebuild);

    PluginRecord rec{str_or_empty(info.name), str_or_empty(info.version), str_or_empty(info.description), o.path};
    Registry staged;
    staged.set_origin(o.path);
    char err[2048] = {0};
    int rc = info.register_types(&staged, err, sizeof err);
    if (rc != 0) {
        err[sizeof err - 1] = '\0';
        throw PluginError(o.path + ": plugin '" + rec.name + "' failed to register its types: " +
                          (err[0] ? std::string(err) : std::string("no message")) + " (nothing was registered)");
    }
    rec.required = staged.take_required();
    staged.plugins.push_back(rec);
    try {
        registry.merge(std::move(staged));
    } catch (const PluginError& e) {
        throw PluginError(o.path + ": cannot load plugin '" + rec.name + "': " + e.what() +
                          " (rename one of the types, or load only one of the two plugins; nothing was registered)");
    }
    // The handle is deliberately never closed: the registry now holds the plugin's code.
    return rec;
}

void load_plugins(Registry& registry, const std::vector<std::string>& names_or_paths,
                  const std::vector<std::string>& dirs) {
    auto loaded_by_name = [&](const std::string& name) {
        for (const auto& rec : registry.plugins)
            if (rec.name == name) return true;
        return false;
    };
    // Breadth first over the requirements; a plugin already loaded (by name or file) is skipped.
    for (const auto& n : names_or_paths) {
        const std::size_t first_new = registry.plugins.size();
        if (!loaded_by_name(n)) load_plugin(registry, resolve_plugin(n, dirs));
        for (std::size_t i = first_new; i < registry.plugins.size(); ++i) {
            const PluginRecord rec = registry.plugins[i];
            for (const auto& req : rec.required) {
                if (loaded_by_name(req)) continue;
                std::string path;
                try {
                    path = resolve_plugin(req, dirs);
                } catch (const PluginError& e) {
                    throw PluginError(rec.path + ": plugin '" + rec.name + "' requires plugin '" + req +
                                      "', which is not available: " + e.what());
                }
                load_plugin(registry, path);
            }
        }
    }
}

std::string resolve_plugin(const std::string& name_or_path, const std::vector<std::string>& dirs) {
    const std::string& n = name_or_path;
    if (n.find('/') != std::string::npos || (n.size() > 3 && n.compare(n.size() - 3, 3, ".so") == 0)) return n;
    std::error_code ec;
    std::set<std::string> available;
    for (const auto& dir : dirs) {
        for (const std::string& file : {"libflowlab_" + n + ".so", n + ".so"}) {
            fs::path p = fs::path(dir) / file;
            if (fs::is_regular_file(p, ec)) return p.string();
        }
        for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
            std::string f = it->path().filename().string();
            if (f.rfind("libflowlab_", 0) == 0 && f.size() > 14 && f.compare(f.size() - 3, 3, ".so") == 0)
                available.insert(f.substr(11, f.size() - 14));
        }
    }
    std::string msg = "plugin '" + n + "' not found: looked for libflowlab_" + n + ".so in ";
    std::string list;
    for (std::size_t i = 0; i < dirs.size(); ++i) list += (i ? ", " : "") + dirs[i];
    msg += dirs.empty() ? std::string("no directory") : list;
    std::vector<std::string> avail(available.begin(), available.end());
    std::string dym = did_you_mean(n, avail);
    if (!dym.empty()) msg += "; did you mean '" + dym + "'?";
    if (!avail.empty()) {
        msg += " (available:";
        for (const auto& a : avail) msg += " " + a;
        msg += ")";
    }
    throw PluginError(msg + "; give the path to the .so, or the directory that holds it with --plugin-dir DIR or in "
                            "FLOWLAB_PLUGIN_PATH (colon-separated)");
}

std::vector<std::string> plugin_files(const std::vector<std::string>& dirs) {
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (const auto& d : dirs) {
        std::error_code ec;
        std::vector<fs::path> files;
        for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
            const std::string fn = it->path().filename().string();
            if (fn.rfind("libflowlab_", 0) == 0 && it->path().extension() == ".so") files.push_back(it->path());
        }
        std::sort(files.begin(), files.end());
        for (const auto& f : files) {
            const fs::path canonical = fs::canonical(f, ec);
            if (!ec && seen.insert(canonical.string()).second) out.push_back(f.string());
        }
    }
    return out;
}

namespace {

bool registers(const Registry& r, const std::string& kind, const std::string& name) {
    bool found = false;
    r.for_each_table([&](const auto& table) { found = found || (table.kind() == kind && table.contains(name)); });
    return found;
}

}  // namespace

std::vector<PluginRecord> plugins_providing(const std::string& kind, const std::string& name,
                                            const std::vector<std::string>& dirs, const Registry& loaded) {
    std::vector<PluginRecord> found;
    for (const auto& file : plugin_files(dirs)) {
        bool is_loaded = false;
        for (const auto& rec : loaded.plugins) is_loaded = is_loaded || same_file(rec.path, file);
        if (is_loaded) continue;
        // Each candidate registers into a scratch registry of its own: two of them may register
        // the same names, and a plugin that does not load here is simply no candidate.
        Registry scratch;
        try {
            load_plugin(scratch, file);
        } catch (const Error&) {
            continue;
        }
        if (registers(scratch, kind, name)) found.push_back(scratch.plugins.back());
    }
    return found;
}

std::vector<std::string> default_plugin_dirs() {
    std::vector<std::string> dirs;
    std::set<std::string> seen;
    auto add = [&](const fs::path& p) {
        std::string s = p.lexically_normal().string();
        while (s.size() > 1 && s.back() == '/') s.pop_back();
        if (!s.empty() && seen.insert(s).second) dirs.push_back(s);
    };
    if (const char* env = std::getenv("FLOWLAB_PLUGIN_PATH")) {
        std::string v = env;
        std::size_t start = 0;
        while (start <= v.size()) {
            std::size_t end = v.find(':', start);
            if (end == std::string::npos) end = v.size();
            if (end > start) add(v.substr(start, end - start));
            start = end + 1;
        }
    }
    std::error_code ec;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    fs::path prefix;
    if (!ec) {
        prefix = exe.parent_path().parent_path();
        add(prefix / "lib" / "flowlab" / "plugins");  // build tree and a lib/ install
    }
    // Next to this library: <libdir>/flowlab/plugins (also right for multiarch libdirs and for
    // programs that live outside bin/, such as the tests).
    Dl_info dl{};
    if (dladdr(reinterpret_cast<void*>(&default_plugin_dirs), &dl) && dl.dli_fname) {
        fs::path lib = fs::absolute(fs::path(dl.dli_fname), ec);
        if (!ec) add(lib.parent_path() / "flowlab" / "plugins");
    }
    fs::path install = FLOWLAB_PLUGIN_INSTALL_DIR;
    if (install.is_absolute()) add(install);
    else if (!prefix.empty()) add(prefix / install);
    return dirs;
}

}  // namespace flowlab

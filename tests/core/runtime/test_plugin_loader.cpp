#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <unistd.h>

#include <flowlab/errors.hpp>
#include <flowlab/plugin.hpp>

using namespace flowlab;
using namespace flowlab::test;

namespace {

std::string fixture(const std::string& name) { return std::string(FLOWLAB_TEST_FIXTURE_DIR) + "/" + name + ".so"; }

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("a valid plugin registers its types with its file as their origin", "[plugin]") {
    Registry reg;
    PluginRecord rec = load_plugin(reg, fixture("good_plugin"));
    CHECK(rec.name == "fixture_good");
    CHECK(rec.version == "1.2.3");
    CHECK(rec.path == fixture("good_plugin"));
    REQUIRE(reg.bijectors.contains("fixture_scale"));
    CHECK(reg.bijectors.get("fixture_scale", "").origin == fixture("good_plugin"));
    CHECK(reg.schedules.contains("fixture_constant"));
    REQUIRE(reg.plugins.size() == 1);
    CHECK(reg.plugins[0].name == "fixture_good");

    // The registered type is usable: y = x * 3, so inverse divides by 3.
    BuildContext ctx{{2}, {}, nullptr, &reg};
    auto b = reg.make_bijector(Params::parse(R"({"type": "fixture_scale", "scale": 3})"), ctx);
    FlowResult r = b->inverse(Var(Tensor::from_vector({1, 2}, {3.0, -6.0})));
    CHECK(r.out.value().item(0) == Approx(1.0));
    CHECK(r.out.value().item(1) == Approx(-2.0));
    CHECK(r.log_det.value().item(0) == Approx(-2.0 * std::log(3.0)));
}

TEST_CASE("loading the same plugin file twice is harmless", "[plugin]") {
    Registry reg;
    load_plugin(reg, fixture("good_plugin"));
    PluginRecord again = load_plugin(reg, fixture("good_plugin"));
    CHECK(again.name == "fixture_good");
    CHECK(reg.plugins.size() == 1);
}

TEST_CASE("a missing plugin file is reported as not found", "[plugin]") {
    Registry reg;
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, fixture("does_not_exist")); });
    CHECK(msg == fixture("does_not_exist") +
                     ": plugin file not found (check the path, or the plugin name and FLOWLAB_PLUGIN_PATH)");
}

TEST_CASE("a file that is not a shared library is refused before the dynamic loader opens it", "[plugin]") {
    Registry reg;
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, fixture("not_a_library")); });
    CHECK(msg.rfind(fixture("not_a_library") + ": not a loadable shared library: not an ELF file", 0) == 0);
    CHECK(contains(msg, "flowlab_add_plugin"));
}

TEST_CASE("a truncated plugin library is refused with what is wrong in it", "[plugin]") {
    namespace fs = std::filesystem;
    const fs::path cut = fs::temp_directory_path() / ("flowlab-truncated-" + std::to_string(::getpid()) + ".so");
    {
        std::ifstream in(fixture("good_plugin"), std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        REQUIRE(bytes.size() > 4096);
        std::ofstream(cut, std::ios::binary).write(bytes.data(), 3000);
    }
    Registry reg;
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, cut.string()); });
    CHECK(contains(msg, ": not a loadable shared library: truncated or corrupt"));
    CHECK(reg.plugins.empty());
    fs::remove(cut);
}

TEST_CASE("a shared library without the entry point is not a flowlab plugin", "[plugin]") {
    Registry reg;
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, fixture("no_entry")); });
    CHECK(msg == fixture("no_entry") +
                     ": not a flowlab plugin: it has no 'flowlab_plugin_entry' entry point (declare the plugin "
                     "with FLOWLAB_PLUGIN(name, version, description) in one of its sources)");
}

TEST_CASE("an entry point that is a data symbol is refused without being called", "[plugin]") {
    Registry reg;
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, fixture("data_entry")); });
    CHECK(msg.rfind(fixture("data_entry") + ": not a flowlab plugin: its 'flowlab_plugin_entry' is not a function", 0) == 0);
    CHECK(error_of<PluginError>([&] { read_plugin_info(fixture("data_entry")); }) == msg);
    CHECK(reg.plugins.empty());
}

TEST_CASE("a plugin of another ABI version is refused, showing both versions", "[plugin]") {
    Registry reg;
    const std::string expected = fixture("abi_mismatch") +
                                 ": plugin ABI mismatch: the plugin has ABI version 999, this flowlab (" +
                                 FLOWLAB_VERSION_STRING +
                                 ") expects ABI version " + std::to_string(FLOWLAB_PLUGIN_ABI_VERSION) +
                                 "; rebuild the plugin against this flowlab's headers "
                                 "(flowlab_add_plugin in CMake)";
    CHECK(error_of<PluginError>([&] { load_plugin(reg, fixture("abi_mismatch")); }) == expected);
    // Even reading the info stops at the ABI field: the struct behind it is unknown.
    CHECK(error_of<PluginError>([&] { read_plugin_info(fixture("abi_mismatch")); }) == expected);
    CHECK(reg.plugins.empty());
}

TEST_CASE("a plugin built for another flowlab version is refused", "[plugin]") {
    Registry reg;
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, fixture("version_mismatch")); });
    CHECK(msg.rfind(fixture("version_mismatch") +
                        ": flowlab version mismatch: the plugin was built for flowlab 99.0.0, this is flowlab " +
                        FLOWLAB_VERSION_STRING + " (major.minor must match",
                    0) == 0);
    // It never got to register (its register_types would have said so).
    CHECK_FALSE(contains(msg, "register_types ran"));
    // plugin-info still shows what the plugin says about itself.
    PluginInfo info = read_plugin_info(fixture("version_mismatch"));
    CHECK(info.flowlab_version == "99.0.0");
    CHECK(info.name == "fixture_version");
}

TEST_CASE("a plugin built with another compiler is refused", "[plugin]") {
    Registry reg;
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, fixture("compiler_mismatch")); });
    CHECK(msg.rfind(fixture("compiler_mismatch") + ": compiler mismatch: the plugin was built with 'msvc-1900', flowlab with '" +
                        FLOWLAB_COMPILER_ID + "'",
                    0) == 0);
    CHECK_FALSE(contains(msg, "register_types ran"));
}

TEST_CASE("a failed registration reports the plugin's message and leaves the registry unchanged", "[plugin]") {
    Registry reg;
    load_plugin(reg, fixture("good_plugin"));
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, fixture("register_throws")); });
    CHECK(msg == fixture("register_throws") +
                     ": plugin 'fixture_throws' failed to register its types: boom (nothing was registered)");
    CHECK_FALSE(reg.schedules.contains("fixture_partial"));
    CHECK(reg.schedules.names() == std::vector<std::string>{"fixture_constant"});
    CHECK(reg.plugins.size() == 1);
}

TEST_CASE("two plugins registering the same name are refused, naming both files", "[plugin]") {
    Registry reg;
    load_plugin(reg, fixture("good_plugin"));
    std::string msg = error_of<PluginError>([&] { load_plugin(reg, fixture("good_plugin_twin")); });
    CHECK(contains(msg, "duplicate bijector 'fixture_scale': registered by " + fixture("good_plugin") + " and by " +
                            fixture("good_plugin_twin")));
    CHECK(msg.rfind(fixture("good_plugin_twin") + ": cannot load plugin 'fixture_twin': ", 0) == 0);
    // All or nothing: the twin's other type is not there either.
    CHECK_FALSE(reg.schedules.contains("fixture_twin_only"));
    CHECK(reg.bijectors.get("fixture_scale", "").origin == fixture("good_plugin"));
    CHECK(reg.plugins.size() == 1);
}

TEST_CASE("plugin info is read without registering anything", "[plugin]") {
    PluginInfo info = read_plugin_info(fixture("good_plugin"));
    CHECK(info.abi_version == FLOWLAB_PLUGIN_ABI_VERSION);
    CHECK(info.name == "fixture_good");
    CHECK(info.version == "1.2.3");
    CHECK(info.description == "a valid plugin for the loader tests");
    CHECK(info.flowlab_version == FLOWLAB_VERSION_STRING);
    CHECK(info.compiler_id == FLOWLAB_COMPILER_ID);
    CHECK(info.path == fixture("good_plugin"));
}

TEST_CASE("plugin names resolve to files in the search directories", "[plugin]") {
    const std::vector<std::string> dirs = {"/nonexistent/dir", FLOWLAB_TEST_FIXTURE_DIR, FLOWLAB_TEST_PLUGIN_DIR};
    // <name>.so
    CHECK(resolve_plugin("good_plugin", dirs) == fixture("good_plugin"));
    // libflowlab_<name>.so
    CHECK(resolve_plugin("standard", dirs) == std::string(FLOWLAB_TEST_PLUGIN_DIR) + "/libflowlab_standard.so");
    // Paths are taken as they are.
    CHECK(resolve_plugin("./x/libfoo.so", dirs) == "./x/libfoo.so");
    CHECK(resolve_plugin("libfoo.so", dirs) == "libfoo.so");
    std::string msg = error_of<PluginError>([&] { resolve_plugin("standrd", dirs); });
    CHECK(msg.rfind("plugin 'standrd' not found: looked for libflowlab_standrd.so in /nonexistent/dir, ", 0) == 0);
    CHECK(contains(msg, "did you mean 'standard'?"));
    CHECK(contains(msg, "FLOWLAB_PLUGIN_PATH"));
}

TEST_CASE("loading a plugin by name also loads the plugins it requires", "[plugin]") {
    const std::vector<std::string> dirs = {FLOWLAB_TEST_PLUGIN_DIR};
    Registry reg;
    load_plugins(reg, {"density"}, dirs);
    REQUIRE(reg.plugins.size() == 2);
    CHECK(reg.plugins[0].name == "density");
    CHECK(reg.plugins[0].required == std::vector<std::string>{"standard"});
    CHECK(reg.plugins[1].name == "standard");
    CHECK(reg.conditioners.contains("mlp"));  // what density's spline coupling builds by name
    // Asking again, or for the requirement itself, loads nothing twice.
    load_plugins(reg, {"standard", "density"}, dirs);
    CHECK(reg.plugins.size() == 2);
}

TEST_CASE("a required plugin that cannot be found names the plugin that needs it", "[plugin]") {
    Registry reg;
    std::string msg = error_of<PluginError>([&] { load_plugins(reg, {fixture("needs_missing")}, {FLOWLAB_TEST_FIXTURE_DIR}); });
    CHECK(msg.rfind(fixture("needs_missing") + ": plugin 'fixture_needs_missing' requires plugin 'no_such_plugin', "
                    "which is not available: plugin 'no_such_plugin' not found", 0) == 0);
}

TEST_CASE("the standard plugin provides the base, optimizer and schedule an experiment leaves out", "[plugin]") {
    Registry reg;
    load_plugins(reg, {"standard"}, {FLOWLAB_TEST_PLUGIN_DIR});
    REQUIRE(reg.default_for(kDefaultBase) != nullptr);
    CHECK(contains(reg.default_for(kDefaultBase)->value, "standard_normal"));
    CHECK(contains(reg.default_for(kDefaultOptimizer)->value, "adam"));
    CHECK(contains(reg.default_for(kDefaultSchedule)->value, "constant"));
    CHECK(contains(reg.default_for(kDefaultBase)->origin, "libflowlab_standard.so"));
    // No plugin, no default: nothing in the core names a shipped type.
    Registry empty;
    CHECK(empty.default_for(kDefaultBase) == nullptr);
}

TEST_CASE("the default plugin directories start with FLOWLAB_PLUGIN_PATH and include the build's", "[plugin]") {
    namespace fs = std::filesystem;
    const char* old = std::getenv("FLOWLAB_PLUGIN_PATH");
    std::string saved = old ? old : "";
    ::setenv("FLOWLAB_PLUGIN_PATH", "/first/dir::/second/dir/", 1);
    std::vector<std::string> dirs = default_plugin_dirs();
    if (old) ::setenv("FLOWLAB_PLUGIN_PATH", saved.c_str(), 1);
    else ::unsetenv("FLOWLAB_PLUGIN_PATH");
    REQUIRE(dirs.size() >= 3);
    CHECK(dirs[0] == "/first/dir");
    CHECK(dirs[1] == "/second/dir");
    bool found = false;
    for (const auto& d : dirs) {
        std::error_code ec;
        found = found || fs::equivalent(d, FLOWLAB_TEST_PLUGIN_DIR, ec);
    }
    CHECK(found);
}

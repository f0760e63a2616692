// Small helpers shared by the layer tests: shapes, seeded random tensors, perturbed
// parameters. Header-only; each test file includes it inside no namespace of its own.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include <flowlab/errors.hpp>
#include <flowlab/kernels.hpp>
#include <flowlab/module.hpp>
#include <flowlab/plugin.hpp>
#include <flowlab/registry.hpp>
#include <flowlab/rng.hpp>
#include <flowlab/tensor.hpp>

namespace flowlab::test {

// {b, event...}
inline Shape batched(std::int64_t b, const Shape& event) { return with_batch(b, event); }

inline Tensor randn(const Shape& s, std::uint64_t seed, DType dt = DType::f64, double scale = 1.0) {
    Tensor t = Tensor::empty(s, dt);
    Rng rng(seed);
    rng.fill_normal(t, 0.0, scale);
    return t;
}

// Zero-initialised layers are the identity; perturb every parameter, then convert to `dt`.
inline void perturb(Module& m, std::uint64_t seed, double stddev, DType dt) {
    Rng rng(seed);
    for (auto& p : m.named_parameters()) {
        Tensor v = p.var.value().to(DType::f64).clone();
        for (std::int64_t i = 0; i < v.numel(); ++i) v.set_item(i, v.item(i) + stddev * rng.normal());
        p.var.mutable_value() = v.to(dt);
    }
}

inline double max_abs(const Tensor& t) {
    double m = 0.0;
    for (std::int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(t.item(i)));
    return m;
}

// The message of the E that f() throws; a test failure when it throws none.
template <class E, class F>
std::string error_of(F f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    FAIL("expected an exception of the awaited kind");
    return "";
}

// The message of the E that f() throws, or `if_none` when it throws none.
template <class E, class F>
std::string message_of(F f, const std::string& if_none = "") {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    return if_none;
}

// The message of the ShapeError f() throws, or "" when it throws none.
template <class F>
std::string shape_error_of(F f) {
    return message_of<ShapeError>(f);
}

inline Registry* registry_of(std::initializer_list<const char*> plugins) {
    auto* r = new Registry();
    for (const char* name : plugins)
        load_plugin(*r, std::string(FLOWLAB_TEST_PLUGIN_DIR) + "/libflowlab_" + name + ".so");
    return r;
}

// Registries loaded once each (plugins are never unloaded): standard + image for the layer
// tests, and all three shipped plugins for whole experiments (datasets live in density).
inline const Registry& standard_and_image_registry() {
    static Registry* reg = registry_of({"standard", "image"});
    return *reg;
}
inline const Registry& shipped_plugins_registry() {
    static Registry* reg = registry_of({"standard", "density", "image"});
    return *reg;
}

}  // namespace flowlab::test

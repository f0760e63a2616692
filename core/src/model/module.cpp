// The module tree: named parameters, buffers and children, walked depth first.
#include "flowlab/module.hpp"

#include <unordered_set>

#include "flowlab/errors.hpp"

namespace flowlab {

namespace {
std::string join_name(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
}
}  // namespace

// A walk lists each module, parameter and buffer once: a module shared by several parents (one
// network instance in several layers) is entered on its first path only.
struct Module::Seen {
    std::unordered_set<const Module*> modules;
    std::unordered_set<const Node*> params;
    std::unordered_set<const void*> buffers;  // by data address (two handles on one storage)
};

void Module::collect(const std::string& prefix, Seen& seen, std::vector<NamedVar>* params,
                     std::vector<NamedTensor>* buffers) const {
    if (!seen.modules.insert(this).second) return;
    if (params)
        for (const NamedVar& p : params_)
            if (seen.params.insert(p.var.node().get()).second) params->push_back({join_name(prefix, p.name), p.var});
    if (buffers)
        for (const NamedTensor& b : buffers_)
            if (b.tensor.nbytes() == 0 || seen.buffers.insert(b.tensor.raw()).second) buffers->push_back({join_name(prefix, b.name), b.tensor});
    for (const auto& [name, child] : children_) child->collect(join_name(prefix, name), seen, params, buffers);
}

std::vector<NamedVar> Module::named_parameters(const std::string& prefix) const {
    Seen seen;
    std::vector<NamedVar> out;
    collect(prefix, seen, &out, nullptr);
    return out;
}

std::vector<Var> Module::parameters() const {
    std::vector<Var> out;
    for (auto& nv : named_parameters()) out.push_back(std::move(nv.var));
    return out;
}

std::vector<NamedTensor> Module::named_buffers(const std::string& prefix) const {
    Seen seen;
    std::vector<NamedTensor> out;
    collect(prefix, seen, nullptr, &out);
    return out;
}

std::int64_t Module::num_parameters() const {
    std::int64_t n = 0;
    for (const auto& nv : named_parameters()) n += nv.var.value().numel();
    return n;
}

void Module::set_training(bool on) {
    training_ = on;
    on_training_changed(on);
    for (auto& c : children_) c.second->set_training(on);
}

// Names end up as checkpoint keys: a clash would silently make two tensors one. A set keeps the
// check constant-time, so a flow of thousands of layers (children of one module) builds in
// linear time.
void Module::claim_name(const std::string& name) {
    if (name.empty()) throw Error("module: a parameter, buffer or child needs a non-empty name");
    if (names_.insert(name).second) return;
    for (const auto& p : params_)
        if (p.name == name) throw Error("module: the name '" + name + "' is already a parameter");
    for (const auto& b : buffers_)
        if (b.name == name) throw Error("module: the name '" + name + "' is already a buffer");
    throw Error("module: the name '" + name + "' is already a child module");
}

Var Module::add_parameter(const std::string& name, Tensor init) {
    if (!init.defined()) throw Error("module: parameter '" + name + "' has no value");
    claim_name(name);
    Var v(std::move(init), true);
    params_.push_back({name, v});
    return v;
}

Tensor Module::add_buffer(const std::string& name, Tensor init) {
    if (!init.defined()) throw Error("module: buffer '" + name + "' has no value");
    claim_name(name);
    buffers_.push_back({name, init});
    return init;
}

void Module::add_child(const std::string& name, Module* child) {
    if (!child) throw Error("module: child '" + name + "' is null");
    if (child == this) throw Error("module: '" + name + "' cannot be its own child");
    claim_name(name);
    children_.emplace_back(name, child);
    if (child->training() != training_) child->set_training(training_);
}

}  // namespace flowlab

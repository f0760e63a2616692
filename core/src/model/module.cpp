// The module tree: named parameters, buffers and children, walked depth first.
#include "flowlab/module.hpp"

#include "flowlab/errors.hpp"

namespace flowlab {

namespace {
std::string join_name(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
}
}  // namespace

namespace {
// own's entries renamed under `prefix`, then each child's items(child, prefix.child), depth first.
template <class Named, class Children, class ChildItems>
std::vector<Named> walk_named(const std::string& prefix, const std::vector<Named>& own, const Children& children,
                              ChildItems items) {
    std::vector<Named> out;
    for (Named n : own) {
        n.name = join_name(prefix, n.name);
        out.push_back(std::move(n));
    }
    for (const auto& [name, child] : children) {
        std::vector<Named> sub = items(*child, join_name(prefix, name));
        out.insert(out.end(), std::make_move_iterator(sub.begin()), std::make_move_iterator(sub.end()));
    }
    return out;
}
}  // namespace

std::vector<NamedVar> Module::named_parameters(const std::string& prefix) const {
    return walk_named(prefix, params_, children_,
                      [](const Module& m, const std::string& p) { return m.named_parameters(p); });
}

std::vector<Var> Module::parameters() const {
    std::vector<Var> out;
    for (auto& nv : named_parameters()) out.push_back(std::move(nv.var));
    return out;
}

std::vector<NamedTensor> Module::named_buffers(const std::string& prefix) const {
    return walk_named(prefix, buffers_, children_,
                      [](const Module& m, const std::string& p) { return m.named_buffers(p); });
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

namespace {
// Names end up as checkpoint keys: a clash would silently make two tensors one.
template <class A, class B, class C>
void check_new_name(const std::string& name, const A& params, const B& buffers, const C& children) {
    if (name.empty()) throw Error("module: a parameter, buffer or child needs a non-empty name");
    for (const auto& p : params)
        if (p.name == name) throw Error("module: the name '" + name + "' is already a parameter");
    for (const auto& b : buffers)
        if (b.name == name) throw Error("module: the name '" + name + "' is already a buffer");
    for (const auto& c : children)
        if (c.first == name) throw Error("module: the name '" + name + "' is already a child module");
}
}  // namespace

Var Module::add_parameter(const std::string& name, Tensor init) {
    check_new_name(name, params_, buffers_, children_);
    if (!init.defined()) throw Error("module: parameter '" + name + "' has no value");
    Var v(std::move(init), true);
    params_.push_back({name, v});
    return v;
}

Tensor Module::add_buffer(const std::string& name, Tensor init) {
    check_new_name(name, params_, buffers_, children_);
    if (!init.defined()) throw Error("module: buffer '" + name + "' has no value");
    buffers_.push_back({name, init});
    return init;
}

void Module::add_child(const std::string& name, Module* child) {
    check_new_name(name, params_, buffers_, children_);
    if (!child) throw Error("module: child '" + name + "' is null");
    if (child == this) throw Error("module: '" + name + "' cannot be its own child");
    children_.emplace_back(name, child);
    if (child->training() != training_) child->set_training(training_);
}

}  // namespace flowlab

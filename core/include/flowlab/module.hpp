// Module: a node of the tree that owns named parameters (trainable) and buffers (state saved in
// checkpoints, e.g. running statistics), and the children that own theirs.
//
//   class Scale : public Module {
//   public:
//       explicit Scale(std::int64_t d) { log_s_ = add_parameter("log_s", Tensor::zeros({d})); }
//       Var log_s_;
//   };
//   // names: "log_s"; a parent that calls add_child("scale", child) sees "scale.log_s".
#pragma once

#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "flowlab/autodiff.hpp"

namespace flowlab {

struct NamedVar {
    std::string name;
    Var var;
};
struct NamedTensor {
    std::string name;
    Tensor tensor;
};

class Module {
public:
    Module() = default;
    virtual ~Module() = default;
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;

    // Parameters of this module and all children, depth first, with dotted names. A module or
    // parameter reachable along several paths (a network that several layers share) is listed
    // once, under the first path, so that an optimizer updates it once and a checkpoint holds
    // it once; the same holds for buffers and num_parameters.
    std::vector<NamedVar> named_parameters(const std::string& prefix = "") const;
    std::vector<Var> parameters() const;
    std::vector<NamedTensor> named_buffers(const std::string& prefix = "") const;
    std::int64_t num_parameters() const;

    // Training mode (affects e.g. batch norm) propagates to children.
    void set_training(bool on);
    bool training() const { return training_; }

protected:
    Var add_parameter(const std::string& name, Tensor init);
    // A buffer is shared by handle: the module keeps the Tensor and updates it in place.
    Tensor add_buffer(const std::string& name, Tensor init);
    // Registers a child that this module owns through a member (not copied, not owned here).
    void add_child(const std::string& name, Module* child);
    virtual void on_training_changed(bool) {}

private:
    void claim_name(const std::string& name);
    struct Seen;  // what a walk has listed already (module.cpp)
    void collect(const std::string& prefix, Seen& seen, std::vector<NamedVar>* params,
                 std::vector<NamedTensor>* buffers) const;

    std::vector<NamedVar> params_;
    std::vector<NamedTensor> buffers_;
    std::vector<std::pair<std::string, Module*>> children_;
    std::unordered_set<std::string> names_;  // of params_, buffers_ and children_
    bool training_ = true;
};

}  // namespace flowlab

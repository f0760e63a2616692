// flowlab error hierarchy. Every failure the library can report is one of these; the library
// never aborts. The CLI maps each kind to its own exit code (see apps/flowlab/main.cpp).
//
// A message has one shape - where, what, hint:
//   moons.json:/model/layers/0/type: unknown bijector 'afine_coupling'; did you mean 'affine_coupling'?
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace flowlab {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A config file or parameter is wrong (unknown key, bad type, out of range, unknown type name).
class ConfigError : public Error {
public:
    using Error::Error;
};

// A config names a type that no loaded plugin registers. kind() ("bijector", ...) and name()
// let a caller that knows the plugin search path add which plugin there provides it.
class UnknownTypeError : public ConfigError {
public:
    UnknownTypeError(const std::string& what, std::string kind, std::string name)
        : ConfigError(what), kind_(std::move(kind)), name_(std::move(name)) {}
    const std::string& kind() const { return kind_; }
    const std::string& name() const { return name_; }

private:
    std::string kind_, name_;
};

// Two tensors (or a tensor and a layer) disagree on shape or dtype.
class ShapeError : public Error {
public:
    using Error::Error;
};

// A plugin library could not be loaded or registered.
class PluginError : public Error {
public:
    using Error::Error;
};

// A computation produced a non-finite value where that is fatal (e.g. training diverged).
class NumericError : public Error {
public:
    using Error::Error;
};

// A layer broke the bijector contract on real data while training (the trainer's layer checks:
// forward(inverse(x)) != x, or log-dets that do not cancel). `flowlab run` exits with 8, the
// code of a failed conformance check.
class LayerCheckError : public NumericError {
public:
    using NumericError::NumericError;
};

// A file could not be read or written, or is corrupt.
class IoError : public Error {
public:
    using Error::Error;
};

}  // namespace flowlab

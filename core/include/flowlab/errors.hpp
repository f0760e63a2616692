// flowlab error hierarchy. Every failure the library can report is one of these; the library
// never aborts. The CLI maps each kind to its own exit code (see apps/flowlab/main.cpp).
//
// A message has one shape - where, what, hint:
//   moons.json:/model/layers/0/type: unknown bijector 'afine_coupling'; did you mean 'affine_coupling'?
#pragma once

#include <stdexcept>
#include <string>

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

// A file could not be read or written, or is corrupt.
class IoError : public Error {
public:
    using Error::Error;
};

}  // namespace flowlab

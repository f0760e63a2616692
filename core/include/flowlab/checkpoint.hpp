// Checkpoints in the safetensors format: an 8-byte little-endian header length, a JSON header
// ({"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"key": "string"}}), then the raw little-endian tensor bytes. Python's
// `safetensors` package reads the weights of a flowlab checkpoint as they are.
//
// Writing is crash-safe: a temporary file in the same directory, fsync'd, renamed over the
// target, then the directory fsync'd. Reading validates everything before trusting any byte
// (header size bounds, JSON, dtypes, shapes and their byte size without overflow, offsets
// contiguous and in bounds, no duplicate names) and never executes anything from the file.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "flowlab/module.hpp"

namespace flowlab {

struct Checkpoint {
    std::vector<NamedTensor> tensors;
    std::map<std::string, std::string> metadata;

    const Tensor* find(const std::string& name) const;
};

// Throws IoError naming the path on any failure.
void write_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Throws IoError "path: <what is wrong>" for every malformed case.
Checkpoint read_checkpoint(const std::string& path);

// fsync a directory (after a rename in it), so the rename survives a crash.
void fsync_directory(const std::string& dir);
// Writes `text` to `path` through a temporary file + fsync + rename.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace flowlab

// Checkpoints in the safetensors format: an 8-byte little-endian header length, a JSON header
// ({"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"key": "string"}}), then the raw little-endian tensor bytes. Python's
// `safetensors` package reads the weights of a flowlab checkpoint as they are.
//
// Writing is crash-safe: a temporary file in the same directory, fsync'd, renamed over the
// target, then the directory fsync'd. Reading validates everything before trusting any byte
// (header size bounds, JSON, dtypes, shapes and their byte size without overflow, offsets
// contiguous and in bounds, no duplicate names, the CRC-32 of the data) and never executes
// anything from the file.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "flowlab/errors.hpp"
#include "flowlab/module.hpp"

namespace flowlab {

struct Experiment;  // builder.hpp

struct Checkpoint {
    std::vector<NamedTensor> tensors;
    std::map<std::string, std::string> metadata;

    const Tensor* find(const std::string& name) const;
};

// Metadata key of the CRC-32 (zlib's, 8 lower-case hex digits) of the whole data section.
// write_checkpoint sets it (replacing any value in Checkpoint::metadata); readers verify it.
inline constexpr const char* kCheckpointCrcKey = "data_crc32";

// Throws IoError naming the path on any failure.
void write_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Throws IoError "path: <what is wrong>" for every malformed case, a CRC mismatch included.
Checkpoint read_checkpoint(const std::string& path);
// The same parser on a whole file held in memory; `name` only labels the error messages.
// No I/O and no global state: it returns or throws IoError, whatever the bytes (fuzz entry).
Checkpoint parse_checkpoint(std::string_view bytes, const std::string& name = "<buffer>");

// A checkpoint that is well-formed but does not fit this run (another config, a step past
// train.steps): the file is left in place, unlike a corrupt one.
class CheckpointMismatch : public IoError {
public:
    using IoError::IoError;
};

// What a run's checkpoints must agree with (-1: not checked).
struct RunShape {
    std::int64_t steps = -1;       // train.steps
    std::int64_t train_size = -1;  // training examples
    std::int64_t batch_size = -1;  // train.batch_size
};

// The training state of a flowlab training checkpoint ("format": "flowlab-checkpoint-1"),
// besides its tensors. Everything that decides the next step, and the logging window so that
// metrics after a resume are those of an uninterrupted run.
struct TrainState {
    std::int64_t step = 0;
    std::int64_t optimizer_steps = 0;  // steps applied (skipped non-finite steps excluded)
    bool ema = false;
    std::uint64_t deq_rng_seed = 0, deq_rng_counter = 0;
    double best_valid_nll = INFINITY;  // +inf until the first validation
    std::int64_t best_step = -1, evals_since_best = 0;
    bool sampler_started = false;      // the sampler's RNG at its epoch's start, and the position
    std::uint64_t sampler_seed = 0, sampler_counter = 0;
    std::int64_t sampler_pos = 0;
    double window_loss = 0.0;          // sum and count of the losses since the last logged row
    std::int64_t window_n = 0;
    double last_logged_loss = NAN;     // mean of the last logged window (the final train loss)
    bool early_stopped = false;        // written by the early stop: the run is over
    // Wall time of the training steps up to here, summed over every call of the run (evaluations
    // and checkpoints excluded); NaN: unknown, a checkpoint from before flowlab recorded it.
    double train_seconds = NAN;
};

// Writes the state into checkpoint metadata (exactly: doubles round-trip bit for bit).
void put_train_state(const TrainState& state, std::map<std::string, std::string>& metadata);
// Reads and validates every field: type, range, consistency between fields and with `run`.
// Throws IoError "path: metadata 'field' = "value": what; hint" for corrupt values and
// CheckpointMismatch for a checkpoint that does not fit `run`. Fields added after the first
// format version (logging window, early_stopped, train_seconds) default when absent. Pure, like
// parse_checkpoint.
TrainState parse_train_state(const std::map<std::string, std::string>& metadata, const std::string& path,
                             const RunShape& run = {});

// Loads parameters and buffers of a checkpoint into the experiment's flow (the EMA copy when
// `prefer_ema` and the checkpoint has one). Throws IoError on a mismatch.
void load_weights(Experiment& exp, const std::string& checkpoint_path, bool prefer_ema = true);

// Removes the temporary files a writer killed mid-write left in `dir` (".NAME.tmp-PID", the
// writer's naming; nothing else), except those of a live process other than this one, which
// may still be writing. Returns the removed paths. Never throws.
std::vector<std::string> remove_stale_temp_files(const std::string& dir);

// fsync a directory (after a rename in it), so the rename survives a crash.
void fsync_directory(const std::string& dir);
// Writes `text` to `path` through a temporary file + fsync + rename.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace flowlab

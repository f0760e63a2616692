// A picture of a run's flow: RUN_DIR/architecture.dot (flow_dot, builder.hpp) and, when
// Graphviz's `dot` is on PATH, architecture.svg rendered from it for the report. Rendering is a
// convenience: its failure is reported, never thrown. Implemented in core/src/train/architecture.cpp.
#pragma once

#include <string>

#include "flowlab/flow.hpp"
#include "flowlab/params.hpp"

namespace flowlab {

struct ArchitectureFiles {
    std::string dot_path;  // always written
    std::string svg_path;  // "" when not rendered
    std::string note;      // why not: Graphviz is not installed, or what dot said ("" when rendered)
    bool graphviz = false;  // dot is on PATH (so a note is a failure worth telling, not a missing tool)
};

// Writes RUN_DIR/architecture.dot for the experiment `config` (defaults resolved) and its built
// flow, then renders RUN_DIR/architecture.svg if `dot` is on PATH. IoError when the DOT file
// cannot be written; a rendering failure only fills `note`.
ArchitectureFiles write_run_architecture(const std::string& run_dir, const Params& config, const Flow& flow,
                                         double timeout_seconds = 60.0);

// Runs `dot -Tsvg` on `dot_file` (no shell, stdin and stdout closed, killed after
// `timeout_seconds`) and moves the result to `svg_file` only when it succeeded. Returns "" on
// success, else why not (Graphviz missing, dot's exit code and first line of error, time out).
std::string render_dot_to_svg(const std::string& dot_file, const std::string& svg_file, double timeout_seconds = 60.0);

// The executable `program` on PATH (as a shell would find it), or "" when there is none.
std::string find_on_path(const std::string& program);

}  // namespace flowlab

// report.html: a self-contained page for a run directory - loss and bits/dim curves as inline
// SVG, the resolved config, the samples (a PNG grid inlined for images; for 2-D data a
// scatter of samples against test data and the model's density on a grid) and the flow's
// architecture (architecture.svg inlined when Graphviz rendered it).
#pragma once

#include <string>

namespace flowlab {

// Reads run_dir/{config.json, metrics.jsonl, summary.json, samples.png | samples.csv,
// density.csv, data.csv, architecture.svg | architecture.dot} (whatever exists) and writes run_dir/report.html and metrics.csv.
// Returns the report's path. Throws IoError when the run directory has no metrics.
std::string write_report(const std::string& run_dir);

}  // namespace flowlab

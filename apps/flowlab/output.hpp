// The files commands write besides the run directory's own (run_dir.hpp): text, CSV, NumPy
// .npy, PNG sample grids, and the artifacts a finished run leaves for people.
#pragma once

#include <cstdint>
#include <string>

#include "flowlab/experiment.hpp"
#include "flowlab/rng.hpp"
#include "flowlab/tensor.hpp"

namespace flowlab::cli {

// Throws IoError naming the path when it cannot be written.
void write_text(const std::string& path, const std::string& text);
// [N, D] as CSV, one row a line.
std::string tensor_csv(const Tensor& t);
// NumPy .npy (version 1.0, little-endian, C order).
void write_npy(const std::string& path, const Tensor& t);
// n samples of the flow; a conditional flow draws sample i for the context of test example
// i mod N (the training split's when there is no test split).
Tensor draw_samples(Experiment& exp, std::int64_t n, Rng& rng, double temperature);
// n samples of an image model as a PNG grid (pixel levels recovered from the dequantized space).
void write_image_samples(Experiment& exp, const std::string& path, std::int64_t n, double temperature, Rng& rng);
// samples.csv or samples.png, data.csv and density.csv for 2-D data, then report.html.
void write_artifacts(Experiment& exp, const std::string& run_dir);

}  // namespace flowlab::cli

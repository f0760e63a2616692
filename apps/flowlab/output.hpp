// The files commands write besides the run directory's own (run_dir.hpp): text, CSV, NumPy
// .npy, PNG sample grids, and the artifacts a finished run leaves for people.
#pragma once

#include <cstdint>
#include <string>

#include "flowlab/communicator.hpp"
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
// i mod N (the training split's when there is no test split). With a communicator of several
// ranks every rank calls it, draws its rows (the noise one process draws for them) and every
// rank returns all n.
Tensor draw_samples(Experiment& exp, std::int64_t n, Rng& rng, double temperature, Communicator* comm = nullptr);
// n samples of an image model as a PNG grid (pixel levels recovered from the dequantized space);
// with several ranks every rank draws, rank 0 writes.
void write_image_samples(Experiment& exp, const std::string& path, std::int64_t n, double temperature, Rng& rng,
                         Communicator* comm = nullptr);
// samples.csv or samples.png, data.csv and density.csv for 2-D data, then report.html. With
// several ranks every rank calls it: the samples are drawn by all, the files written by rank 0.
void write_artifacts(Experiment& exp, const std::string& run_dir, Communicator* comm = nullptr);

}  // namespace flowlab::cli

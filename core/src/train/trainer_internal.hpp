// Internal to core/src/train: the Trainer, all the mutable state of one training run, and what
// its sources share. trainer.cpp holds the loop, trainer_checkpoints.cpp its checkpoints and
// resume; evaluate.cpp and checkpoint.cpp (load_weights) use the helpers.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "distributed/gradient_reducer.hpp"
#include "flowlab/checkpoint.hpp"
#include "flowlab/communicator.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "graph/json_internal.hpp"
#include "graph/schemas.hpp"

namespace flowlab::train_detail {

inline constexpr double kLn2 = 0.69314718055994530942;

// Throws unless `src` can be copied into `dst`; names the checkpoint on a mismatch.
void check_fits(const Tensor& dst, const Tensor& src, const std::string& name, const std::string& path);
// Copies `src` into `dst` after checking that they agree.
void restore_into(Tensor dst, const Tensor& src, const std::string& name, const std::string& path);
// The tensor `name` of a checkpoint; throws CheckpointMismatch when it has none.
const Tensor& require(const Checkpoint& ck, const std::string& name, const std::string& path);

// Epoch-wise shuffled batches without replacement; the incomplete last batch is dropped.
// Its state is (RNG state at the epoch's start, position), from which the permutation is
// regenerated on resume.
class EpochSampler {
public:
    EpochSampler(std::int64_t n, std::int64_t batch, std::uint64_t seed) : n_(n), b_(batch), rng_(seed, 0) {}
    const std::int64_t* next() {
        if (perm_.empty() || pos_ + b_ > n_) {
            epoch_rng_ = rng_;
            perm_ = rng_.permutation(n_);
            pos_ = 0;
        }
        const std::int64_t* p = perm_.data() + pos_;
        pos_ += b_;
        return p;
    }
    void save(TrainState& s) const {
        s.sampler_started = !perm_.empty();
        s.sampler_seed = epoch_rng_.seed();
        s.sampler_counter = epoch_rng_.counter();
        s.sampler_pos = pos_;
    }
    // `s` was validated by parse_train_state against this sampler's N and batch size.
    void restore(const TrainState& s) {
        if (!s.sampler_started) return;
        epoch_rng_.set_state(s.sampler_seed, s.sampler_counter);
        rng_ = epoch_rng_;
        perm_ = rng_.permutation(n_);
        pos_ = s.sampler_pos;
    }

private:
    std::int64_t n_, b_;
    Rng rng_;
    Rng epoch_rng_;
    std::vector<std::int64_t> perm_;
    std::int64_t pos_ = 0;
};

// All the mutable state of one training run.
class Trainer {
public:
    Trainer(Experiment& exp, const TrainOptions& opt)
        : exp_(exp),
          opt_(opt),
          tp_(exp.config.get_object("train")),
          batch_(tp_.get_int("batch_size")),
          steps_(opt.steps_override >= 0 ? opt.steps_override : tp_.get_int("steps")),
          seed_(static_cast<std::uint64_t>(exp.config.get_int("seed"))),
          sampler_(exp.data.train.size(), batch_, seed_),
          deq_rng_(seed_ + 1, 0),
          params_(exp.flow->parameters()),
          named_(exp.flow->named_parameters()) {
        ema_decay_ = tp_.get_number("ema_decay");
        check_layers_ = tp_.get_bool("check_layers");
        if (ema_decay_ > 0)
            for (const auto& p : params_) ema_.push_back(p.value().clone());
        patience_ = tp_.get_int("early_stopping_patience");
        if (patience_ > 0 && exp.data.valid.size() == 0)
            throw ConfigError(tp_.where("early_stopping_patience") +
                              ": early stopping needs a validation split; give the dataset one (e.g. \"valid\": 5000)");
        if (patience_ > 0 && tp_.get_int("eval_every") == 0)
            throw ConfigError(tp_.where("early_stopping_patience") +
                              ": early stopping evaluates every train.eval_every steps; set eval_every > 0");
        if (exp.data.train.size() < batch_)
            throw ConfigError(tp_.where("batch_size") + ": batch size " + std::to_string(batch_) +
                              " is larger than the training set (" + std::to_string(exp.data.train.size()) + ")");
        // Data parallel: every rank takes its rows [offset, offset + rows) of each global batch.
        if (opt.comm && opt.comm->size() > 1) {
            comm_ = opt.comm;
            rank_ = comm_->rank();
            ranks_ = comm_->size();
            root_ = rank_ == 0;
        }
        if (batch_ < ranks_)
            throw ConfigError(tp_.where("batch_size") + ": batch size " + std::to_string(batch_) + " cannot be split over " +
                              std::to_string(ranks_) + " ranks (each needs at least one example per step); raise "
                              "train.batch_size to at least " + std::to_string(ranks_) + " or start fewer ranks");
        share_ = row_share(batch_, rank_, ranks_);
        // Validated again: a config built without the loader (a test's) gets the defaults too.
        const Params dp = (tp_.has("distributed") ? tp_.get_object("distributed") : Params())
                              .validated(graph::distributed_schema(), "train.distributed");
        check_every_ = dp.get_int("check_every");
        if (ranks_ > 1)
            reducer_ = std::make_unique<distributed::GradientReducer>(
                *comm_, params_, static_cast<std::size_t>(dp.get_number("bucket_mb") * 1024.0 * 1024.0),
                dp.get_bool("overlap"));
    }

    TrainSummary run();
    // Whether the checkpoint a resume would load has finished training (read-only).
    bool checkpoint_finished();

private:
    // What one step reports for logging.
    struct StepStats {
        double loss = 0.0, grad_norm = 0.0, lr = 0.0;
    };
    // The logging window's clock: its start, its first step, and the evaluation time inside it.
    struct Window {
        std::chrono::steady_clock::time_point start;
        std::int64_t start_step = 0;
        double excluded = 0.0;
    };
    void open_run_dir();
    StepStats train_step(Tensor& xb, Tensor& cb);
    void report_progress(const StepStats& st, TrainSummary& summary);
    bool periodic_eval(TrainSummary& summary);
    void finish(TrainSummary& summary, bool finished, std::int64_t done_this_call);

    // A checkpoint that passed every check, ready to be applied.
    struct ResumePoint {
        std::string path;
        Checkpoint ck;
        TrainState state;
    };
    // Reads and validates `path` against this run without changing anything; throws
    // CheckpointMismatch or IoError (corrupt).
    ResumePoint inspect(const std::string& path);
    // Warnings reach the user even with `quiet`: a fallback to an older checkpoint matters.
    void warn(const std::string& line) const {
        if (!root_) return;  // rank 0 speaks for the run
        if (opt_.log)
            opt_.log(line);
        else {
            if (progress_shown_) std::cerr << "\r\033[K";
            std::cerr << line << std::endl;
            progress_shown_ = false;
        }
    }
    void log(const std::string& line) const {
        if (!opt_.quiet) warn(line);
    }
    void progress(const std::string& line) const {
        if (opt_.quiet || opt_.log || !root_) return;
        std::cerr << "\r\033[K" << line << std::flush;
        progress_shown_ = true;
    }
    void metric(const nlohmann::json& j) {
        if (metrics_) metrics_ << j.dump() << "\n" << std::flush;
    }
    void data_init();
    // The layer checks (layer_check.hpp) on the first training examples, unless
    // train.check_layers is off; throws LayerCheckError naming the layer that fails. `when`
    // says where in the run ("before the first step", ...). Touches no training state.
    void check_layers(const char* when);
    // The one place where gradients become a parameter update (clip, then optimizer step).
    void apply_gradients(double gnorm, double lr);
    void save_checkpoint(bool best = false);
    void resume();
    EvalResult eval_with_ema(const std::string& split);
    // The training state besides the tensors, as a checkpoint records it, and its application.
    TrainState current_state() const;
    void apply_state(const TrainState& st);

    // ---- data parallel (trainer.cpp); each is a no-op or a plain call with one rank
    // Runs fn on rank 0 only; an error it throws is thrown on every rank (the same kind and
    // message), so that the ranks stay in step.
    void on_root(const std::function<void()>& fn);
    // Rank 0's parameters and buffers to every rank; with `all`, the optimizer state, the
    // average and the training state too (after rank 0 resumed from a checkpoint).
    void share_root_state(bool all);
    // Throws DistributedError naming the ranks whose parameters differ from rank 0's.
    void verify_same_parameters(const char* when);
    void check_layers_everywhere(const char* when);

    Experiment& exp_;
    const TrainOptions& opt_;
    Params tp_;
    std::int64_t batch_, steps_;
    std::uint64_t seed_;
    EpochSampler sampler_;
    Rng deq_rng_;
    std::vector<Var> params_;
    std::vector<NamedVar> named_;
    std::vector<Tensor> ema_;
    double ema_decay_ = 0.0;
    bool check_layers_ = true;
    double layer_check_seconds_ = 0.0;  // this call's, for TrainSummary
    std::int64_t patience_ = 0;
    std::int64_t eval_every_ = 0, log_every_ = 1, max_bad_ = 1;
    std::int64_t bad_run_ = 0;  // consecutive non-finite steps
    Window window_;
    std::int64_t step_ = 0;
    double best_valid_ = INFINITY;
    std::int64_t best_step_ = -1, evals_since_best_ = 0;
    // The logging window (losses since the last logged row) and the last logged mean.
    double window_loss_ = 0.0, last_logged_loss_ = NAN;
    std::int64_t window_n_ = 0;
    // Training-step time before this call (from the checkpoint; NaN: unknown) and in it.
    double seconds_before_ = 0.0, call_seconds_ = 0.0;
    bool early_stopped_ = false;
    // The newest checkpoint known good (loaded by the resume, or written by this run): rotation
    // keeps it next to the new one.
    std::string last_good_;
    std::ofstream metrics_;
    mutable bool progress_shown_ = false;

    // Data parallel: the ranks (one process: rank 0 of 1), this rank's rows of each batch, the
    // bucketed gradient sums, and what the run's communication cost.
    Communicator* comm_ = nullptr;
    int rank_ = 0, ranks_ = 1;
    bool root_ = true;
    RowShare share_;
    std::unique_ptr<distributed::GradientReducer> reducer_;
    std::int64_t check_every_ = 0;
    bool stop_agreed_ = false;
    double comm_wait_ = 0.0;  // this call's, in seconds
    double window_busy_ = 0.0, window_wait_ = 0.0;  // at the logging window's start
    int ranks_at_checkpoint_ = 1;
};

}  // namespace flowlab::train_detail

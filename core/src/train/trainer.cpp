// The MLE training loop, its checkpoints, and evaluation.
//
// One step: batch -> dequantize -> inverse -> base log_prob + log_det -> mean NLL -> backward ->
// clip the global gradient norm -> optimizer step. The gradient step lives in apply_gradients()
// alone so that a data-parallel all-reduce can slot in there.
//
// Everything that decides what the next step computes is in the checkpoint: parameters,
// buffers, optimizer state and step count, the EMA copy, the batch order (the sampler's RNG
// state at the start of the epoch and the position in it) and the dequantisation RNG. So N
// steps + resume + N steps gives bitwise the parameters of 2N steps straight; the logging
// window is saved too, so its metrics.jsonl is the straight run's (timings aside).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "flowlab/kernels.hpp"
#include "flowlab/checkpoint.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/parallel.hpp"
#include "flowlab/profiler.hpp"
#include "graph/json_internal.hpp"
#include "train/thread_governor.hpp"

namespace flowlab {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr double kLn2 = 0.69314718055994530942;

// Copies rows idx[0..n) of src ([N, ...]) into dst ([n, ...]).
void gather_rows(const Tensor& src, const std::int64_t* idx, std::int64_t n, Tensor& dst) {
    const std::int64_t row = src.numel() / src.size(0);
    const std::size_t bytes = static_cast<std::size_t>(row) * dtype_size(src.dtype());
    const auto* s = static_cast<const char*>(src.raw());
    auto* d = static_cast<char*>(dst.raw());
    for (std::int64_t i = 0; i < n; ++i) std::memcpy(d + i * bytes, s + idx[i] * bytes, bytes);
}

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

const DataSplit& split_of(const Dataset& d, const std::string& name) {
    if (name == "test") return d.test;
    if (name == "valid") return d.valid;
    if (name == "train") return d.train;
    throw ConfigError("unknown split '" + name + "'; expected test, valid or train");
}

double grad_norm(const std::vector<Var>& params) {
    double sq = 0.0;
    for (const auto& p : params)
        if (p.grad().defined()) sq += kern::sq_norm(p.grad());
    return std::sqrt(sq);
}

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

std::string duration_str(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    long t = static_cast<long>(s + 0.5);
    char buf[32];
    if (t >= 3600)
        std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
    return buf;
}

std::string step_file(std::int64_t step) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "step-%09lld.safetensors", static_cast<long long>(step));
    return buf;
}

// Throws unless `src` can be copied into `dst`; names the checkpoint on a mismatch.
void check_fits(const Tensor& dst, const Tensor& src, const std::string& name, const std::string& path) {
    if (src.shape() != dst.shape() || src.dtype() != dst.dtype())
        throw CheckpointMismatch(path + ": tensor '" + name + "' is " + shape_str(src.shape()) + " " +
                                 dtype_name(src.dtype()) + " but the model has " + shape_str(dst.shape()) + " " +
                                 dtype_name(dst.dtype()) + " (was the checkpoint written by another config?)");
}

// Copies `src` into `dst` after checking that they agree.
void restore_into(Tensor dst, const Tensor& src, const std::string& name, const std::string& path) {
    check_fits(dst, src, name, path);
    dst.copy_from(src);
}

const Tensor& require(const Checkpoint& ck, const std::string& name, const std::string& path) {
    const Tensor* t = ck.find(name);
    if (!t)
        throw CheckpointMismatch(path + ": checkpoint has no tensor '" + name + "' (was it written by another config?)");
    return *t;
}

// Whether the last row of metrics.jsonl is the final evaluation at `step` (a resumed finished
// run must not append it twice).
bool ends_with_final_eval(const std::string& metrics_path, std::int64_t step) {
    std::ifstream f(metrics_path);
    std::string line, last;
    while (std::getline(f, line))
        if (!line.empty()) last = line;
    json row = json::parse(last, nullptr, false);
    return row.is_object() && row.contains("step") && row["step"] == step && row.contains("test_nll") &&
           !row.contains("loss") && !row.contains("valid_nll");
}

}  // namespace

std::vector<std::string> run_checkpoints(const std::string& run_dir) {
    fs::path dir = fs::path(run_dir) / "checkpoints";
    std::vector<std::string> files;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return files;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        std::string fn = e.path().filename().string();
        if (fn.rfind("step-", 0) == 0 && e.path().extension() == ".safetensors") files.push_back(e.path().string());
    }
    std::sort(files.rbegin(), files.rend());  // zero-padded step numbers: newest first
    std::ifstream latest(dir / "latest");
    std::string name;
    if (latest && std::getline(latest, name)) {
        std::string p = (dir / name).string();
        auto it = std::find(files.begin(), files.end(), p);
        if (it != files.end()) std::rotate(files.begin(), it, it + 1);
    }
    return files;
}

void load_weights(Experiment& exp, const std::string& path, bool prefer_ema) {
    Checkpoint ck = read_checkpoint(path);
    bool ema = prefer_ema && ck.metadata.count("ema") && ck.metadata.at("ema") == "1";
    for (const auto& p : exp.flow->named_parameters())
        restore_into(p.var.value(), require(ck, (ema ? "ema/" : "param/") + p.name, path), p.name, path);
    for (const auto& b : exp.flow->named_buffers())
        restore_into(b.tensor, require(ck, "buffer/" + b.name, path), b.name, path);
}

EvalResult evaluate(Experiment& exp, const std::string& split_name, std::int64_t batch_size, int importance_samples) {
    const DataSplit& split = split_of(exp.data, split_name);
    EvalResult r;
    r.n = split.size();
    if (r.n == 0) {
        // No data, no estimate: NaN (null in JSON), never a plausible-looking 0.
        r.nll = r.bpd = r.dequantized_nll = std::numeric_limits<double>::quiet_NaN();
        return r;
    }
    NoGradGuard guard;
    exp.flow->set_training(false);
    Dequantizer* dq = exp.flow->dequantizer();
    const int k = (dq && dq->stochastic()) ? importance_samples : 1;
    Rng deq_rng(12345, 0);  // one fixed dequantisation draw, so evaluations are comparable
    const std::int64_t dims = numel(exp.data.event_shape);
    double sum_lp = 0.0, sum_bound = 0.0;
    for (std::int64_t start = 0; start < r.n; start += batch_size) {
        std::int64_t len = std::min(batch_size, r.n - start);
        Tensor xb = split.x.rows(start, len);
        Var ctx = split.context.defined() ? Var(split.context.rows(start, len)) : Var();
        if (!dq) {
            double s = kern::sum_all(exp.flow->log_prob(Var(xb), ctx).value());
            sum_lp += s;
            sum_bound += s;
            continue;
        }
        // log of the mean over k draws of exp(log p(x') + log_weight), per example.
        std::vector<std::vector<double>> terms(static_cast<std::size_t>(len));
        for (int j = 0; j < k; ++j) {
            Dequantized d = dq->dequantize(xb, deq_rng, ctx);
            Tensor lp = exp.flow->log_prob(d.x, ctx).value();
            const Tensor& lw = d.log_weight.value();
            for (std::int64_t i = 0; i < len; ++i) {
                terms[static_cast<std::size_t>(i)].push_back(lp.item(i) + lw.item(i));
                if (j == 0) sum_lp += lp.item(i);
            }
        }
        for (const auto& t : terms) {
            double m = *std::max_element(t.begin(), t.end());
            double acc = 0.0;
            for (double v : t) acc += std::exp(v - m);
            sum_bound += m + std::log(acc / static_cast<double>(t.size()));
        }
    }
    exp.flow->set_training(true);
    // nll and bpd are the same quantity (the discrete data's NLL bound, dequantization
    // included), so they agree with the training loss; dequantized_nll is -log p(x').
    r.nll = -sum_bound / static_cast<double>(r.n);
    r.dequantized_nll = -sum_lp / static_cast<double>(r.n);
    r.bpd = r.nll / (static_cast<double>(dims) * kLn2);
    return r;
}

namespace {

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
    void finish(TrainSummary& summary, bool finished, std::int64_t done_this_call, double train_seconds);

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
        if (opt_.quiet || opt_.log) return;
        std::cerr << "\r\033[K" << line << std::flush;
        progress_shown_ = true;
    }
    void metric(const json& j) {
        if (metrics_) metrics_ << j.dump() << "\n" << std::flush;
    }
    void data_init();
    // The one place where gradients become a parameter update (clip, then optimizer step).
    void apply_gradients(double gnorm, double lr);
    void save_checkpoint(bool best = false);
    void resume();
    EvalResult eval_with_ema(const std::string& split);

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
    bool early_stopped_ = false;
    // The newest checkpoint known good (loaded by the resume, or written by this run): rotation
    // keeps it next to the new one.
    std::string last_good_;
    std::ofstream metrics_;
    mutable bool progress_shown_ = false;
};

void Trainer::data_init() {
    // Data-dependent initialisation (e.g. ActNorm) on the first batch the loop will see.
    EpochSampler peek(exp_.data.train.size(), batch_, seed_);
    const std::int64_t* idx = peek.next();
    const DataSplit& tr = exp_.data.train;
    Tensor x0 = Tensor::empty(with_batch(batch_, exp_.data.event_shape), tr.x.dtype());
    gather_rows(tr.x, idx, batch_, x0);
    Tensor c0;
    if (tr.context.defined()) {
        c0 = Tensor::empty(with_batch(batch_, exp_.data.context_shape), tr.context.dtype());
        gather_rows(tr.context, idx, batch_, c0);
    }
    if (Dequantizer* dq = exp_.flow->dequantizer()) {
        NoGradGuard g;
        Rng r(seed_ + 1, 0);
        x0 = dq->dequantize(x0, r, c0.defined() ? Var(c0) : Var()).x.value();
    }
    exp_.flow->data_init(x0, c0);
    if (!ema_.empty())
        for (std::size_t i = 0; i < params_.size(); ++i) ema_[i].copy_from(params_[i].value());
}

void Trainer::apply_gradients(double gnorm, double lr) {
    const double clip = tp_.get_number("clip_grad_norm");
    if (clip > 0.0) {
        const double coef = clip / (gnorm + 1e-6);
        if (coef < 1.0)
            for (auto& p : params_)
                if (p.grad().defined()) kern::scale_inplace(p.mutable_grad(), coef);
    }
    exp_.optimizer->step(lr);
    if (!ema_.empty()) {
        // Bias-corrected, as Adam corrects its moments: with a fixed decay d the initial
        // parameters would keep weight d^t (a third after 1,000 steps at 0.999). Update t uses
        // d_t = d (1 - d^(t-1)) / (1 - d^t), which makes the average exactly the normalised
        // weighted mean of the iterates p_1..p_t with weights d^(t-s); d = 1 is the plain mean.
        const double t = static_cast<double>(step_ + 1), d = ema_decay_;
        const double dt = d >= 1.0 ? (t - 1.0) / t : d * (1.0 - std::pow(d, t - 1.0)) / (1.0 - std::pow(d, t));
        for (std::size_t i = 0; i < params_.size(); ++i) {
            kern::scale_inplace(ema_[i], dt);
            kern::axpy_inplace(ema_[i], 1.0 - dt, params_[i].value());
        }
    }
}

void Trainer::save_checkpoint(bool best) {
    if (opt_.run_dir.empty()) return;
    fs::path dir = fs::path(opt_.run_dir) / "checkpoints";
    fs::create_directories(dir);
    Checkpoint ck;
    for (const auto& p : named_) ck.tensors.push_back({"param/" + p.name, p.var.value()});
    for (const auto& b : exp_.flow->named_buffers()) ck.tensors.push_back({"buffer/" + b.name, b.tensor});
    for (const auto& s : exp_.optimizer->state()) ck.tensors.push_back({"optim/" + s.name, s.tensor});
    for (std::size_t i = 0; i < ema_.size(); ++i) ck.tensors.push_back({"ema/" + named_[i].name, ema_[i]});
    TrainState st;
    st.step = step_;
    st.optimizer_steps = exp_.optimizer->steps_taken();
    st.ema = !ema_.empty();
    st.deq_rng_seed = deq_rng_.seed();
    st.deq_rng_counter = deq_rng_.counter();
    st.best_valid_nll = best_valid_;
    st.best_step = best_step_;
    st.evals_since_best = evals_since_best_;
    sampler_.save(st);
    st.window_loss = window_loss_;
    st.window_n = window_n_;
    st.last_logged_loss = last_logged_loss_;
    st.early_stopped = early_stopped_;
    put_train_state(st, ck.metadata);
    ck.metadata["name"] = exp_.config.get_string("name");
    if (best) {
        write_checkpoint((dir / "best.safetensors").string(), ck);
        return;
    }
    const std::string name = step_file(step_);
    const std::string path = (dir / name).string();
    write_checkpoint(path, ck);
    // The pointer moves only once the new file is durable; then every other generation goes
    // but the last good one, the fallback. Not "the two newest names": after a resume that fell
    // back, a newer name may be a file that never loaded, and the fallback must not go first.
    write_file_atomic((dir / "latest").string(), name + "\n");
    for (const auto& other : run_checkpoints(opt_.run_dir)) {
        if (other == path || other == last_good_) continue;
        std::error_code ec;
        fs::remove(other, ec);
    }
    last_good_ = path;
}

Trainer::ResumePoint Trainer::inspect(const std::string& path) {
    ResumePoint rp{path, read_checkpoint(path), {}};
    const RunShape shape{steps_, exp_.data.train.size(), batch_};
    rp.state = parse_train_state(rp.ck.metadata, path, shape);
    // The file name says the step too: a disagreement is a corrupt field.
    const std::string fn = fs::path(path).filename().string();
    if (fn.rfind("step-", 0) == 0 && fn != step_file(rp.state.step))
        throw IoError(path + ": metadata 'step' = \"" + std::to_string(rp.state.step) +
                      "\": disagrees with the file name; the checkpoint is corrupt");
    for (const auto& p : named_) check_fits(p.var.value(), require(rp.ck, "param/" + p.name, path), p.name, path);
    for (const auto& b : exp_.flow->named_buffers())
        check_fits(b.tensor, require(rp.ck, "buffer/" + b.name, path), b.name, path);
    for (const auto& o : exp_.optimizer->state())
        check_fits(o.tensor, require(rp.ck, "optim/" + o.name, path), o.name, path);
    for (std::size_t i = 0; i < ema_.size(); ++i)
        if (const Tensor* t = rp.ck.find("ema/" + named_[i].name)) check_fits(ema_[i], *t, named_[i].name, path);
    return rp;
}

bool Trainer::checkpoint_finished() {
    for (const auto& path : run_checkpoints(opt_.run_dir)) {
        try {
            const TrainState st = inspect(path).state;
            return st.step >= steps_ || st.early_stopped;
        } catch (const Error&) {
        }
    }
    return false;
}

void Trainer::resume() {
    std::vector<std::string> files = run_checkpoints(opt_.run_dir);
    if (files.empty())
        throw IoError(opt_.run_dir + ": no checkpoint to resume from (expected " + opt_.run_dir +
                      "/checkpoints/step-*.safetensors)");
    std::string errors;
    std::vector<std::string> corrupt;
    for (std::size_t i = 0; i < files.size(); ++i) {
        const std::string& path = files[i];
        const std::string fallback = i + 1 < files.size() ? "; falling back to the previous checkpoint" : "";
        ResumePoint rp;
        try {
            rp = inspect(path);
        } catch (const CheckpointMismatch& e) {
            // A file that does not fit this config is not damaged: it stays where it is.
            errors += "\n  " + std::string(e.what());
            warn("warning: " + std::string(e.what()) + fallback);
            continue;
        } catch (const Error& e) {
            errors += "\n  " + std::string(e.what());
            warn("warning: " + std::string(e.what()) + fallback);
            corrupt.push_back(path);
            continue;
        }
        // Committed to this one: set the corrupt newer ones aside (kept for inspection, out of
        // rotation's way) and point `latest` here, so it never names a corrupt or missing file.
        const fs::path dir = fs::path(opt_.run_dir) / "checkpoints";
        for (const auto& bad : corrupt) {
            std::error_code ec;
            fs::rename(bad, bad + ".corrupt", ec);
            if (!ec) warn("warning: moved the corrupt checkpoint aside to " + bad + ".corrupt");
        }
        if (i > 0) write_file_atomic((dir / "latest").string(), fs::path(path).filename().string() + "\n");

        const Checkpoint& ck = rp.ck;
        const TrainState& st = rp.state;
        for (const auto& p : named_) restore_into(p.var.value(), require(ck, "param/" + p.name, path), p.name, path);
        for (const auto& b : exp_.flow->named_buffers())
            restore_into(b.tensor, require(ck, "buffer/" + b.name, path), b.name, path);
        for (const auto& s : exp_.optimizer->state())
            restore_into(s.tensor, require(ck, "optim/" + s.name, path), s.name, path);
        for (std::size_t j = 0; j < ema_.size(); ++j) {
            const Tensor* t = ck.find("ema/" + named_[j].name);
            if (t)
                restore_into(ema_[j], *t, named_[j].name, path);
            else
                ema_[j].copy_from(params_[j].value());
        }
        step_ = st.step;
        exp_.optimizer->set_steps_taken(st.optimizer_steps);
        deq_rng_.set_state(st.deq_rng_seed, st.deq_rng_counter);
        best_valid_ = st.best_valid_nll;
        best_step_ = st.best_step;
        evals_since_best_ = st.evals_since_best;
        sampler_.restore(st);
        window_loss_ = st.window_loss;
        window_n_ = st.window_n;
        last_logged_loss_ = st.last_logged_loss;
        early_stopped_ = st.early_stopped;
        last_good_ = path;
        log("resumed from " + path + " at step " + std::to_string(step_));
        return;
    }
    throw IoError(opt_.run_dir + ": no usable checkpoint:" + errors);
}

EvalResult Trainer::eval_with_ema(const std::string& split) {
    Params ev = exp_.config.get_object("eval");
    const std::int64_t bs = ev.get_int("batch_size");
    const int k = static_cast<int>(ev.get_int("importance_samples"));
    if (ema_.empty()) return evaluate(exp_, split, bs, k);
    // Evaluate with the averaged parameters, then put the live ones back.
    std::vector<Tensor> live;
    for (std::size_t i = 0; i < params_.size(); ++i) {
        live.push_back(params_[i].value().clone());
        params_[i].mutable_value().copy_from(ema_[i]);
    }
    EvalResult r = evaluate(exp_, split, bs, k);
    for (std::size_t i = 0; i < params_.size(); ++i) params_[i].mutable_value().copy_from(live[i]);
    return r;
}

// The run directory: stale temporary checkpoints go, metrics open (appended on a resume), and a
// new run in an old directory drops the old summary, which would pass it as finished.
void Trainer::open_run_dir() {
    if (opt_.run_dir.empty()) return;
    fs::create_directories(opt_.run_dir);
    // Temporary files of a writer that was killed (SIGKILL, power loss) are never renamed.
    for (const auto& f : remove_stale_temp_files((fs::path(opt_.run_dir) / "checkpoints").string()))
        log("removed the stale temporary file " + f);
    std::string path = opt_.run_dir + "/metrics.jsonl";
    metrics_.open(path, opt_.resume ? std::ios::app : std::ios::trunc);
    if (!metrics_) throw IoError(path + ": cannot write metrics (check the run directory's permissions)");
    std::error_code ec;
    if (!opt_.resume) fs::remove(fs::path(opt_.run_dir) / "summary.json", ec);
}

// One optimizer step on the next batch. A non-finite loss or gradient skips the step (parameters
// and optimizer state stay exactly as they were) and too many in a row abort the run.
Trainer::StepStats Trainer::train_step(Tensor& xb, Tensor& cb) {
    const DataSplit& tr = exp_.data.train;
    Var ctx;
    {
        ProfilePhase phase("data");
        const std::int64_t* idx = sampler_.next();
        gather_rows(tr.x, idx, batch_, xb);
        if (cb.defined()) {
            gather_rows(tr.context, idx, batch_, cb);
            ctx = Var(cb);
        }
    }
    Var x(xb), log_w;
    if (Dequantizer* dq = exp_.flow->dequantizer()) {
        Dequantized d = dq->dequantize(xb, deq_rng_, ctx);
        x = d.x;
        log_w = d.log_weight;
    }
    Var lp = exp_.flow->log_prob(x, ctx);
    if (log_w.defined()) lp = lp + log_w;
    Var loss = -mean_all(lp);
    exp_.optimizer->zero_grad();
    op_profile_mark();
    loss.backward();
    StepStats st;
    st.loss = loss.value().item();
    ProfilePhase phase("gradient norm, clipping, optimizer");
    st.grad_norm = grad_norm(params_);
    st.lr = exp_.optimizer->base_lr() * exp_.schedule->factor(step_, steps_);

    if (!std::isfinite(st.loss) || !std::isfinite(st.grad_norm)) {
        ++bad_run_;
        std::string which = "loss";
        if (std::isfinite(st.loss)) {
            which = "gradient";
            for (const auto& np : named_)
                if (np.var.grad().defined() && !kern::all_finite(np.var.grad())) {
                    which = "gradient of " + np.name;
                    break;
                }
        }
        log("step " + std::to_string(step_ + 1) + ": non-finite " + which + ", step skipped");
        metric({{"step", step_ + 1}, {"skipped", true}, {"non_finite", which}});
        if (bad_run_ >= max_bad_)
            throw NumericError("training diverged at step " + std::to_string(step_ + 1) + ": " +
                               std::to_string(bad_run_) + " consecutive non-finite steps (last: " + which +
                               "); the last good checkpoint is kept. Lower train.optimizer.lr, clip harder "
                               "(train.clip_grad_norm) or raise train.max_bad_steps");
    } else {
        bad_run_ = 0;
        apply_gradients(st.grad_norm, st.lr);
        window_loss_ += st.loss;
        ++window_n_;
    }
    ++step_;
    return st;
}

// The logging window's row and line every log_every steps, and the terminal's progress line.
void Trainer::report_progress(const StepStats& st, TrainSummary& summary) {
    const auto now = std::chrono::steady_clock::now();
    const double wall = std::chrono::duration<double>(now - window_.start).count() - window_.excluded;
    const double sps = wall > 0 ? static_cast<double>((step_ - window_.start_step) * batch_) / wall : 0.0;
    const double eta = sps > 0 ? static_cast<double>((steps_ - step_) * batch_) / sps : NAN;
    const double dims = static_cast<double>(numel(exp_.data.event_shape)) * kLn2;
    if (step_ % log_every_ == 0 || step_ == steps_) {
        const double mean_loss = window_n_ ? window_loss_ / static_cast<double>(window_n_) : NAN;
        metric({{"step", step_}, {"loss", mean_loss}, {"lr", st.lr}, {"grad_norm", st.grad_norm}, {"samples_per_s", sps}});
        if (!opt_.progress_line)
            log("step " + std::to_string(step_) + "/" + std::to_string(steps_) + "  loss " + fmt("%.4f", mean_loss) +
                "  " + fmt("%.3f", mean_loss / dims) + " bits/dim  lr " + fmt("%.2e", st.lr) + "  " + fmt("%.0f", sps) +
                " samples/s  ETA " + duration_str(eta));
        summary.final_train_loss = last_logged_loss_ = mean_loss;
        window_loss_ = 0.0;
        window_n_ = 0;
        window_ = {std::chrono::steady_clock::now(), step_, 0.0};
    }
    if (opt_.progress_line && (step_ % 10 == 0 || step_ == steps_))
        progress("step " + std::to_string(step_) + "/" + std::to_string(steps_) + "  loss " + fmt("%.4f", st.loss) +
                 "  " + fmt("%.3f", st.loss / dims) + " bits/dim  " + fmt("%.0f", sps) + " samples/s  ETA " +
                 duration_str(eta));
}

// The evaluation every eval_every steps (test, and validation for early stopping, keeping the
// best checkpoint). Returns true when early stopping ends the run. Its time is left out of
// the logged throughput.
bool Trainer::periodic_eval(TrainSummary& summary) {
    if (eval_every_ == 0 || step_ % eval_every_ != 0 || step_ == steps_) return false;
    const auto e0 = std::chrono::steady_clock::now();
    EvalResult er = eval_with_ema("test");
    json m{{"step", step_}, {"test_nll", er.nll}, {"test_bpd", er.bpd}};
    std::string line = "step " + std::to_string(step_) + "  test NLL " + fmt("%.4f", er.nll) + " nats  " +
                       fmt("%.4f", er.bpd) + " bits/dim";
    if (patience_ > 0) {
        EvalResult vr = eval_with_ema("valid");
        m["valid_nll"] = vr.nll;
        line += "  valid NLL " + fmt("%.4f", vr.nll);
        if (vr.nll < best_valid_) {
            best_valid_ = vr.nll;
            best_step_ = step_;
            evals_since_best_ = 0;
            save_checkpoint(true);
        } else {
            ++evals_since_best_;
        }
    }
    metric(m);
    log(line);
    window_.excluded += std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
    if (patience_ == 0 || evals_since_best_ < patience_) return false;
    log("early stopping at step " + std::to_string(step_) + ": no validation improvement in " +
        std::to_string(patience_) + " evaluations (best " + fmt("%.4f", best_valid_) + " at step " +
        std::to_string(best_step_) + ")");
    summary.early_stopped = early_stopped_ = true;
    save_checkpoint();
    return true;
}

// After the loop: the last checkpoint, the summary's figures, the best or averaged weights as
// the model, and the final test evaluation.
void Trainer::finish(TrainSummary& summary, bool finished, std::int64_t done_this_call, double train_seconds) {
    if (progress_shown_ && !opt_.quiet) std::cerr << std::endl;
    if (!summary.interrupted && !summary.early_stopped && !finished) save_checkpoint();
    summary.steps = step_;
    // Over the whole run, like `steps`: every step either applied an update or was skipped.
    summary.skipped_steps = step_ - exp_.optimizer->steps_taken();
    summary.train_seconds = train_seconds;
    summary.samples_per_s = train_seconds > 0 ? static_cast<double>(done_this_call * batch_) / train_seconds : 0.0;
    summary.best_valid_nll = best_valid_;
    summary.best_step = best_step_;
    if (summary.early_stopped && !opt_.run_dir.empty()) {
        // Evaluate the best model, as early stopping promises.
        load_weights(exp_, (fs::path(opt_.run_dir) / "checkpoints" / "best.safetensors").string(), true);
        ema_.clear();
    }
    if (!ema_.empty() && !summary.interrupted) {
        // The run is over: from here on (evaluation, samples) the averaged parameters are the model.
        for (std::size_t i = 0; i < params_.size(); ++i) params_[i].mutable_value().copy_from(ema_[i]);
        ema_.clear();
    }
    if (opt_.final_eval && !summary.interrupted) {
        EvalResult er = eval_with_ema("test");
        summary.test_nll = er.nll;
        summary.test_bpd = er.bpd;
        if (!finished || !ends_with_final_eval(opt_.run_dir + "/metrics.jsonl", step_))
            metric({{"step", step_}, {"test_nll", er.nll}, {"test_bpd", er.bpd}});
    }
}

TrainSummary Trainer::run() {
    eval_every_ = tp_.get_int("eval_every");
    log_every_ = tp_.get_int("log_every");
    max_bad_ = tp_.get_int("max_bad_steps");
    const std::int64_t ckpt_every = tp_.get_int("checkpoint_every");
    set_num_threads(static_cast<int>(tp_.get_int("threads")));  // 0 = all cores
    const int num_threads_pool = num_threads();
    const bool adaptive = tp_.get_bool("adaptive_threads") && num_threads_pool > 1;
    ThreadGovernor governor(adaptive ? num_threads_pool : 1);
    open_run_dir();
    if (opt_.resume)
        resume();
    else
        data_init();

    TrainSummary summary;
    summary.start_step = step_;
    // Resuming a run whose training is over takes no step and writes no checkpoint; the final
    // evaluation is redone (it is deterministic) in case the run stopped before writing it.
    const bool finished = opt_.resume && (step_ >= steps_ || early_stopped_);
    if (finished) {
        summary.final_train_loss = last_logged_loss_;
        summary.early_stopped = early_stopped_;
    }
    // The batch buffers, reused by every step.
    const DataSplit& tr = exp_.data.train;
    Tensor xb = Tensor::empty(with_batch(batch_, exp_.data.event_shape), tr.x.dtype());
    Tensor cb;
    if (tr.context.defined()) cb = Tensor::empty(with_batch(batch_, exp_.data.context_shape), tr.context.dtype());

    double train_seconds = 0.0;
    std::int64_t done_this_call = 0, single_steps = 0;
    window_ = {std::chrono::steady_clock::now(), step_, 0.0};
    while (step_ < steps_ && !finished) {
        const auto t0 = std::chrono::steady_clock::now();
        const StepStats st = train_step(xb, cb);
        ++done_this_call;
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        train_seconds += dt;
        const int chosen = governor.current();
        if (adaptive && governor.threads() == 1) ++single_steps;
        if (governor.record(dt)) set_single_threaded(governor.threads() == 1);
        if (governor.current() != chosen)
            log("threads: " + std::to_string(governor.current()) + " of " + std::to_string(num_threads_pool) +
                (governor.current() == 1 ? " from step " : " again from step ") + std::to_string(step_) +
                (governor.current() == 1 ? " (measured faster: the machine is busy)" : " (measured faster)"));
        if (opt_.on_step) opt_.on_step(step_);
        report_progress(st, summary);
        if (periodic_eval(summary)) break;
        // No checkpoint while steps are being skipped: the last good one stays the newest.
        if (step_ % ckpt_every == 0 && step_ != steps_ && bad_run_ == 0) save_checkpoint();
        const bool stop_requested = opt_.stop_flag && *opt_.stop_flag;
        if ((stop_requested || (opt_.stop_after >= 0 && done_this_call >= opt_.stop_after)) && step_ < steps_) {
            save_checkpoint();
            log(std::string(stop_requested ? "interrupted" : "stopped") + " at step " + std::to_string(step_) +
                "; checkpoint written, continue with: flowlab run --resume " + opt_.run_dir);
            summary.interrupted = true;
            break;
        }
    }
    set_single_threaded(false);
    summary.thread_switches = governor.switches();
    if (adaptive && done_this_call > 0)
        summary.single_thread_share = static_cast<double>(single_steps) / static_cast<double>(done_this_call);
    finish(summary, finished, done_this_call, train_seconds);
    return summary;
}

}  // namespace

TrainSummary train(Experiment& exp, const TrainOptions& opt) {
    Trainer t(exp, opt);
    return t.run();
}

bool run_finished(Experiment& exp, const std::string& run_dir) {
    std::error_code ec;
    if (!fs::exists(fs::path(run_dir) / "summary.json", ec)) return false;
    TrainOptions opt;
    opt.run_dir = run_dir;
    opt.resume = true;
    opt.quiet = true;
    Trainer t(exp, opt);
    return t.checkpoint_finished();
}

}  // namespace flowlab

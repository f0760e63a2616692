// The MLE training loop. Its checkpoints and resume are in trainer_checkpoints.cpp, the
// Trainer's state in trainer_internal.hpp, evaluation in evaluate.cpp.
//
// One step: batch -> dequantize -> inverse -> base log_prob + log_det -> mean NLL -> backward ->
// clip the global gradient norm -> optimizer step. The gradient step lives in apply_gradients()
// alone.
//
// Data parallel (TrainOptions::comm with several ranks, docs/DISTRIBUTED.md): every rank draws
// the same global batch from the same sampler and takes its rows of it, drawing exactly the
// noise one process draws for those rows (RowSlice); its loss is its rows' share of the global
// mean, and the gradients are summed over the ranks in buckets while the backward pass runs
// (GradientReducer), so that clipping, the optimizer and the schedule see what one process
// sees. The loss and the stop flag are summed with them: every rank takes the same decisions.
// Rank 0 writes the run directory; initialisation, resume and the layer checks happen on rank
// 0 (or everywhere) and rank 0's result is shared, and a checksum every
// train.distributed.check_every steps proves that the ranks still hold the same parameters.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "flowlab/kernels.hpp"
#include "flowlab/checkpoint.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/experiment.hpp"
#include "flowlab/parallel.hpp"
#include "flowlab/profiler.hpp"
#include "flowlab/rng.hpp"
#include "graph/json_internal.hpp"
#include "train/thread_governor.hpp"
#include "train/trainer_internal.hpp"

namespace flowlab {

using nlohmann::json;
namespace fs = std::filesystem;

namespace train_detail {

namespace {

// Copies rows idx[0..n) of src ([N, ...]) into dst ([n, ...]).
void gather_rows(const Tensor& src, const std::int64_t* idx, std::int64_t n, Tensor& dst) {
    const std::int64_t row = src.numel() / src.size(0);
    const std::size_t bytes = static_cast<std::size_t>(row) * dtype_size(src.dtype());
    const auto* s = static_cast<const char*>(src.raw());
    auto* d = static_cast<char*>(dst.raw());
    for (std::int64_t i = 0; i < n; ++i) std::memcpy(d + i * bytes, s + idx[i] * bytes, bytes);
}

double grad_norm(const std::vector<Var>& params) {
    // Each tensor's sum of squares as one task, homed by its middle element's place among all
    // gradients, as parallel_for_parts homes the optimizer's chunks: a tensor of one chunk (all
    // of W1's) is read on the thread whose update will read it. The sums are added in the
    // parameters' order whatever ran where.
    std::vector<double> sq(params.size(), 0.0);
    std::vector<int> home(params.size(), -1);
    std::int64_t total = 0, before = 0;
    for (const auto& p : params)
        if (p.grad().defined()) total += p.grad().numel();
    for (std::size_t i = 0; i < params.size(); ++i)
        if (params[i].grad().defined() && total > 0) {
            const std::int64_t n = params[i].grad().numel();
            home[i] = static_cast<int>((before + n / 2) * num_threads() / total);
            before += n;
        }
    parallel_tasks_homed(home, [&](std::int64_t i) {
        const Tensor& g = params[static_cast<std::size_t>(i)].grad();
        if (g.defined()) sq[static_cast<std::size_t>(i)] = kern::sq_norm(g);
    });
    double sum = 0.0;
    for (double v : sq) sum += v;
    return std::sqrt(sum);
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
    // Every rank initialised on the whole first batch, as one process does; rank 0's result is
    // then every rank's, whatever the ranks' thread counts did to the last bits.
    share_root_state(false);
    if (!ema_.empty())
        for (std::size_t i = 0; i < params_.size(); ++i) ema_[i].copy_from(params_[i].value());
}

void Trainer::apply_gradients(double gnorm, double lr) {
    // Clipping scales the gradients; the optimizer applies the factor as it reads them.
    const double clip = tp_.get_number("clip_grad_norm");
    const double coef = clip > 0.0 ? clip / (gnorm + 1e-6) : 1.0;
    exp_.optimizer->step(lr, std::min(coef, 1.0));
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

EvalResult Trainer::eval_with_ema(const std::string& split) {
    Params ev = exp_.config.get_object("eval");
    const std::int64_t bs = ev.get_int("batch_size");
    const int k = static_cast<int>(ev.get_int("importance_samples"));
    Communicator* comm = ranks_ > 1 ? comm_ : nullptr;
    if (ema_.empty()) return evaluate(exp_, split, bs, k, comm);
    // Evaluate with the averaged parameters, then put the live ones back.
    std::vector<Tensor> live;
    for (std::size_t i = 0; i < params_.size(); ++i) {
        live.push_back(params_[i].value().clone());
        params_[i].mutable_value().copy_from(ema_[i]);
    }
    EvalResult r = evaluate(exp_, split, bs, k, comm);
    for (std::size_t i = 0; i < params_.size(); ++i) params_[i].mutable_value().copy_from(live[i]);
    return r;
}

// The run directory: stale temporary checkpoints go, metrics open (appended on a resume), and a
// new run in an old directory drops the old summary, which would pass it as finished.
void Trainer::open_run_dir() {
    if (opt_.run_dir.empty() || !root_) return;
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
    const bool dp = ranks_ > 1;
    if (dp) comm_->set_step(step_ + 1);
    Var ctx;
    {
        ProfilePhase phase("data");
        // This rank's rows of the global batch (all of it with one rank).
        const std::int64_t* idx = sampler_.next() + share_.offset;
        gather_rows(tr.x, idx, share_.rows, xb);
        if (cb.defined()) {
            gather_rows(tr.context, idx, share_.rows, cb);
            ctx = Var(cb);
        }
    }
    Var x(xb), log_w, lp;
    {
        // A rank draws the noise one process draws for its rows, and every generator advances
        // as one process's does (rng.hpp).
        std::optional<RowSlice> slice;
        if (dp) slice.emplace(share_.offset, share_.rows, batch_);
        if (Dequantizer* dq = exp_.flow->dequantizer()) {
            Dequantized d = dq->dequantize(xb, deq_rng_, ctx);
            x = d.x;
            log_w = d.log_weight;
        }
        lp = exp_.flow->log_prob(x, ctx);
    }
    if (log_w.defined()) lp = lp + log_w;
    // A rank's share of the global batch mean: summed over the ranks, the gradients are the mean's.
    Var loss = dp ? -(sum_all(lp) * (1.0 / static_cast<double>(batch_))) : -mean_all(lp);
    exp_.optimizer->zero_grad();
    op_profile_mark();
    StepStats st;
    if (dp) {
        reducer_->begin();
        loss.backward([this](Node& leaf) { reducer_->on_ready(leaf); });
        ProfilePhase phase("gradient reduction");
        std::vector<double> control = {loss.value().item(), opt_.stop_flag && *opt_.stop_flag ? 1.0 : 0.0};
        reducer_->finish(control);
        st.loss = control[0];
        stop_agreed_ = control[1] > 0.0;
        comm_wait_ += reducer_->last_wait_seconds();
    } else {
        loss.backward();
        st.loss = loss.value().item();
    }
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
        json row{{"step", step_}, {"loss", mean_loss}, {"lr", st.lr}, {"grad_norm", st.grad_norm}, {"samples_per_s", sps}};
        if (ranks_ > 1 && step_ > window_.start_step) {
            // Per step of the window: a reduction in flight, and the wait it added after the pass.
            const double n = static_cast<double>(step_ - window_.start_step);
            const double busy = comm_->stats().busy_seconds;
            row["comm_ms"] = (busy - window_busy_) / n * 1e3;
            row["comm_wait_ms"] = (comm_wait_ - window_wait_) / n * 1e3;
            window_busy_ = busy;
            window_wait_ = comm_wait_;
        }
        metric(row);
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
    check_layers_everywhere("an evaluation");
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
void Trainer::finish(TrainSummary& summary, bool finished, std::int64_t done_this_call) {
    if (progress_shown_ && !opt_.quiet) std::cerr << std::endl;
    if (!summary.interrupted && !summary.early_stopped && !finished) save_checkpoint();
    summary.steps = step_;
    // Over the whole run, like `steps`: every step either applied an update or was skipped.
    summary.skipped_steps = step_ - exp_.optimizer->steps_taken();
    summary.train_seconds = call_seconds_;
    summary.total_train_seconds = seconds_before_ + call_seconds_;
    summary.samples_per_s = call_seconds_ > 0 ? static_cast<double>(done_this_call * batch_) / call_seconds_ : 0.0;
    summary.best_valid_nll = best_valid_;
    summary.best_step = best_step_;
    if (summary.early_stopped && !opt_.run_dir.empty()) {
        // Evaluate the best model, as early stopping promises (rank 0 reads it for every rank).
        on_root([&] { load_weights(exp_, (fs::path(opt_.run_dir) / "checkpoints" / "best.safetensors").string(), true); });
        share_root_state(false);
        ema_.clear();
    }
    if (!ema_.empty() && !summary.interrupted) {
        // The run is over: from here on (evaluation, samples) the averaged parameters are the model.
        for (std::size_t i = 0; i < params_.size(); ++i) params_[i].mutable_value().copy_from(ema_[i]);
        ema_.clear();
    }
    if (opt_.final_eval && !summary.interrupted) {
        check_layers_everywhere("the final evaluation");
        EvalResult er = eval_with_ema("test");
        summary.test_nll = er.nll;
        summary.test_bpd = er.bpd;
        if (!finished || !ends_with_final_eval(opt_.run_dir + "/metrics.jsonl", step_))
            metric({{"step", step_}, {"test_nll", er.nll}, {"test_bpd", er.bpd}});
    }
    summary.layer_check_seconds = layer_check_seconds_;
}

// The total time this process's threads have spent waiting for a CPU (Linux: the second field
// of /proc/self/task/TID/schedstat, in ns); 0 where the kernel does not report it. All threads,
// not the training thread's alone: beside one busy process, the training thread often keeps a
// core while the pool's other thread shares the busy one, and every parallel section waits
// for it - contention the training thread's own delay does not show.
class RunDelay {
public:
    RunDelay() = default;
    ~RunDelay() {
        for (const auto& [tid, fd] : fds_) ::close(fd);
    }
    RunDelay(const RunDelay&) = delete;
    RunDelay& operator=(const RunDelay&) = delete;
    double seconds() {
        // The thread list is read again now and then: the pool starts its threads lazily.
        if (calls_++ % 256 == 0) refresh();
        unsigned long long total = 0;
        for (const auto& [tid, fd] : fds_) {
            char buf[128];
            const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
            if (n <= 0) continue;
            buf[n] = '\0';
            unsigned long long run = 0, wait = 0;
            if (std::sscanf(buf, "%llu %llu", &run, &wait) == 2) total += wait;
        }
        // A thread that ended leaves the sum: keep the total from going backwards.
        last_ = std::max(last_, total);
        return static_cast<double>(last_) * 1e-9;
    }

private:
    void refresh() {
        std::error_code ec;
        std::map<long, int> now;
        for (const auto& e : std::filesystem::directory_iterator("/proc/self/task", ec)) {
            const long tid = std::strtol(e.path().filename().c_str(), nullptr, 10);
            if (const auto it = fds_.find(tid); it != fds_.end()) {
                now.emplace(tid, it->second);
                fds_.erase(it);
            } else if (const int fd = ::open((e.path() / "schedstat").c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
                now.emplace(tid, fd);
            }
        }
        for (const auto& [tid, fd] : fds_) ::close(fd);  // threads that ended
        fds_ = std::move(now);
    }

    std::map<long, int> fds_;  // thread id -> its open schedstat
    unsigned long long last_ = 0;
    std::uint64_t calls_ = 0;
};

TrainSummary Trainer::run() {
    eval_every_ = tp_.get_int("eval_every");
    log_every_ = tp_.get_int("log_every");
    max_bad_ = tp_.get_int("max_bad_steps");
    const std::int64_t ckpt_every = tp_.get_int("checkpoint_every");
    int threads = static_cast<int>(tp_.get_int("threads"));  // 0 = all cores
    const int hw = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    const int replicas = static_cast<int>(tp_.get_int("replicas"));
    // The replicas of one process share its threads; the ranks on one machine share its cores.
    if (replicas > 1)
        threads = std::max(1, (threads > 0 ? threads : hw) / replicas);
    else if (threads == 0 && ranks_ > 1)
        threads = std::max(1, hw / std::max(1, comm_->node_size()));
    set_num_threads(threads);
    const int num_threads_pool = num_threads();
    const bool adaptive = tp_.get_bool("adaptive_threads") && num_threads_pool > 1;
    ThreadGovernor governor(adaptive ? num_threads_pool : 1);
    open_run_dir();
    if (opt_.resume && ranks_ > 1) {
        // Rank 0 reads the checkpoints (and sets aside corrupt ones); every rank gets its state.
        on_root([&] { resume(); });
        share_root_state(true);
    } else if (opt_.resume) {
        resume();
    } else {
        data_init();
    }
    if (ranks_ > 1) {
        verify_same_parameters("at the start");
        log("data parallel: " +
            (replicas > 1 ? std::to_string(ranks_) + " replicas on threads of this process, "
                          : std::to_string(ranks_) + " ranks (" + std::to_string(comm_->node_size()) + " on this machine), ") +
            std::to_string(num_threads_pool) + " thread" + (num_threads_pool == 1 ? "" : "s") +
            " each, " + std::to_string(share_.rows) + " of the " + std::to_string(batch_) +
            " examples of a batch on rank 0, gradients in " + std::to_string(reducer_->buckets()) + " bucket" +
            (reducer_->buckets() == 1 ? "" : "s"));
    }
    const Communicator::Stats comm0 = ranks_ > 1 ? comm_->stats() : Communicator::Stats{};
    window_busy_ = comm0.busy_seconds;

    TrainSummary summary;
    summary.start_step = step_;
    // Resuming a run whose training is over takes no step and writes no checkpoint; the final
    // evaluation is redone (it is deterministic) in case the run stopped before writing it.
    const bool finished = opt_.resume && (step_ >= steps_ || early_stopped_);
    if (finished) {
        summary.final_train_loss = last_logged_loss_;
        summary.early_stopped = early_stopped_;
    } else {
        check_layers_everywhere("before the first step");
    }
    // The batch buffers, reused by every step.
    const DataSplit& tr = exp_.data.train;
    Tensor xb = Tensor::empty(with_batch(share_.rows, exp_.data.event_shape), tr.x.dtype());
    Tensor cb;
    if (tr.context.defined()) cb = Tensor::empty(with_batch(share_.rows, exp_.data.context_shape), tr.context.dtype());

    call_seconds_ = 0.0;
    std::int64_t done_this_call = 0, single_steps = 0;
    window_ = {std::chrono::steady_clock::now(), step_, 0.0};
    RunDelay delay;
    while (step_ < steps_ && !finished) {
        const double waited0 = adaptive ? delay.seconds() : 0.0;
        const auto t0 = std::chrono::steady_clock::now();
        const StepStats st = train_step(xb, cb);
        ++done_this_call;
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        call_seconds_ += dt;
        const int chosen = governor.current();
        if (adaptive && governor.threads() == 1) ++single_steps;
        const double waited = adaptive ? delay.seconds() - waited0 : 0.0;
        if (governor.record(dt, waited)) set_single_threaded(governor.threads() == 1);
        if (governor.current() != chosen)
            log("threads: " + std::to_string(governor.current()) + " of " + std::to_string(num_threads_pool) +
                (governor.current() == 1 ? " from step " : " again from step ") + std::to_string(step_) +
                (governor.current() == 1 ? " (measured faster: the machine is busy)" : " (measured faster)"));
        if (opt_.on_step) opt_.on_step(step_);
        if (ranks_ > 1 && check_every_ > 0 && step_ % check_every_ == 0)
            verify_same_parameters(("after step " + std::to_string(step_)).c_str());
        report_progress(st, summary);
        if (periodic_eval(summary)) break;
        // No checkpoint while steps are being skipped: the last good one stays the newest.
        if (step_ % ckpt_every == 0 && step_ != steps_ && bad_run_ == 0) save_checkpoint();
        // With several ranks, the flag as summed with the step's gradients: all stop together.
        const bool stop_requested = ranks_ > 1 ? stop_agreed_ : opt_.stop_flag && *opt_.stop_flag;
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
    if (ranks_ > 1) {
        verify_same_parameters(("after step " + std::to_string(step_)).c_str());
        summary.ranks = ranks_;
        summary.gradient_buckets = static_cast<int>(reducer_->buckets());
        if (done_this_call > 0) {
            const double n = static_cast<double>(done_this_call);
            summary.comm_seconds_per_step = (comm_->stats().busy_seconds - comm0.busy_seconds) / n;
            summary.comm_wait_seconds_per_step = comm_wait_ / n;
        }
    }
    finish(summary, finished, done_this_call);
    return summary;
}

// ------------------------------------------------------------------ data parallel

void Trainer::on_root(const std::function<void()>& fn) {
    if (ranks_ == 1) {
        fn();
        return;
    }
    // The kinds an error keeps on its way to the other ranks (their exit codes differ).
    enum Kind { none, layer_check, numeric, config, io, shape, plugin, dist, other };
    std::exception_ptr error;
    Kind kind = none;
    std::string what;
    if (root_) {
        try {
            fn();
        } catch (const LayerCheckError& e) {
            error = std::current_exception(), kind = layer_check, what = e.what();
        } catch (const NumericError& e) {
            error = std::current_exception(), kind = numeric, what = e.what();
        } catch (const ConfigError& e) {
            error = std::current_exception(), kind = config, what = e.what();
        } catch (const IoError& e) {
            error = std::current_exception(), kind = io, what = e.what();
        } catch (const ShapeError& e) {
            error = std::current_exception(), kind = shape, what = e.what();
        } catch (const PluginError& e) {
            error = std::current_exception(), kind = plugin, what = e.what();
        } catch (const DistributedError& e) {
            error = std::current_exception(), kind = dist, what = e.what();
        } catch (const std::exception& e) {
            error = std::current_exception(), kind = other, what = e.what();
        }
    }
    const std::string msg = broadcast_string(*comm_, std::to_string(static_cast<int>(kind)) + "\n" + what, 0);
    if (root_) {
        if (error) std::rethrow_exception(error);
        return;
    }
    const std::size_t nl = msg.find('\n');
    kind = static_cast<Kind>(std::atoi(msg.substr(0, nl).c_str()));
    what = msg.substr(nl + 1);
    switch (kind) {
        case none: return;
        case layer_check: throw LayerCheckError(what);
        case numeric: throw NumericError(what);
        case config: throw ConfigError(what);
        case io: throw IoError(what);
        case shape: throw ShapeError(what);
        case plugin: throw PluginError(what);
        case dist: throw DistributedError(what);
        case other: throw Error(what);
    }
}

void Trainer::share_root_state(bool all) {
    if (ranks_ == 1) return;
    auto share = [&](Tensor t) { comm_->broadcast(t.raw(), t.nbytes(), 0); };
    for (auto& p : params_) share(p.mutable_value());
    for (const auto& b : exp_.flow->named_buffers()) share(b.tensor);
    if (!all) return;
    for (const auto& o : exp_.optimizer->state()) share(o.tensor);
    for (auto& e : ema_) share(e);
    // The training state as a checkpoint's metadata records it (doubles round-trip exactly).
    std::string text;
    if (root_) {
        std::map<std::string, std::string> md;
        put_train_state(current_state(), md);
        for (const auto& [k, v] : md) text += k + "\t" + v + "\n";
    }
    text = broadcast_string(*comm_, text, 0);
    if (root_) return;
    std::map<std::string, std::string> md;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        const std::size_t tab = line.find('\t');
        if (tab != std::string::npos) md[line.substr(0, tab)] = line.substr(tab + 1);
    }
    apply_state(parse_train_state(md, "rank 0's training state", {steps_, exp_.data.train.size(), batch_}));
}

void Trainer::verify_same_parameters(const char* when) {
    // A checksum of every parameter's bits: equal on every rank, or the ranks train different
    // models (e.g. different builds or plugins, or a reduction that is not the same everywhere).
    std::uint64_t h = 0x9E3779B97F4A7C15ull;
    for (const auto& p : params_) {
        const auto* b = static_cast<const unsigned char*>(p.value().raw());
        const std::size_t n = p.value().nbytes();
        std::size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            std::uint64_t w;
            std::memcpy(&w, b + i, 8);
            h = (h ^ w) * 0x100000001b3ull;
            h ^= h >> 29;
        }
        for (; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
    }
    const std::vector<std::uint64_t> all = comm_->allgather(h);
    std::string bad;
    int count = 0;
    for (int r = 1; r < ranks_; ++r)
        if (all[static_cast<std::size_t>(r)] != all[0]) bad += std::string(count++ ? ", " : "") + std::to_string(r);
    if (count == 0) return;
    throw DistributedError(std::string(when) + ": the parameters of rank" + (count > 1 ? "s " : " ") + bad +
                           " differ from rank 0's (a checksum of every parameter): the ranks no longer train one "
                           "model. Every rank must run the same flowlab build, plugins and config on the same "
                           "data; the last good checkpoint is kept" +
                           (last_good_.empty() ? std::string() : " (" + last_good_ + ")"));
}

void Trainer::check_layers_everywhere(const char* when) {
    // Rank 0 checks (the ranks hold the same model); a failure stops every rank.
    on_root([&] { check_layers(when); });
}

}  // namespace train_detail

TrainSummary train(Experiment& exp, const TrainOptions& opt) {
    train_detail::Trainer t(exp, opt);
    return t.run();
}

bool run_finished(Experiment& exp, const std::string& run_dir) {
    std::error_code ec;
    if (!fs::exists(fs::path(run_dir) / "summary.json", ec)) return false;
    TrainOptions opt;
    opt.run_dir = run_dir;
    opt.resume = true;
    opt.quiet = true;
    train_detail::Trainer t(exp, opt);
    return t.checkpoint_finished();
}

}  // namespace flowlab

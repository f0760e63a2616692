// The Trainer's checkpoints: writing one (and rotating the older ones), checking one against
// the run, and resuming from the newest that passes.
//
// Everything that decides what the next step computes is in the checkpoint: parameters,
// buffers, optimizer state and step count, the EMA copy, the batch order (the sampler's RNG
// state at the start of the epoch and the position in it) and the dequantisation RNG. So N
// steps + resume + N steps gives bitwise the parameters of 2N steps straight; the logging
// window is saved too, so its metrics.jsonl is the straight run's (timings aside).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "flowlab/checkpoint.hpp"
#include "flowlab/errors.hpp"
#include "flowlab/run_dir.hpp"
#include "train/trainer_internal.hpp"

namespace flowlab::train_detail {

namespace fs = std::filesystem;

namespace {

std::string step_file(std::int64_t step) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "step-%09lld.safetensors", static_cast<long long>(step));
    return buf;
}

}  // namespace

// The checks that a checkpoint's tensors fit the model, which load_weights shares.
void check_fits(const Tensor& dst, const Tensor& src, const std::string& name, const std::string& path) {
    if (src.shape() != dst.shape() || src.dtype() != dst.dtype())
        throw CheckpointMismatch(path + ": tensor '" + name + "' is " + shape_str(src.shape()) + " " +
                                 dtype_name(src.dtype()) + " but the model has " + shape_str(dst.shape()) + " " +
                                 dtype_name(dst.dtype()) + " (was the checkpoint written by another config?)");
}

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

TrainState Trainer::current_state() const {
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
    st.train_seconds = seconds_before_ + call_seconds_;
    return st;
}

void Trainer::apply_state(const TrainState& st) {
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
    seconds_before_ = st.train_seconds;
    call_seconds_ = 0.0;
}

// Rank 0 writes every checkpoint: the ranks hold the same state.
void Trainer::save_checkpoint(bool best) {
    if (opt_.run_dir.empty() || !root_) return;
    fs::path dir = fs::path(opt_.run_dir) / "checkpoints";
    fs::create_directories(dir);
    Checkpoint ck;
    for (const auto& p : named_) ck.tensors.push_back({"param/" + p.name, p.var.value()});
    for (const auto& b : exp_.flow->named_buffers()) ck.tensors.push_back({"buffer/" + b.name, b.tensor});
    for (const auto& s : exp_.optimizer->state()) ck.tensors.push_back({"optim/" + s.name, s.tensor});
    for (std::size_t i = 0; i < ema_.size(); ++i) ck.tensors.push_back({"ema/" + named_[i].name, ema_[i]});
    put_train_state(current_state(), ck.metadata);
    ck.metadata["name"] = exp_.config.get_string("name");
    // The ranks that trained up to here: a resume on another number says what changes.
    ck.metadata["ranks"] = std::to_string(ranks_);
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
        apply_state(st);
        last_good_ = path;
        auto rk = ck.metadata.find("ranks");
        ranks_at_checkpoint_ = rk == ck.metadata.end() ? 1 : std::atoi(rk->second.c_str());
        log("resumed from " + path + " at step " + std::to_string(step_));
        if (ranks_at_checkpoint_ != ranks_ && ranks_at_checkpoint_ > 0)
            warn("warning: this run was trained on " + std::to_string(ranks_at_checkpoint_) + " rank" +
                 (ranks_at_checkpoint_ == 1 ? "" : "s") + " and continues on " + std::to_string(ranks_) +
                 ": the batches and their noise stay exactly those of the run (every rank takes its rows of the "
                 "same global batch), but the gradient sums are rounded in another order, so the run is no "
                 "longer bitwise the one it would have been");
        return;
    }
    throw IoError(opt_.run_dir + ": no usable checkpoint:" + errors);
}

}  // namespace flowlab::train_detail

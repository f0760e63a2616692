// The MPI Communicator: one communication thread makes every MPI call (flowlab/mpi.hpp).
//
// Why the C API and not Boost.MPI: everything here is non-blocking (MPI_Isend/Irecv for the
// sums, MPI_Ibcast, MPI_Iallgather, MPI_Ibarrier for the rest) and
// polled by this thread, so that a reduction overlaps the backward pass and no wait outlasts
// the timeout; Boost.MPI 1.74 has no non-blocking collectives and its blocking ones cannot time
// out. The gradient sums are in-place float reductions of raw buffers, which the C API says
// directly.
//
// Sums (the gradient buckets, and the small double vectors) go around a ring of point-to-point
// messages (reduce-scatter, then all-gather: each rank sends and receives 2 (N-1)/N of the
// buffer), not through MPI_Iallreduce: measured on one machine with Open MPI 4.1, its
// non-blocking allreduce moved a bucket of 1 MB in 0.34-0.9 ms when polled, where the blocking
// one takes 0.13 ms, and a training step's sums took several times longer than on the ring. The
// ring also fixes the order of every sum - segment s is added up along the ring from rank s,
// once, and then copied - so every rank gets the same bits, whatever the timing.
//
// Besides the collectives, each rank sends every other rank a small status message whenever it
// posts a collective and every half second (how many it has posted, at which training step),
// on a communicator of its own. A collective that waits past the timeout thus knows which ranks have not joined it
// and when each was last heard from; the abort message names them. Failures travel the same
// way: a rank that fails tells the others, so that an error every rank meets is printed once.
#include "flowlab/mpi.hpp"

#include <mpi.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace flowlab::mpi {

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kTagStatus = 1, kTagError = 2, kTagRing = 3;
// Every rank's status goes out at least this often, even while it waits: a peer silent for
// several beats is stopped or dead, not merely slow.
constexpr double kHeartbeatSeconds = 0.5, kSilentSeconds = 2.0;
// How long past the timeout a waiting caller ends its rank itself (see Impl::wait).
constexpr double kBackstopSeconds = 15.0;
// The exit code of a job ended by a fault (the flowlab program's code 11).
constexpr int kFaultExitCode = 11;
// The most one MPI call moves (its count is an int).
constexpr std::size_t kChunk = std::size_t{1} << 30;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::uint64_t hash_text(const std::string& s) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

std::string fmt_seconds(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f s", s);
    return buf;
}

struct Op {
    enum Kind { sum_f32, sum_f64, bcast, gather_u64, barrier } kind = barrier;
    void* data = nullptr;
    std::size_t count = 0;  // elements (bytes for bcast)
    int root = 0;
    std::uint64_t value = 0;
    Communicator::Ticket ticket = 0;
};

const char* describe(const Op& op) {
    switch (op.kind) {
        case Op::sum_f32: return "a gradient reduction";
        case Op::sum_f64: return "a reduction";
        case Op::bcast: return "a broadcast";
        case Op::gather_u64: return "a parameter checksum exchange";
        case Op::barrier: return "a barrier";
    }
    return "a collective";
}

}  // namespace

struct Runtime::Impl {
    // ---- shared by the calling thread and the communication thread (under m)
    std::mutex m;
    std::condition_variable work_cv, done_cv;
    std::deque<Op> queue;
    Ticket submitted = 0, completed = 0;
    bool started = false, stopping = false;
    std::string start_error;
    int failed_rank = -1, failed_code = 0;  // a peer's reported failure: every wait throws
    std::int64_t failed_step = -1;
    bool fail_requested = false, fail_decided = false, fail_print = false;
    int fail_code = 0;
    std::uint64_t fail_hash = 0;
    std::string hint;
    std::vector<std::uint64_t> gathered;

    std::atomic<std::int64_t> step{-1};
    std::atomic<const volatile int*> stop_flag{nullptr};
    std::atomic<double> timeout{300.0};
    // Fault injection for the tests: FLOWLAB_TEST_MPI_STALL_STEP=N stops this rank's
    // communication thread at its first gradient reduction of step N, as an MPI call that never
    // returns would (tests/distributed/mpi: the waiting thread's backstop ends the rank).
    const std::int64_t stall_step = [] {
        const char* v = std::getenv("FLOWLAB_TEST_MPI_STALL_STEP");
        return v && *v ? std::strtoll(v, nullptr, 10) : -1LL;
    }();
    std::atomic<std::uint64_t> busy_ns{0}, reductions{0}, bytes{0};
    int rank = 0, size = 1, node_size = 1;
    std::thread thread;

    // ---- the communication thread's own
    MPI_Comm comm = MPI_COMM_NULL, ctrl = MPI_COMM_NULL;
    std::int64_t posted = 0;
    struct Peer {
        std::int64_t in[3] = {0, 0, 0};
        MPI_Request in_rq = MPI_REQUEST_NULL;
        std::int64_t out[3] = {0, 0, 0};
        MPI_Request out_rq = MPI_REQUEST_NULL;
        bool dirty = false;
        std::int64_t err_out[4] = {0, 0, 0, 0};
        MPI_Request err_rq = MPI_REQUEST_NULL;
        std::int64_t seq = 0, step = -1;
        Clock::time_point heard = Clock::now();
        bool err = false;
        int err_code = 0;
        std::uint64_t err_hash = 0;
    };
    std::vector<Peer> peers;
    std::int64_t err_in[4] = {0, 0, 0, 0};
    MPI_Request err_in_rq = MPI_REQUEST_NULL;
    bool stuck_noted = false;
    Clock::time_point flag_seen{};  // when the stop flag was first seen set
    Clock::time_point last_beat = Clock::now();
    std::vector<float> scratch;  // the ring's incoming segment
    std::atomic<bool> caller_waiting{false};  // the calling thread is blocked in wait()
    std::mutex nap_m;
    std::condition_variable nap_cv;  // wakes a napping poll when the caller starts to wait

    // The pause between polls: while the calling thread computes, up to 0.5 ms - each wake-up
    // takes the core from the computation, and a reduction that overlaps the backward pass has
    // time; while it waits for us, at most 20 us (and a wait that begins wakes us at once).
    void nap(int polls) {
        const bool waiting = caller_waiting.load(std::memory_order_relaxed);
        const int us = std::min(waiting ? 20 : 500, 5 * (1 + (polls - 8) / 4));
        std::unique_lock<std::mutex> l(nap_m);
        if (waiting || caller_waiting.load(std::memory_order_relaxed)) {
            l.unlock();
            std::this_thread::sleep_for(std::chrono::microseconds(std::min(us, 20)));
            return;
        }
        nap_cv.wait_for(l, std::chrono::microseconds(us), [&] { return caller_waiting.load(); });
    }

    void run();
    // Polls until every request completes; false when the operation is abandoned (a peer or
    // this rank failed). Aborts the job past the timeout.
    bool await(MPI_Request* rqs, int n, const Op& op);
    // The ring sum of op (sum_f32, sum_f64) in place; false when abandoned.
    template <class T>
    bool ring_sum(const Op& op, MPI_Datatype type, std::vector<T>& in_buf);
    std::vector<double> scratch64;
    void post_receives();
    void service();
    void send_status();
    void execute(const Op& op);
    void complete(const Op& op);
    void peer_error(int q, int code, std::int64_t at_step);
    void decide_failure();
    void shutdown();
    std::string laggards(std::int64_t op_seq) const;
    [[noreturn]] void fatal(const std::string& what);
    void check(int rc, const char* call) {
        if (rc == MPI_SUCCESS) return;
        char text[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, text, &len);
        fatal(std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(len)));
    }

    Ticket submit(Op op);
    void wait(Ticket t);
    // A blocking sum in chunks of at most kChunk bytes (MPI counts are ints); waits for the last.
    template <typename T>
    void sum_in_chunks(Op::Kind kind, T* data, std::size_t n) {
        constexpr std::size_t step = kChunk / sizeof(T);
        Ticket last = 0;
        for (std::size_t i = 0; i < n || (n == 0 && i == 0); i += step) {
            Op op;
            op.kind = kind;
            op.data = data + i;
            op.count = std::min(step, n - i);
            last = submit(op);
            if (n == 0) break;
        }
        wait(last);
    }
};

// ------------------------------------------------------------------ the communication thread

void Runtime::Impl::run() {
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);  // short sleeps while polling stay short
    int provided = 0;
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        std::lock_guard<std::mutex> l(m);
        start_error = "MPI_Init_thread failed";
        started = true;
        done_cv.notify_all();
        return;
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    MPI_Comm_dup(MPI_COMM_WORLD, &ctrl);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(ctrl, MPI_ERRORS_RETURN);
    int r = 0, n = 1, local = 1;
    MPI_Comm_rank(comm, &r);
    MPI_Comm_size(comm, &n);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local);
    MPI_Comm_free(&node);
    peers.resize(static_cast<std::size_t>(n));
    post_receives();
    {
        std::lock_guard<std::mutex> l(m);
        rank = r;
        size = n;
        node_size = local;
        started = true;
        if (provided < MPI_THREAD_FUNNELED) start_error = "the MPI library does not provide MPI_THREAD_FUNNELED";
    }
    done_cv.notify_all();
    for (;;) {
        Op op;
        bool have = false, decide = false;
        {
            std::unique_lock<std::mutex> l(m);
            work_cv.wait_for(l, std::chrono::milliseconds(10),
                             [&] { return !queue.empty() || stopping || (fail_requested && !fail_decided); });
            if (fail_requested && !fail_decided)
                decide = true;
            else if (!queue.empty() && failed_rank < 0 && !fail_requested) {
                op = queue.front();
                have = true;
            } else if (stopping && queue.empty())
                break;
        }
        if (decide) {
            decide_failure();
            continue;
        }
        service();
        if (have) execute(op);
    }
    shutdown();
}

void Runtime::Impl::post_receives() {
    for (int q = 0; q < static_cast<int>(peers.size()); ++q) {
        if (q == rank) continue;
        Peer& p = peers[static_cast<std::size_t>(q)];
        check(MPI_Irecv(p.in, 3, MPI_INT64_T, q, kTagStatus, ctrl, &p.in_rq), "MPI_Irecv");
    }
    check(MPI_Irecv(err_in, 4, MPI_INT64_T, MPI_ANY_SOURCE, kTagError, ctrl, &err_in_rq), "MPI_Irecv");
}

// Takes in the peers' status and failure messages and sends ours again where it changed.
void Runtime::Impl::service() {
    if (since(last_beat) > kHeartbeatSeconds) send_status();
    for (int q = 0; q < static_cast<int>(peers.size()); ++q) {
        if (q == rank) continue;
        Peer& p = peers[static_cast<std::size_t>(q)];
        int flag = 0;
        if (p.in_rq != MPI_REQUEST_NULL) {
            check(MPI_Test(&p.in_rq, &flag, MPI_STATUS_IGNORE), "MPI_Test");
            if (flag) {
                p.seq = std::max(p.seq, p.in[0]);
                p.step = p.in[1];
                p.heard = Clock::now();
                check(MPI_Irecv(p.in, 3, MPI_INT64_T, q, kTagStatus, ctrl, &p.in_rq), "MPI_Irecv");
            }
        }
        if (p.out_rq != MPI_REQUEST_NULL) {
            check(MPI_Test(&p.out_rq, &flag, MPI_STATUS_IGNORE), "MPI_Test");
            if (flag && p.dirty) {
                p.dirty = false;
                p.out[0] = posted;
                p.out[1] = step.load();
                p.out[2] = rank;
                check(MPI_Isend(p.out, 3, MPI_INT64_T, q, kTagStatus, ctrl, &p.out_rq), "MPI_Isend");
            }
        }
        if (p.err_rq != MPI_REQUEST_NULL) check(MPI_Test(&p.err_rq, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    }
    int flag = 0;
    MPI_Status st;
    if (err_in_rq != MPI_REQUEST_NULL) {
        check(MPI_Test(&err_in_rq, &flag, &st), "MPI_Test");
        if (flag) {
            const int q = st.MPI_SOURCE;
            Peer& p = peers[static_cast<std::size_t>(q)];
            p.err = true;
            p.err_code = static_cast<int>(err_in[0]);
            std::memcpy(&p.err_hash, &err_in[1], sizeof p.err_hash);
            p.heard = Clock::now();
            peer_error(q, p.err_code, err_in[2]);
            check(MPI_Irecv(err_in, 4, MPI_INT64_T, MPI_ANY_SOURCE, kTagError, ctrl, &err_in_rq), "MPI_Irecv");
        }
    }
}

void Runtime::Impl::send_status() {
    last_beat = Clock::now();
    for (int q = 0; q < static_cast<int>(peers.size()); ++q) {
        if (q == rank) continue;
        Peer& p = peers[static_cast<std::size_t>(q)];
        if (p.out_rq != MPI_REQUEST_NULL) {
            p.dirty = true;  // sent when the previous one has left
            continue;
        }
        p.out[0] = posted;
        p.out[1] = step.load();
        p.out[2] = rank;
        check(MPI_Isend(p.out, 3, MPI_INT64_T, q, kTagStatus, ctrl, &p.out_rq), "MPI_Isend");
    }
}

// A peer reported its failure: every pending and future collective of this rank fails.
void Runtime::Impl::peer_error(int q, int code, std::int64_t at_step) {
    std::lock_guard<std::mutex> l(m);
    if (failed_rank >= 0) return;
    failed_rank = q;
    failed_code = code;
    failed_step = at_step;
    queue.clear();
    done_cv.notify_all();
}

// The ranks an operation waits for: those that have not started it, and those that started it
// but fell silent (no status for a few heartbeats: stopped or dead).
std::string Runtime::Impl::laggards(std::int64_t op_seq) const {
    std::string who;
    int count = 0;
    for (int q = 0; q < static_cast<int>(peers.size()); ++q) {
        if (q == rank) continue;
        const Peer& p = peers[static_cast<std::size_t>(q)];
        const double silent = since(p.heard);
        const bool joined = p.seq >= op_seq;
        if (joined && silent < kSilentSeconds) continue;
        who += std::string(count++ ? "; " : "") + "rank " + std::to_string(q) + ", which " +
               (joined ? "stopped answering" : "did not join it") + " (last heard from " + fmt_seconds(silent) +
               " ago" + (p.step >= 0 ? ", at step " + std::to_string(p.step) : std::string()) + ")";
    }
    return who;
}

bool Runtime::Impl::await(MPI_Request* rqs, int n, const Op& op) {
    const auto t0 = Clock::now();
    for (int polls = 0;; ++polls) {
        int flag = 0;
        check(MPI_Testall(n, rqs, &flag, MPI_STATUSES_IGNORE), "MPI_Testall");
        if (flag) return true;
        service();
        {
            std::lock_guard<std::mutex> l(m);
            if (failed_rank >= 0 || (fail_requested && !fail_decided)) return false;  // abandoned
        }
        const double waited = since(t0);
        if (waited > timeout.load()) {
            const std::string who = laggards(posted);
            const std::int64_t s = step.load();
            std::string hint_text;
            {
                std::lock_guard<std::mutex> l(m);
                hint_text = hint;
            }
            fatal((s >= 0 ? "step " + std::to_string(s) + ": " : std::string()) + "rank " + std::to_string(rank) +
                  " waited " + fmt_seconds(waited) + " (train.distributed.timeout_seconds) in " + describe(op) +
                  " for " + (who.empty() ? std::string("the other ranks, which all joined it but did not complete it") : who) +
                  ": crashed, hung or stopped? Aborting the job" + (hint_text.empty() ? "" : "; " + hint_text));
        }
        // A signal while a silent peer holds us up: mpirun is about to end the job (a rank
        // died), so say which rank it waits for while there is time.
        // (Measured from when the flag is first seen: a rank that was stopped and is now being
        // ended has nothing to say.)
        const volatile int* flag_ptr = stop_flag.load();
        if (flag_ptr && *flag_ptr && flag_seen.time_since_epoch().count() == 0) flag_seen = Clock::now();
        if (!stuck_noted && flag_ptr && *flag_ptr && since(flag_seen) > 0.25 && waited > 0.25) {
            stuck_noted = true;
            std::string who = laggards(posted);
            if (who.empty()) who = "the other ranks";
            const std::int64_t s = step.load();
            std::fprintf(stderr, "flowlab: rank %d: stopped by a signal%s while waiting in %s for %s\n", rank,
                         s >= 0 ? (" at step " + std::to_string(s)).c_str() : "", describe(op), who.c_str());
            std::fflush(stderr);
        }
        // Poll at once for a few rounds (the next message is often already there), then in
        // sleeps: a thread that spins on MPI_Test holds a core that the computation, or the peer
        // that must answer, needs - on a busy or oversubscribed machine a spinning exchange of
        // 512 KB was measured at 8 ms, against 0.3 ms with sleeps of a few microseconds.
        if (polls >= 8) nap(polls);
    }
}

template <class T>
bool Runtime::Impl::ring_sum(const Op& op, MPI_Datatype type, std::vector<T>& in_buf) {
    const int n_ranks = size;
    T* buf = static_cast<T*>(op.data);
    const auto n = static_cast<std::int64_t>(op.count);
    auto seg = [&](int s) { return row_share(n, (s % n_ranks + n_ranks) % n_ranks, n_ranks); };
    in_buf.resize(static_cast<std::size_t>(seg(0).rows));
    const int right = (rank + 1) % n_ranks, left = (rank + n_ranks - 1) % n_ranks;
    // Reduce-scatter: after step k, rank r holds the sum of k + 2 ranks' segment r - k - 1.
    for (int k = 0; k + 1 < n_ranks; ++k) {
        const RowShare out = seg(rank - k), in = seg(rank - k - 1);
        MPI_Request rq[2];
        check(MPI_Irecv(in_buf.data(), static_cast<int>(in.rows), type, left, kTagRing, comm, &rq[0]), "MPI_Irecv");
        check(MPI_Isend(buf + out.offset, static_cast<int>(out.rows), type, right, kTagRing, comm, &rq[1]), "MPI_Isend");
        if (!await(rq, 2, op)) return false;
        T* dst = buf + in.offset;
        const T* src = in_buf.data();
        for (std::int64_t i = 0; i < in.rows; ++i) dst[i] = src[i] + dst[i];
    }
    // All-gather: every rank's complete segment travels once around the ring.
    for (int k = 0; k + 1 < n_ranks; ++k) {
        const RowShare out = seg(rank + 1 - k), in = seg(rank - k);
        MPI_Request rq[2];
        check(MPI_Irecv(buf + in.offset, static_cast<int>(in.rows), type, left, kTagRing, comm, &rq[0]), "MPI_Irecv");
        check(MPI_Isend(buf + out.offset, static_cast<int>(out.rows), type, right, kTagRing, comm, &rq[1]), "MPI_Isend");
        if (!await(rq, 2, op)) return false;
    }
    return true;
}

void Runtime::Impl::execute(const Op& op) {
    if (stall_step >= 0 && op.kind == Op::sum_f32 && step.load() >= stall_step)
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    MPI_Request rq = MPI_REQUEST_NULL;
    const int count = static_cast<int>(op.count);
    switch (op.kind) {
        case Op::sum_f32:
        case Op::sum_f64: break;  // the ring below
        case Op::bcast: check(MPI_Ibcast(op.data, count, MPI_BYTE, op.root, comm, &rq), "MPI_Ibcast"); break;
        case Op::gather_u64: {
            std::lock_guard<std::mutex> l(m);
            gathered.assign(static_cast<std::size_t>(size), 0);
        }
            check(MPI_Iallgather(&op.value, 1, MPI_UINT64_T, gathered.data(), 1, MPI_UINT64_T, comm, &rq),
                  "MPI_Iallgather");
            break;
        case Op::barrier: check(MPI_Ibarrier(comm, &rq), "MPI_Ibarrier"); break;
    }
    ++posted;
    send_status();
    const auto t0 = Clock::now();
    const bool done = op.kind == Op::sum_f32   ? ring_sum(op, MPI_FLOAT, scratch)
                      : op.kind == Op::sum_f64 ? ring_sum(op, MPI_DOUBLE, scratch64)
                                               : await(&rq, 1, op);
    if (!done) return;  // abandoned: the process is ending
    busy_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    if (op.kind == Op::sum_f32 || op.kind == Op::sum_f64) {
        ++reductions;
        bytes += op.count * (op.kind == Op::sum_f32 ? 4 : 8);
    }
    complete(op);
}

void Runtime::Impl::complete(const Op& op) {
    std::lock_guard<std::mutex> l(m);
    if (!queue.empty() && queue.front().ticket == op.ticket) queue.pop_front();
    completed = op.ticket;
    done_cv.notify_all();
}

// This rank failed: tell every peer, learn whether a lower rank failed the same way (then it
// prints, not us), and let the messages leave.
void Runtime::Impl::decide_failure() {
    int code = 0;
    std::uint64_t h = 0;
    {
        std::lock_guard<std::mutex> l(m);
        code = fail_code;
        h = fail_hash;
    }
    for (int q = 0; q < static_cast<int>(peers.size()); ++q) {
        if (q == rank) continue;
        Peer& p = peers[static_cast<std::size_t>(q)];
        p.err_out[0] = code;
        std::memcpy(&p.err_out[1], &h, sizeof h);
        p.err_out[2] = step.load();
        p.err_out[3] = rank;
        if (p.err_rq == MPI_REQUEST_NULL) MPI_Isend(p.err_out, 4, MPI_INT64_T, q, kTagError, ctrl, &p.err_rq);
    }
    // A lower rank is settled once it reported a failure, or posted more collectives than this
    // one (it went past the point where this rank failed). An error every rank meets at the same
    // place is thus seen at once; a rank-local one waits at most a few seconds.
    const double grace = std::min(3.0, timeout.load());
    const auto t0 = Clock::now();
    while (since(t0) < grace) {
        service();
        bool settled = true;
        for (int q = 0; q < rank; ++q) {
            const Peer& p = peers[static_cast<std::size_t>(q)];
            if (!p.err && p.seq <= posted) settled = false;
        }
        if (settled) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    bool print = true;
    for (int q = 0; q < rank; ++q) {
        const Peer& p = peers[static_cast<std::size_t>(q)];
        if (p.err && p.err_code == code && p.err_hash == h) print = false;
    }
    // Eager messages this small leave at once; give them a moment before the process ends.
    const auto t1 = Clock::now();
    while (since(t1) < 0.2) {
        bool pending = false;
        for (auto& p : peers) {
            int flag = 1;
            if (p.err_rq != MPI_REQUEST_NULL) MPI_Test(&p.err_rq, &flag, MPI_STATUS_IGNORE);
            pending = pending || !flag;
        }
        if (!pending) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::lock_guard<std::mutex> l(m);
    fail_decided = true;
    fail_print = print;
    done_cv.notify_all();
}

void Runtime::Impl::fatal(const std::string& what) {
    std::fprintf(stderr, "flowlab: distributed error: %s\n", what.c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    MPI_Abort(MPI_COMM_WORLD, kFaultExitCode);
    std::_Exit(kFaultExitCode);
}

void Runtime::Impl::shutdown() {
    auto cancel = [](MPI_Request& rq) {
        if (rq == MPI_REQUEST_NULL) return;
        MPI_Cancel(&rq);
        MPI_Wait(&rq, MPI_STATUS_IGNORE);
    };
    for (auto& p : peers) cancel(p.in_rq);
    cancel(err_in_rq);
    // Status messages already sent are small and eager: they complete locally.
    const auto t0 = Clock::now();
    for (auto& p : peers)
        for (MPI_Request* rq : {&p.out_rq, &p.err_rq}) {
            int flag = 0;
            while (*rq != MPI_REQUEST_NULL && since(t0) < 1.0) {
                MPI_Test(rq, &flag, MPI_STATUS_IGNORE);
                if (!flag) std::this_thread::sleep_for(std::chrono::microseconds(100));
            }
            if (*rq != MPI_REQUEST_NULL) MPI_Request_free(rq);
        }
    MPI_Comm_free(&comm);
    MPI_Comm_free(&ctrl);
    MPI_Finalize();
}

// ------------------------------------------------------------------ the calling thread

Runtime::Ticket Runtime::Impl::submit(Op op) {
    std::lock_guard<std::mutex> l(m);
    if (failed_rank >= 0)
        throw PeerFailed("rank " + std::to_string(failed_rank) + " failed", failed_rank, failed_code);
    op.ticket = ++submitted;
    queue.push_back(op);
    work_cv.notify_one();
    return op.ticket;
}

void Runtime::Impl::wait(Ticket t) {
    std::unique_lock<std::mutex> l(m);
    if (completed >= t) return;
    {
        std::lock_guard<std::mutex> n(nap_m);
        caller_waiting = true;
    }
    nap_cv.notify_all();
    // The communication thread ends the job at the timeout, but only between MPI calls: a peer
    // that died mid-transfer can leave one of them stuck inside the library (seen once: a rank
    // that aborted on a corrupted heap held the other in a reduction for 14 minutes against a
    // timeout of 5). So the waiting thread gives up too, a little later, without calling MPI:
    // it ends this rank, and the launcher the job.
    const auto t0 = Clock::now();
    while (!done_cv.wait_for(l, std::chrono::seconds(1), [&] { return completed >= t || failed_rank >= 0; })) {
        const double waited = since(t0), limit = timeout.load() + kBackstopSeconds;
        if (waited <= limit) continue;
        const std::int64_t s = step.load();
        std::fprintf(stderr,
                     "flowlab: distributed error: %srank %d waited %s for a collective that the MPI library neither "
                     "completed nor gave up (train.distributed.timeout_seconds is %s): a crashed or hung rank? "
                     "Ending this rank%s%s\n",
                     s >= 0 ? ("step " + std::to_string(s) + ": ").c_str() : "", rank, fmt_seconds(waited).c_str(),
                     fmt_seconds(timeout.load()).c_str(), hint.empty() ? "" : "; ", hint.c_str());
        std::fflush(stderr);
        std::fflush(stdout);
        std::_Exit(kFaultExitCode);
    }
    caller_waiting = false;
    if (completed < t)
        throw PeerFailed("rank " + std::to_string(failed_rank) + " failed" +
                             (failed_step >= 0 ? " at step " + std::to_string(failed_step) : std::string()),
                         failed_rank, failed_code);
}

Runtime::Runtime() : impl_(std::make_unique<Impl>()) {}

std::unique_ptr<Runtime> Runtime::start() {
    std::unique_ptr<Runtime> rt(new Runtime());
    Impl& d = *rt->impl_;
    d.thread = std::thread([&d] { d.run(); });
    std::unique_lock<std::mutex> l(d.m);
    d.done_cv.wait(l, [&] { return d.started; });
    if (!d.start_error.empty()) {
        const std::string e = d.start_error;
        l.unlock();
        if (d.thread.joinable()) {
            {
                std::lock_guard<std::mutex> g(d.m);
                d.stopping = true;
            }
            d.work_cv.notify_all();
            d.thread.join();
        }
        throw Error("cannot start MPI: " + e);
    }
    return rt;
}

Runtime::~Runtime() {
    if (!impl_->thread.joinable()) return;
    {
        std::lock_guard<std::mutex> l(impl_->m);
        impl_->stopping = true;
    }
    impl_->work_cv.notify_all();
    impl_->thread.join();
}

int Runtime::rank() const { return impl_->rank; }
int Runtime::size() const { return impl_->size; }
int Runtime::node_size() const { return impl_->node_size; }

void Runtime::allreduce_sum(float* data, std::size_t n) { impl_->sum_in_chunks(Op::sum_f32, data, n); }
void Runtime::allreduce_sum(double* data, std::size_t n) { impl_->sum_in_chunks(Op::sum_f64, data, n); }

void Runtime::broadcast(void* data, std::size_t bytes, int root) {
    Ticket last = 0;
    for (std::size_t i = 0; i < bytes || (bytes == 0 && i == 0); i += kChunk) {
        Op op;
        op.kind = Op::bcast;
        op.data = static_cast<char*>(data) + i;
        op.count = std::min(kChunk, bytes - i);
        op.root = root;
        last = impl_->submit(op);
        if (bytes == 0) break;
    }
    impl_->wait(last);
}

std::vector<std::uint64_t> Runtime::allgather(std::uint64_t value) {
    Op op;
    op.kind = Op::gather_u64;
    op.value = value;
    impl_->wait(impl_->submit(op));
    std::lock_guard<std::mutex> l(impl_->m);
    return impl_->gathered;
}

void Runtime::barrier() {
    Op op;
    op.kind = Op::barrier;
    impl_->wait(impl_->submit(op));
}

Runtime::Ticket Runtime::start_allreduce_sum(float* data, std::size_t n) {
    if (n > kChunk / 4) throw Error("start_allreduce_sum: a bucket of " + std::to_string(n) + " floats is too large");
    Op op;
    op.kind = Op::sum_f32;
    op.data = data;
    op.count = n;
    return impl_->submit(op);
}

void Runtime::wait(Ticket ticket) { impl_->wait(ticket); }
void Runtime::set_step(std::int64_t step) { impl_->step = step; }

void Runtime::set_fault_hint(const std::string& hint) {
    std::lock_guard<std::mutex> l(impl_->m);
    impl_->hint = hint;
}

void Runtime::set_stop_flag(const volatile int* flag) { impl_->stop_flag = flag; }

Communicator::Stats Runtime::stats() const {
    Stats s;
    s.busy_seconds = static_cast<double>(impl_->busy_ns.load()) * 1e-9;
    s.reductions = impl_->reductions.load();
    s.bytes = impl_->bytes.load();
    return s;
}

void Runtime::set_timeout(double seconds) { impl_->timeout = seconds; }

void Runtime::fail(int exit_code, const std::string& message, bool peer_failed) {
    Impl& d = *impl_;
    std::fflush(stdout);
    if (!peer_failed && d.size > 1) {
        std::unique_lock<std::mutex> l(d.m);
        d.fail_requested = true;
        d.fail_code = exit_code;
        d.fail_hash = hash_text(message);
        d.work_cv.notify_all();
        // The communication thread answers within the grace; past that, print anyway.
        d.done_cv.wait_for(l, std::chrono::seconds(10), [&] { return d.fail_decided; });
        const bool print = !d.fail_decided || d.fail_print;
        l.unlock();
        if (print) {
            if (d.rank == 0)
                std::fprintf(stderr, "%s\n", message.c_str());
            else
                std::fprintf(stderr, "[rank %d] %s\n", d.rank, message.c_str());
            std::fflush(stderr);
            std::_Exit(exit_code);
        }
    } else if (!peer_failed) {
        std::fprintf(stderr, "%s\n", message.c_str());
        std::fflush(stderr);
        std::_Exit(exit_code);
    }
    // Another rank prints (or printed) the error and ends first; the launcher then ends this
    // one. Should it not (a launcher that lets the others run), end after a while anyway.
    std::this_thread::sleep_for(std::chrono::seconds(10));
    std::_Exit(exit_code);
}

int Runtime::finish(int exit_code) {
    barrier();
    {
        std::lock_guard<std::mutex> l(impl_->m);
        impl_->stopping = true;
    }
    impl_->work_cv.notify_all();
    impl_->thread.join();
    return exit_code;
}

}  // namespace flowlab::mpi

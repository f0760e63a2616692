#include "flowlab/stop_signals.hpp"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>

namespace flowlab {

namespace {

constexpr int kSignals[2] = {SIGINT, SIGTERM};

std::atomic<volatile int*> g_flag{nullptr};
std::once_flag g_once;
struct sigaction g_initial[2];  // each signal's disposition when routing began

sigset_t stop_set() {
    sigset_t set;
    sigemptyset(&set);
    for (int s : kSignals) sigaddset(&set, s);
    return set;
}

// Outside a scope: what the signal would have done had it not been blocked.
void act_as_initially(int sig, const siginfo_t& info) {
    const struct sigaction& a = g_initial[sig == SIGINT ? 0 : 1];
    if ((a.sa_flags & SA_SIGINFO) != 0) {
        siginfo_t copy = info;
        a.sa_sigaction(sig, &copy, nullptr);
        return;
    }
    if (a.sa_handler == SIG_IGN) return;
    if (a.sa_handler != SIG_DFL) {
        a.sa_handler(sig);
        return;
    }
    // The default action ends the process as killed by the signal, which a shell or a launcher
    // reads from the exit status: take the default back and let the signal through, here only.
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, nullptr);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    ::pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    ::raise(sig);
    ::_exit(128 + sig);  // not reached
}

void watch() {
    const sigset_t set = stop_set();
    for (;;) {
        siginfo_t info;
        const int sig = ::sigwaitinfo(&set, &info);
        if (sig < 0) continue;  // EINTR
        if (volatile int* f = g_flag.load()) {
            __atomic_store_n(f, 1, __ATOMIC_RELEASE);  // read by the training thread
            continue;
        }
        act_as_initially(sig, info);
    }
}

}  // namespace

void route_stop_signals() {
    std::call_once(g_once, [] {
        for (int i = 0; i < 2; ++i) ::sigaction(kSignals[i], nullptr, &g_initial[i]);
        const sigset_t set = stop_set();
        ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
        std::thread(watch).detach();
    });
}

StopSignalScope::StopSignalScope(volatile int* flag) {
    route_stop_signals();
    previous_ = g_flag.exchange(flag);
}

StopSignalScope::~StopSignalScope() { g_flag.store(previous_); }

}  // namespace flowlab

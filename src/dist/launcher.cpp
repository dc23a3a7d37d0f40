// Implements: dist/launcher.h.
#include "dist/launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace t2i::dist {

namespace {

volatile std::sig_atomic_t g_signal = 0, g_signal_count = 0;

extern "C" void on_launcher_signal(int sig) {
    g_signal       = sig;
    g_signal_count = g_signal_count + 1;
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
               strsignal(WTERMSIG(status)) + ")";
    return "ended with status " + std::to_string(status);
}

int exit_code_of(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

}  // namespace

int run_workers(const LaunchOptions& o) {
    struct sigaction sa {};
    sa.sa_handler = on_launcher_signal;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
    // Signals stay blocked while forking, so none is lost between fork and the child's reset.
    sigset_t stop_signals, previous;
    sigemptyset(&stop_signals);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&stop_signals, sig);
    sigprocmask(SIG_BLOCK, &stop_signals, &previous);

    const int nproc = o.nproc_per_node, nnodes = o.nnodes, node_rank = o.node_rank;
    const int stop_timeout = o.stop_timeout;
    const int world_size   = nnodes * nproc;
    const pid_t launcher   = getpid();
    std::map<pid_t, int> rank_of;  // running workers
    // Each worker leads its own process group: signals reach what it started too.
    auto signal_workers = [&](int sig) {
        for (const auto& [pid, rank] : rank_of)
            if (kill(-pid, sig) != 0) kill(pid, sig);
    };
    for (int local = 0; local < nproc; ++local) {
        const int rank  = node_rank * nproc + local;
        const pid_t pid = fork();
        if (pid < 0) {
            const std::string error = std::strerror(errno);
            signal_workers(SIGKILL);
            throw std::runtime_error("fork failed: " + error);
        }
        if (pid == 0) {
            // Own process group: a terminal's Ctrl-C reaches the launcher only, which forwards it
            // once (a second SIGINT would stop a worker without its checkpoint). If the launcher
            // dies, the worker gets SIGTERM: it checkpoints and stops.
            setpgid(0, 0);
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != launcher) _exit(1);
            for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, SIG_DFL);
            sigprocmask(SIG_SETMASK, &previous, nullptr);
            setenv("RANK", std::to_string(rank).c_str(), 1);
            setenv("WORLD_SIZE", std::to_string(world_size).c_str(), 1);
            setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
            setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
            setenv("GROUP_RANK", std::to_string(node_rank).c_str(), 1);
            setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
            setenv("MASTER_PORT", std::to_string(o.master_port).c_str(), 1);
            std::vector<std::string> command = o.command;
            std::vector<char*> argv;
            for (auto& a : command) argv.push_back(a.data());
            argv.push_back(nullptr);
            execvp(argv[0], argv.data());
            std::fprintf(stderr, "t2i launch: rank %d: cannot run '%s': %s\n", rank,
                         o.command[0].c_str(), std::strerror(errno));
            _exit(127);
        }
        setpgid(pid, pid);  // also here: no race with a signal sent right after fork
        rank_of[pid] = rank;
    }
    sigprocmask(SIG_SETMASK, &previous, nullptr);
    std::fprintf(stderr, "t2i launch: started %d worker(s), ranks %d-%d of %d\n", nproc,
                 node_rank * nproc, node_rank * nproc + nproc - 1, world_size);

    int result = 0, forwarded = 0;
    bool stopping      = false;
    auto stop_deadline = std::chrono::steady_clock::time_point::max();
    while (!rank_of.empty()) {
        if (g_signal_count > forwarded) {
            if (forwarded == 0) {
                // The first Ctrl-C / SIGTERM / SIGHUP: every worker checkpoints and stops.
                const int sig = g_signal == SIGINT ? SIGINT : SIGTERM;
                std::fprintf(stderr,
                             "t2i launch: signal %d: stopping %zu worker(s) after their current "
                             "step (again to kill them at once)\n",
                             int(g_signal), rank_of.size());
                signal_workers(sig);
            } else {
                std::fprintf(stderr, "t2i launch: second signal: killing %zu worker(s)\n",
                             rank_of.size());
                signal_workers(SIGKILL);
            }
            forwarded = g_signal_count;
        }
        if (std::chrono::steady_clock::now() > stop_deadline) {
            std::fprintf(stderr, "t2i launch: %zu worker(s) still running after %ds: SIGKILL\n",
                         rank_of.size(), stop_timeout);
            signal_workers(SIGKILL);
            stop_deadline = std::chrono::steady_clock::time_point::max();
        }
        int status      = 0;
        const pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0 || (pid < 0 && errno == EINTR)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            continue;
        }
        if (pid < 0) break;  // no children left
        auto it = rank_of.find(pid);
        if (it == rank_of.end()) continue;
        const int rank = it->second;
        rank_of.erase(it);
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        // 130: the worker stopped on purpose after writing a checkpoint (a forwarded signal, or
        // --stop_after_steps); every rank does so at the same step.
        const bool interrupted = WIFEXITED(status) && WEXITSTATUS(status) == 130;
        if (ok || stopping) continue;
        if (interrupted) {
            result = 130;
            continue;
        }
        result = exit_code_of(status);
        if (result == 0) result = 1;
        stopping = true;
        std::fprintf(stderr,
                     "t2i launch: error: rank %d (pid %d) %s; stopping the other %zu worker(s) "
                     "(SIGTERM, SIGKILL after %ds)\n",
                     rank, int(pid), describe_status(status).c_str(), rank_of.size(), stop_timeout);
        signal_workers(SIGTERM);
        stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(stop_timeout);
    }
    if (result != 0 && result != 130)
        std::fprintf(stderr, "t2i launch: the job failed (exit code %d)\n", result);
    return result;
}

}  // namespace t2i::dist

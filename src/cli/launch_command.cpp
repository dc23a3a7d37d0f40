// Implements: `t2i launch`: torchrun's local agent without Python. Starts --nproc_per_node
// worker processes of COMMAND with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT), forwards SIGINT / SIGTERM / SIGHUP
// to them, and when one fails stops the others (SIGTERM, then SIGKILL after --stop_timeout)
// and exits non-zero naming the rank. Mirrors torch/distributed/run.py +
// torch/distributed/elastic/agent/server/local_elastic_agent.py (without restarts).
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
#include <string>
#include <thread>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/machine.h"

namespace t2i::cli {

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

int launch_command(const std::vector<std::string>& args) {
    int nproc = 0, nnodes = 1, node_rank = 0, master_port = 29500, stop_timeout = 30;
    std::string master_addr = "127.0.0.1";
    std::vector<std::string> command;
    ArgParser p(
        "t2i launch --nproc_per_node N [--nnodes M --node_rank R --master_addr A "
        "--master_port P] -- COMMAND [ARGS...]",
        "Start N local worker processes of COMMAND with torchrun's environment "
        "variables. COMMAND is a program (`-- t2i train ...`), or a t2i subcommand "
        "(`-- train ...`) run by this same binary. Run the same line on each of M "
        "machines with its --node_rank.");
    p.add_option("nproc_per_node", &nproc, "N", "Worker processes on this machine (GPUs).");
    p.add_option("nnodes", &nnodes, "M", "Machines in the job.");
    p.add_option("node_rank", &node_rank, "R", "This machine's index in [0, M).");
    p.add_option("master_addr", &master_addr, "A", "Address of the machine with --node_rank 0.");
    p.add_option("master_port", &master_port, "P",
                 "Free TCP port on that machine for the rendezvous.");
    p.add_option("stop_timeout", &stop_timeout, "S",
                 "Seconds the other workers get to stop after SIGTERM before SIGKILL.");
    p.add_positionals(&command, "COMMAND", "The program and its arguments, after --.", 1);
    if (!p.parse(args)) return 0;
    // Bounded so that ranks (node_rank x nproc + local) and the world size fit in an int.
    if (nproc < 1 || nproc > max_useful_threads())
        throw UsageError(
            "--nproc_per_node must be in [1, " + std::to_string(max_useful_threads()) +
            "] on this machine (4 per core; each process loads the whole model), got " +
            std::to_string(nproc));
    if (nnodes < 1 || nnodes > (1 << 20))
        throw UsageError("--nnodes must be in [1, 1048576], got " + std::to_string(nnodes));
    if (node_rank < 0 || node_rank >= nnodes)
        throw UsageError("--node_rank must be in [0, --nnodes = " + std::to_string(nnodes) +
                         "), got " + std::to_string(node_rank));
    if (master_port < 1 || master_port > 65535)
        throw UsageError("--master_port must be a TCP port (1-65535), got " +
                         std::to_string(master_port));
    if (stop_timeout < 0 || stop_timeout > 86400)
        throw UsageError("--stop_timeout must be in [0, 86400] seconds, got " +
                         std::to_string(stop_timeout));

    // `-- train ARGS` runs this binary's train command (by its real path, so that `ps` shows
    // it).
    if (is_subcommand(command[0])) {
        std::vector<char> self(4096, '\0');
        const ssize_t n = readlink("/proc/self/exe", self.data(), self.size() - 1);
        command.insert(command.begin(),
                       n > 0 ? std::string(self.data(), size_t(n)) : std::string("/proc/self/exe"));
    }

    struct sigaction sa {};
    sa.sa_handler = on_launcher_signal;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
    // Signals stay blocked while forking, so none is lost between fork and the child's reset.
    sigset_t stop_signals, previous;
    sigemptyset(&stop_signals);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&stop_signals, sig);
    sigprocmask(SIG_BLOCK, &stop_signals, &previous);

    const int world_size = nnodes * nproc;
    const pid_t launcher = getpid();
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
            setenv("MASTER_ADDR", master_addr.c_str(), 1);
            setenv("MASTER_PORT", std::to_string(master_port).c_str(), 1);
            std::vector<char*> argv;
            for (auto& a : command) argv.push_back(a.data());
            argv.push_back(nullptr);
            execvp(argv[0], argv.data());
            std::fprintf(stderr, "t2i launch: rank %d: cannot run '%s': %s\n", rank,
                         command[0].c_str(), std::strerror(errno));
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

}  // namespace t2i::cli

// Implements: `t2i launch` (CLI.md): its flags, checked (ranks and the world size fit in an int),
// then dist::run_workers (dist/launcher.h), torchrun's local agent without Python.
#include <unistd.h>

#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "dist/launcher.h"
#include "util/machine.h"

namespace t2i::cli {

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

    dist::LaunchOptions o;
    o.nproc_per_node = nproc;
    o.nnodes         = nnodes;
    o.node_rank      = node_rank;
    o.master_addr    = master_addr;
    o.master_port    = master_port;
    o.stop_timeout   = stop_timeout;
    o.command        = command;
    return dist::run_workers(o);
}

}  // namespace t2i::cli

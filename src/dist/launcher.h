// Implements: the process supervision of `t2i launch`, torchrun's local agent without Python:
// starts the worker processes with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT), forwards SIGINT / SIGTERM / SIGHUP to
// them once (a second signal kills), and when one fails stops the others (SIGTERM, then SIGKILL
// after stop_timeout) and returns non-zero naming the rank. Mirrors torch/distributed/run.py +
// torch/distributed/elastic/agent/server/local_elastic_agent.py (without restarts).
// cli/launch_command.cpp parses and checks the flags.
#pragma once

#include <string>
#include <vector>

namespace t2i::dist {

struct LaunchOptions {
    int nproc_per_node      = 1;
    int nnodes              = 1;
    int node_rank           = 0;
    std::string master_addr = "127.0.0.1";
    int master_port         = 29500;
    int stop_timeout        = 30;      // seconds between SIGTERM and SIGKILL
    std::vector<std::string> command;  // program and arguments (a path or a name on PATH)
};

// Runs the workers until all have ended; returns the job's exit code: 0, 130 when they stopped
// on purpose after a checkpoint (a forwarded signal), else the first failing worker's code.
// Throws when a worker cannot be started (the started ones are killed).
int run_workers(const LaunchOptions& options);

}  // namespace t2i::dist

// Implements: the list of `t2i` subcommands. Each takes its arguments after the command name and
// returns the process exit code; library errors propagate as exceptions to main.
#pragma once

#include <string>
#include <vector>

namespace t2i::cli {

int inspect_command(const std::vector<std::string>& args);
int tokenize_command(const std::vector<std::string>& args);
int train_command(const std::vector<std::string>& args);
int train_lora_command(const std::vector<std::string>& args);
int generate_command(const std::vector<std::string>& args);
int init_model_command(const std::vector<std::string>& args);
int demo_data_command(const std::vector<std::string>& args);
int launch_command(const std::vector<std::string>& args);
int train_vae_command(const std::vector<std::string>& args);
int image_grid_command(const std::vector<std::string>& args);
int plot_loss_command(const std::vector<std::string>& args);
int convert_command(const std::vector<std::string>& args);

// A t2i command `t2i launch` runs with this same binary (every command but launch).
bool is_subcommand(const std::string& name);

}  // namespace t2i::cli

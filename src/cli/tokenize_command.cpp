// Implements: `t2i tokenize --model DIR [--mode ftfy|basic] PROMPT...` (CLI.md): one JSON line
// per prompt with the ids transformers' CLIPTokenizer gives (padding to model_max_length,
// truncation) and the length before padding.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/commands.h"
#include "io/file_util.h"
#include "tokenizer/clip_tokenizer.h"

namespace t2i::cli {

int tokenize_command(const std::vector<std::string>& args) {
    std::string model, mode = "ftfy";
    std::vector<std::string> prompts;
    ArgParser parser("t2i tokenize --model DIR [--mode ftfy|basic] PROMPT [PROMPT ...]",
                     "Print one JSON object per prompt: {\"prompt\", \"input_ids\", \"length\"}. "
                     "A prompt that begins with '-' goes after --.");
    parser.add_option("model", &model, "DIR",
                      "Model folder (its tokenizer/ is used) or a tokenizer folder.");
    parser.add_choice(
        "mode", &mode, {"ftfy", "basic"},
        "Text cleaning as transformers does with ftfy installed (ftfy) or without (basic).");
    parser.add_positionals(&prompts, "PROMPT", "Prompts to tokenize.", 1);
    if (!parser.parse(args)) return 0;
    if (model.empty()) throw UsageError("--model is required");
    const std::string dir = io::file_exists(model + "/vocab.json") ? model : model + "/tokenizer";
    if (!io::dir_exists(dir))
        throw std::runtime_error("'" + model + "' has no tokenizer/ folder and no vocab.json");
    const auto tok        = tokenizer::CLIPTokenizer::from_pretrained(dir);
    const auto clean_mode = tokenizer::parse_clean_mode(mode);
    for (const auto& p : prompts) {
        const auto out = tok(p, clean_mode);
        nlohmann::json line{{"prompt", p}, {"input_ids", out.input_ids}, {"length", out.length}};
        std::printf("%s\n",
                    line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    return 0;
}

}  // namespace t2i::cli

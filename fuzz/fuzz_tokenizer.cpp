// Fuzz target: a tokenizer folder (tokenizer/clip_tokenizer: vocab.json, merges.txt,
// tokenizer_config.json) and a prompt encoded with it, the parts separated by "\xFF\xFE\xFD".
#include "fuzz_target.h"
#include "tokenizer/clip_tokenizer.h"

T2I_FUZZ_TARGET(tokenizer) {
    const auto parts      = t2i::fuzz::split_parts(data, size, 4);
    const std::string dir = t2i::fuzz::scratch_dir();
    t2i::fuzz::write_file(dir + "/vocab.json", parts[0]);
    t2i::fuzz::write_file(dir + "/merges.txt", parts[1]);
    if (!parts[2].empty()) t2i::fuzz::write_file(dir + "/tokenizer_config.json", parts[2]);
    const auto tok = t2i::tokenizer::CLIPTokenizer::from_pretrained(dir);
    for (auto mode : {t2i::tokenizer::TextCleanMode::kFtfy, t2i::tokenizer::TextCleanMode::kBasic})
        (void)tok(parts[3], mode);
}

// Fuzz target: any prompt or caption through the real CLIP tokenizer (ftfy-style cleaning,
// Unicode normalization, the pre-tokenizer pattern, BPE), as training captions and `t2i
// generate --prompt` reach it.
#include "fuzz_target.h"
#include "tokenizer/clip_tokenizer.h"

T2I_FUZZ_TARGET(prompt) {
    static const auto tok =
        t2i::tokenizer::CLIPTokenizer::from_pretrained(T2I_FIXTURES_DIR "/clip-tokenizer");
    const std::string text(reinterpret_cast<const char*>(data), size);
    for (auto mode : {t2i::tokenizer::TextCleanMode::kFtfy, t2i::tokenizer::TextCleanMode::kBasic})
        (void)tok(text, mode);
}

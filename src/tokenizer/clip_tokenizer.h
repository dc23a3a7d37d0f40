// Implements: transformers' slow CLIPTokenizer (models/clip/tokenization_clip.py) plus the parts of
// PreTrainedTokenizer it relies on (tokenization_utils.py: added tokens are split out of the text
// before cleaning and BPE; truncation and "max_length" padding). Byte-level BPE after
// bytes_to_unicode, "</w>" end-of-word, merges ranked by line. Reads a diffusers `tokenizer/`
// folder at runtime: vocab.json, merges.txt, and optionally tokenizer_config.json,
// special_tokens_map.json and added_tokens.json.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/text_clean.h"

namespace t2i::tokenizer {

// GPT-2/CLIP bytes_to_unicode(): byte b -> a printable code point (printable Latin-1 bytes map to
// themselves, the other 68 to U+0100..U+0143).
std::array<char32_t, 256> bytes_to_unicode();

struct TokenizerOutput {
    std::vector<int64_t> input_ids;       // [model_max_length]
    std::vector<int64_t> attention_mask;  // [model_max_length], 1 for real tokens, 0 for padding
    size_t length = 0;                    // ids before padding (BOS and EOS included)
};

class CLIPTokenizer {
  public:
    static CLIPTokenizer from_pretrained(const std::string& tokenizer_dir);

    // BPE token strings (byte-level unicode) without BOS/EOS; added tokens appear verbatim.
    std::vector<std::string> tokenize(const std::string& text, TextCleanMode mode) const;
    // BOS + ids + EOS, no truncation.
    std::vector<int64_t> encode(const std::string& text, TextCleanMode mode) const;
    // padding="max_length", max_length=model_max_length, truncation=True: BOS + the first
    // model_max_length - 2 ids + EOS, then pad_token_id.
    TokenizerOutput operator()(const std::string& text,
                               TextCleanMode mode = TextCleanMode::kFtfy) const;
    // I64 [N, model_max_length] input ids of operator() for each text.
    torch::Tensor batch_input_ids(const std::vector<std::string>& texts,
                                  TextCleanMode mode = TextCleanMode::kFtfy) const;

    int64_t model_max_length() const { return model_max_length_; }
    int64_t vocab_size() const { return static_cast<int64_t>(encoder_.size()); }  // vocab.json
    int64_t max_token_id() const { return max_id_; }  // the largest id any text can produce
    int64_t bos_token_id() const { return bos_id_; }
    int64_t eos_token_id() const { return eos_id_; }
    int64_t pad_token_id() const { return pad_id_; }
    // Id of a token string: added tokens first, then vocab.json, else the unk id.
    int64_t token_to_id(const std::string& token) const;

  private:
    struct AddedToken {
        std::string content;
        int64_t id       = 0;
        bool lstrip      = false;
        bool rstrip      = false;
        bool single_word = false;
    };
    struct Segment {
        std::string text;
        int added = -1;  // index into added_tokens_, -1 for ordinary text
    };
    struct BpeCache;

    CLIPTokenizer() = default;
    std::vector<Segment> split_added_tokens(const std::string& text) const;
    std::vector<std::string> tokenize_text(const std::string& text, TextCleanMode mode) const;
    std::vector<std::string> bpe(const std::string& token) const;

    std::unordered_map<std::string, int64_t> encoder_;    // vocab.json
    std::unordered_map<std::string, int32_t> bpe_ranks_;  // "first second" -> merge rank
    std::vector<AddedToken> added_tokens_;
    std::unordered_map<std::string, int64_t> added_encoder_;
    std::array<std::string, 256> byte_encoder_;  // byte -> UTF-8 of its symbol
    int64_t model_max_length_ = 77;
    int64_t max_id_           = 0;
    int64_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = 0;
    std::shared_ptr<BpeCache> cache_;  // shared by copies; guarded by its own mutex
};

}  // namespace t2i::tokenizer

// Implements: CLIPTokenizer (clip_tokenizer.h), mirroring transformers' tokenization_clip.py
// (bytes_to_unicode, bpe, _tokenize) and tokenization_utils.py (PreTrainedTokenizer.tokenize:
// added tokens are cut out of the raw text first, honouring lstrip/rstrip/single_word, and only
// the text between them is cleaned and BPE-encoded).
#include "tokenizer/clip_tokenizer.h"

#include <algorithm>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "io/file_util.h"
#include "io/json_config.h"

namespace t2i::tokenizer {

namespace {

// transformers reads at most this many merges: 49152 - 256 - 2 (tokenization_clip.py).
constexpr size_t kMaxMerges = 49152 - 256 - 2;
constexpr char kEndOfWord[] = "</w>";

// A special token's string: tokenizer_config.json first, then special_tokens_map.json (either
// spelling: "tok" or {"content": "tok", ...}), then CLIP's default.
std::string special_token(const nlohmann::json& config, const nlohmann::json& map,
                          const std::string& key, const std::string& fallback) {
    for (const nlohmann::json* source : {&config, &map}) {
        if (!source->is_object() || !source->contains(key)) continue;
        const auto& v = source->at(key);
        if (v.is_string()) return v.get<std::string>();
        if (v.is_object() && v.contains("content") && v.at("content").is_string())
            return v.at("content").get<std::string>();
    }
    return fallback;
}

int64_t parse_id(const std::string& key, const std::string& path) {
    size_t used = 0;
    try {
        const int64_t id = std::stoll(key, &used);
        if (used == key.size() && id >= 0) return id;
    } catch (const std::exception&) {
    }
    throw std::runtime_error("CLIPTokenizer: '" + path + "': added_tokens_decoder key '" + key +
                             "' is not a token id (expected a non-negative integer string)");
}

nlohmann::json read_optional_json(const std::string& path) {
    return io::file_exists(path) ? io::read_json(path).json() : nlohmann::json::object();
}

// Python's str.strip() / lstrip() / rstrip() on UTF-8.
std::string py_strip(const std::string& s, bool left, bool right) {
    std::u32string t = utf8_to_u32(s);
    size_t b = 0, e = t.size();
    while (left && b < e && is_python_space(t[b])) ++b;
    while (right && e > b && is_python_space(t[e - 1])) --e;
    return u32_to_utf8(t.substr(b, e - b));
}

bool ascii_iequals(const std::u32string& t, size_t i, const char* lit) {
    for (size_t k = 0; lit[k]; ++k) {
        if (i + k >= t.size()) return false;
        char32_t c = t[i + k];
        if (c >= 'A' && c <= 'Z') c += 32;
        if (c != static_cast<char32_t>(lit[k])) return false;
    }
    return true;
}

// CLIP's pattern, matched by hand (re.IGNORECASE):
// <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
std::vector<std::u32string> pretokenize(const std::u32string& t) {
    std::vector<std::u32string> words;
    for (size_t i = 0; i < t.size();) {
        size_t len = 0;
        for (const char* lit :
             {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}) {
            if (ascii_iequals(t, i, lit)) {
                len = std::char_traits<char>::length(lit);
                break;
            }
        }
        if (len == 0 && is_letter(t[i])) {
            while (i + len < t.size() && is_letter(t[i + len])) ++len;
        } else if (len == 0 && is_number(t[i])) {
            len = 1;
        } else if (len == 0 && !is_regex_space(t[i])) {
            auto other = [](char32_t c) {
                return !is_regex_space(c) && !is_letter(c) && !is_number(c);
            };
            while (i + len < t.size() && other(t[i + len])) ++len;
        }
        if (len == 0) {
            ++i;  // whitespace separates words and is dropped
            continue;
        }
        words.push_back(t.substr(i, len));
        i += len;
    }
    return words;
}

// vocab.json: {"token": id}.
std::unordered_map<std::string, int64_t> read_vocab(const std::string& path) {
    const nlohmann::json vocab = io::read_json(path).json();
    if (!vocab.is_object() || vocab.empty())
        throw std::runtime_error("CLIPTokenizer: '" + path +
                                 "' must be a non-empty JSON object {\"token\": id}");
    std::unordered_map<std::string, int64_t> encoder;
    for (const auto& [token, id] : vocab.items()) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 30))
            throw std::runtime_error("CLIPTokenizer: '" + path + "': token '" + token +
                                     "' has id " + id.dump() +
                                     ", expected an integer in [0, 2^30)");
        encoder[token] = id.get<int64_t>();
    }
    return encoder;
}

// merges.txt as transformers reads it: read().strip().split("\n")[1:48895] (the first line,
// "#version: 0.2", is always skipped), each line "first second" ranked by its position.
std::unordered_map<std::string, int32_t> read_merges(const std::string& path) {
    const std::string text = io::read_text_file(path, io::kMaxConfigFileBytes);
    const size_t first     = text.find_first_not_of(" \t\r\n");
    const size_t last      = text.find_last_not_of(" \t\r\n");
    const std::string body = first == std::string::npos ? "" : text.substr(first, last - first + 1);
    std::unordered_map<std::string, int32_t> ranks;
    size_t pos = body.find('\n');
    for (size_t rank = 0; pos != std::string::npos && rank < kMaxMerges; ++rank) {
        const size_t end = body.find('\n', pos + 1);
        const std::string line =
            body.substr(pos + 1, end == std::string::npos ? end : end - pos - 1);
        pos = end;
        std::vector<std::string> parts;
        for (size_t k = 0; k < line.size();) {
            const size_t b = line.find_first_not_of(" \t\r", k);
            if (b == std::string::npos) break;
            const size_t e = std::min(line.find_first_of(" \t\r", b), line.size());
            parts.push_back(line.substr(b, e - b));
            k = e;
        }
        if (parts.size() != 2)
            throw std::runtime_error("CLIPTokenizer: '" + path + "' line " +
                                     std::to_string(rank + 2) +
                                     ": expected two symbols separated by a space, found '" + line +
                                     "' (is this a BPE merges file from save_pretrained?)");
        // dict(zip(merges, range(n))): a repeated merge keeps its last rank, as in Python.
        ranks[parts[0] + " " + parts[1]] = static_cast<int32_t>(rank);
    }
    return ranks;
}

}  // namespace

struct CLIPTokenizer::BpeCache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::string>> words;
};

std::array<char32_t, 256> bytes_to_unicode() {
    std::array<char32_t, 256> table{};
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) table[b] = printable[b] ? static_cast<char32_t>(b) : next++;
    return table;
}

CLIPTokenizer CLIPTokenizer::from_pretrained(const std::string& dir) {
    const std::string vocab_path  = dir + "/vocab.json";
    const std::string merges_path = dir + "/merges.txt";
    for (const std::string& path : {vocab_path, merges_path})
        if (!io::file_exists(path))
            throw std::runtime_error("CLIPTokenizer: missing '" + path +
                                     "'; a tokenizer folder needs vocab.json and merges.txt "
                                     "(the `tokenizer/` subfolder of a diffusers model)");
    CLIPTokenizer tok;
    tok.cache_ = std::make_shared<BpeCache>();

    tok.encoder_   = read_vocab(vocab_path);
    tok.bpe_ranks_ = read_merges(merges_path);

    // 3. Byte-level alphabet.
    const auto table = bytes_to_unicode();
    for (int b = 0; b < 256; ++b) {
        tok.byte_encoder_[b].clear();
        append_utf8(table[b], &tok.byte_encoder_[b]);
    }

    // 4. Special and added tokens.
    const nlohmann::json config = read_optional_json(dir + "/tokenizer_config.json");
    const nlohmann::json map    = read_optional_json(dir + "/special_tokens_map.json");
    const nlohmann::json added  = read_optional_json(dir + "/added_tokens.json");
    auto add_token              = [&](AddedToken t) {
        if (tok.added_encoder_.count(t.content)) return;
        tok.added_encoder_[t.content] = t.id;
        tok.added_tokens_.push_back(std::move(t));
    };
    if (config.contains("added_tokens_decoder") && config.at("added_tokens_decoder").is_object()) {
        for (const auto& item : config.at("added_tokens_decoder").items()) {
            const std::string& id      = item.key();
            const nlohmann::json& spec = item.value();
            if (!spec.is_object() || !spec.contains("content") || !spec.at("content").is_string())
                throw std::runtime_error("CLIPTokenizer: '" + dir +
                                         "/tokenizer_config.json': added_tokens_decoder[" + id +
                                         "] needs a \"content\" string, found " + spec.dump());
            AddedToken t;
            t.content = spec.at("content").get<std::string>();
            t.id      = parse_id(id, dir + "/tokenizer_config.json");
            auto flag = [&](const char* key) {
                if (!spec.contains(key) || spec.at(key).is_null()) return false;
                if (!spec.at(key).is_boolean())
                    throw std::runtime_error("CLIPTokenizer: '" + dir +
                                             "/tokenizer_config.json': added_tokens_decoder[" + id +
                                             "]." + key + " must be true or false, found " +
                                             io::dump_json(spec.at(key)));
                return spec.at(key).get<bool>();
            };
            t.lstrip      = flag("lstrip");
            t.rstrip      = flag("rstrip");
            t.single_word = flag("single_word");
            add_token(std::move(t));
        }
    }
    for (const auto& [content, id] : added.items()) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 30))
            throw std::runtime_error("CLIPTokenizer: '" + dir + "/added_tokens.json': token '" +
                                     content + "' has id " + id.dump() +
                                     ", expected an integer in [0, 2^30)");
        add_token({content, id.get<int64_t>()});
    }

    int64_t next_id = 0;
    for (const auto& [t, id] : tok.encoder_) next_id = std::max(next_id, id + 1);
    for (const auto& t : tok.added_tokens_) next_id = std::max(next_id, t.id + 1);
    // Special tokens are never split (PreTrainedTokenizer.__init__ adds them as added tokens).
    auto special = [&](const std::string& key, const std::string& fallback) {
        const std::string content = special_token(config, map, key, fallback);
        if (!tok.added_encoder_.count(content)) {
            auto it = tok.encoder_.find(content);
            add_token({content, it != tok.encoder_.end() ? it->second : next_id++});
        }
        return tok.added_encoder_.at(content);
    };
    tok.bos_id_ = special("bos_token", "<|startoftext|>");
    tok.eos_id_ = special("eos_token", "<|endoftext|>");
    tok.unk_id_ = special("unk_token", "<|endoftext|>");
    tok.pad_id_ = special("pad_token", "<|endoftext|>");

    for (const auto& [t, id] : tok.encoder_) tok.max_id_ = std::max(tok.max_id_, id);
    for (const auto& t : tok.added_tokens_) tok.max_id_ = std::max(tok.max_id_, t.id);
    if (config.contains("model_max_length") && !config.at("model_max_length").is_null()) {
        const auto& value = config.at("model_max_length");
        const double n    = value.is_number() ? value.get<double>() : -1;
        if (n < 2 || n > 1e6)
            throw std::runtime_error("CLIPTokenizer: '" + dir +
                                     "/tokenizer_config.json': model_max_length " +
                                     config.at("model_max_length").dump() +
                                     " is not a usable length (expected e.g. 77 for CLIP)");
        tok.model_max_length_ = static_cast<int64_t>(n);
    }
    return tok;
}

int64_t CLIPTokenizer::token_to_id(const std::string& token) const {
    if (auto it = added_encoder_.find(token); it != added_encoder_.end()) return it->second;
    if (auto it = encoder_.find(token); it != encoder_.end()) return it->second;
    return unk_id_;
}

// Leftmost-longest match of the added tokens (transformers' Trie.split), then the lstrip /
// rstrip / single_word rules of PreTrainedTokenizer.tokenize.
std::vector<CLIPTokenizer::Segment> CLIPTokenizer::split_added_tokens(
    const std::string& text) const {
    std::vector<Segment> parts;
    size_t start = 0;
    for (size_t i = 0; i < text.size();) {
        int best = -1;
        for (size_t k = 0; k < added_tokens_.size(); ++k) {
            const std::string& c = added_tokens_[k].content;
            if (!c.empty() && text.compare(i, c.size(), c) == 0 &&
                (best < 0 || c.size() > added_tokens_[best].content.size()))
                best = static_cast<int>(k);
        }
        if (best < 0) {
            ++i;
            continue;
        }
        if (i > start) parts.push_back({text.substr(start, i - start), -1});
        parts.push_back({added_tokens_[best].content, best});
        i += added_tokens_[best].content.size();
        start = i;
    }
    if (start < text.size()) parts.push_back({text.substr(start), -1});

    for (size_t i = 0; i < parts.size(); ++i) {
        if (parts[i].added < 0 || parts[i].text.empty()) continue;
        const AddedToken& t = added_tokens_[parts[i].added];
        Segment* left       = i > 0 ? &parts[i - 1] : nullptr;
        Segment* right      = i + 1 < parts.size() ? &parts[i + 1] : nullptr;
        if (t.rstrip && right && !right->text.empty())
            right->text = py_strip(right->text, true, false);
        if (t.lstrip && left && !left->text.empty()) left->text = py_strip(left->text, false, true);
        if (t.single_word && left && !left->text.empty() && left->text.back() != ' ') {
            left->text += parts[i].text;
            parts[i].text.clear();
        } else if (t.single_word && right && !right->text.empty() && right->text[0] != ' ') {
            parts[i].text += right->text;
            parts[i].added = -1;
            right->text.clear();
        }
    }
    return parts;
}

// tokenization_clip.py CLIPTokenizer.bpe: merge the lowest-ranked adjacent pair until none is
// in merges.txt. `token` is already in the byte-level alphabet.
std::vector<std::string> CLIPTokenizer::bpe(const std::string& token) const {
    if (token == "<|startoftext|>" || token == "<|endoftext|>") return {token};
    {
        std::lock_guard<std::mutex> lock(cache_->mutex);
        if (auto it = cache_->words.find(token); it != cache_->words.end()) return it->second;
    }
    std::vector<std::string> word;
    for (const char32_t c : utf8_to_u32(token)) {
        word.emplace_back();
        append_utf8(c, &word.back());
    }
    if (word.empty()) return {};
    word.back() += kEndOfWord;
    while (word.size() > 1) {
        int32_t best_rank = INT32_MAX;
        size_t best       = 0;
        for (size_t i = 0; i + 1 < word.size(); ++i) {
            auto it = bpe_ranks_.find(word[i] + " " + word[i + 1]);
            if (it != bpe_ranks_.end() && it->second < best_rank) {
                best_rank = it->second;
                best      = i;
            }
        }
        if (best_rank == INT32_MAX) break;
        const std::string first = word[best], second = word[best + 1];
        std::vector<std::string> merged;
        for (size_t i = 0; i < word.size();) {
            if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
                merged.push_back(first + second);
                i += 2;
            } else {
                merged.push_back(word[i++]);
            }
        }
        word = std::move(merged);
    }
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->words.size() > 200000) cache_->words.clear();  // bound memory on huge corpora
    cache_->words.emplace(token, word);
    return word;
}

// CLIPTokenizer._tokenize: clean, split with the pattern, map bytes, BPE.
std::vector<std::string> CLIPTokenizer::tokenize_text(const std::string& text,
                                                      TextCleanMode mode) const {
    std::vector<std::string> tokens;
    for (const std::u32string& word : pretokenize(utf8_to_u32(clean_text(text, mode)))) {
        std::string mapped;
        for (const char ch : u32_to_utf8(word)) mapped += byte_encoder_[static_cast<uint8_t>(ch)];
        for (std::string& t : bpe(mapped)) tokens.push_back(std::move(t));
    }
    return tokens;
}

std::vector<std::string> CLIPTokenizer::tokenize(const std::string& text,
                                                 TextCleanMode mode) const {
    std::vector<std::string> tokens;
    for (const Segment& part : split_added_tokens(text)) {
        if (part.text.empty()) continue;
        if (part.added >= 0) {
            tokens.push_back(part.text);
        } else {
            for (std::string& t : tokenize_text(part.text, mode)) tokens.push_back(std::move(t));
        }
    }
    return tokens;
}

std::vector<int64_t> CLIPTokenizer::encode(const std::string& text, TextCleanMode mode) const {
    std::vector<int64_t> ids{bos_id_};
    for (const std::string& t : tokenize(text, mode)) ids.push_back(token_to_id(t));
    ids.push_back(eos_id_);
    return ids;
}

TokenizerOutput CLIPTokenizer::operator()(const std::string& text, TextCleanMode mode) const {
    std::vector<int64_t> ids = encode(text, mode);
    const size_t max         = static_cast<size_t>(model_max_length_);
    if (ids.size() > max) {  // truncation=True keeps BOS + the first max-2 tokens + EOS
        ids.resize(max - 1);
        ids.push_back(eos_id_);
    }
    TokenizerOutput out;
    out.length    = ids.size();
    out.input_ids = ids;
    out.input_ids.resize(max, pad_id_);
    out.attention_mask.assign(max, 0);
    std::fill(out.attention_mask.begin(), out.attention_mask.begin() + out.length, 1);
    return out;
}

torch::Tensor CLIPTokenizer::batch_input_ids(const std::vector<std::string>& texts,
                                             TextCleanMode mode) const {
    auto ids = torch::empty({static_cast<int64_t>(texts.size()), model_max_length_}, torch::kInt64);
    auto acc = ids.accessor<int64_t, 2>();
    for (size_t n = 0; n < texts.size(); ++n) {
        const TokenizerOutput out = (*this)(texts[n], mode);
        for (int64_t k = 0; k < model_max_length_; ++k) acc[n][k] = out.input_ids[k];
    }
    return ids;  // [N, model_max_length]
}

}  // namespace t2i::tokenizer

// Implements: the kohya-ss parts of data/caption_dataset.h: sidecar caption files, the tag
// shuffle, repeat folders, and the warning for captions the text encoder cuts.
// Mirrors: kohya-ss sd-scripts library/train_util.py (process_caption, the DreamBooth dataset's
// "<repeats>_<class tokens>" folders, read_caption).
#include <algorithm>
#include <filesystem>
#include <regex>
#include <set>
#include <sstream>

#include "data/caption_dataset.h"
#include "io/file_util.h"
#include "io/text.h"
#include "util/log.h"

namespace t2i::data {

namespace fs = std::filesystem;

// A sidecar caption is a line of text; a larger file is not a caption file.
constexpr uint64_t kMaxCaptionFileBytes = 1 << 20;

bool read_sidecar(const fs::path& image, std::string* caption) {
    for (const char* ext : {".txt", ".caption"}) {
        fs::path side = image;
        side.replace_extension(ext);
        if (!io::file_exists(side.string())) continue;
        std::istringstream in(io::read_utf8_file(side.string(), kMaxCaptionFileBytes));
        std::string line;
        std::getline(in, line);
        const auto b = line.find_first_not_of(" \t\r\n"), e = line.find_last_not_of(" \t\r\n");
        *caption = b == std::string::npos ? "" : line.substr(b, e - b + 1);
        return true;
    }
    return false;
}

// The text encoder sees model_max_length (77) tokens; the script truncates silently. One
// warning names how many captions lose words, and the first.
void warn_truncated_captions(const DatasetIndex& index, const tokenizer::CLIPTokenizer& tok,
                             tokenizer::TextCleanMode mode) {
    std::set<std::string> seen;
    int64_t truncated = 0, longest = 0;
    std::string first;
    for (const auto& rec : index.records)
        for (const auto& caption : rec.captions) {
            if (!seen.insert(caption).second) continue;
            const auto n = static_cast<int64_t>(tok.encode(caption, mode).size());
            if (n <= tok.model_max_length()) continue;
            if (truncated++ == 0) first = caption;
            longest = std::max(longest, n);
        }
    if (truncated > 0)
        log_warn(
            "%lld captions are longer than the text encoder's %lld tokens (the longest %lld) and "
            "are cut there, as the script does, e.g. '%.80s...'",
            static_cast<long long>(truncated), static_cast<long long>(tok.model_max_length()),
            static_cast<long long>(longest), first.c_str());
}

std::string shuffle_caption_tags(const std::string& caption, int64_t keep_tokens, Rng& rng) {
    std::vector<std::string> tags;
    size_t start = 0;
    while (true) {
        const auto comma = caption.find(',', start);
        auto tag =
            caption.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        const auto b = tag.find_first_not_of(" \t\r\n"), e = tag.find_last_not_of(" \t\r\n");
        tags.push_back(b == std::string::npos ? "" : tag.substr(b, e - b + 1));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    const size_t keep =
        std::min(tags.size(), static_cast<size_t>(std::max<int64_t>(0, keep_tokens)));
    for (size_t i = tags.size(); i > keep + 1; --i) {  // Fisher-Yates over the flexible tags
        const size_t j = keep + rng_uniform_index(rng, i - keep);
        std::swap(tags[i - 1], tags[j]);
    }
    std::string out;
    for (size_t i = 0; i < tags.size(); ++i) out += (i ? ", " : "") + tags[i];
    return out;
}

std::pair<int64_t, std::string> parse_repeat_folder(const std::string& folder_name) {
    static const std::regex kRepeat(R"(^([0-9]{1,6})_(.+)$)");
    std::smatch m;
    if (!std::regex_match(folder_name, m, kRepeat)) return {0, ""};
    const int64_t n = std::stoll(m[1].str());
    return n >= 1 ? std::make_pair(n, m[2].str()) : std::make_pair(int64_t(0), std::string());
}

}  // namespace t2i::data

// Implements: arrow_dataset.h: which files make up the train split of a Parquet / Arrow dataset
// (compiled with or without Apache Arrow; only file names and JSON are read here).
// Mirrors: datasets' data_files.py (SPLIT_PATTERN_SHARDED, SPLIT_KEYWORDS, NON_WORDS_CHARS and
// the keyword-in-dir-name / keyword-in-file-name patterns, tried in that order) and
// load_from_disk (state.json "_data_files", dataset_dict.json "splits").
#include <algorithm>
#include <filesystem>
#include <map>
#include <regex>
#include <stdexcept>

#include "data/arrow_dataset.h"
#include "io/file_util.h"
#include "io/json_config.h"
#include "util/log.h"

namespace t2i::data {
namespace fs = std::filesystem;

namespace {

// datasets' SPLIT_KEYWORDS, in DEFAULT_SPLITS order.
const std::vector<std::pair<std::string, std::vector<std::string>>> kSplitKeywords = {
    {"train", {"train", "training"}},
    {"validation", {"validation", "valid", "dev", "val"}},
    {"test", {"test", "testing", "eval", "evaluation"}},
};

// NON_WORDS_CHARS = "-._ 0-9": what may surround a split keyword in a name.
bool is_sep(char c) {
    return c == '-' || c == '.' || c == '_' || c == ' ' || (c >= '0' && c <= '9');
}

// `name` contains `kw` with a separator (or the name's start, when `at_start_ok`) before it and a
// separator (or the name's end, when `at_end_ok`) after it.
bool has_keyword(const std::string& name, const std::string& kw, bool at_start_ok, bool at_end_ok) {
    for (size_t pos = name.find(kw); pos != std::string::npos; pos = name.find(kw, pos + 1)) {
        const size_t end  = pos + kw.size();
        const bool before = pos == 0 ? at_start_ok : is_sep(name[pos - 1]);
        const bool after  = end == name.size() ? at_end_ok : is_sep(name[end]);
        if (before && after) return true;
    }
    return false;
}

// KEYWORDS_IN_DIR_NAME_BASE_PATTERNS: "**/{kw}/**", "**/{kw}[sep]*/**", "**/*[sep]{kw}/**",
// "**/*[sep]{kw}[sep]*/**": some folder of the path is named by the keyword.
bool dir_names(const fs::path& rel, const std::string& kw) {
    const fs::path dirs = rel.parent_path();
    for (const auto& d : dirs)
        if (has_keyword(d.string(), kw, true, true)) return true;
    return false;
}

// KEYWORDS_IN_FILENAME_BASE_PATTERNS: "**/{kw}[sep]*", "**/*[sep]{kw}[sep]*".
bool file_names(const fs::path& rel, const std::string& kw) {
    return has_keyword(rel.filename().string(), kw, true, false);
}

using Matcher = bool (*)(const fs::path&, const std::string&);

// The files of each default split that `match` finds; empty when it finds none.
std::map<std::string, std::vector<std::string>> match_splits(const std::vector<std::string>& files,
                                                             const std::string& root,
                                                             Matcher match) {
    std::map<std::string, std::vector<std::string>> out;
    for (const auto& [split, keywords] : kSplitKeywords)
        for (const auto& f : files) {
            const fs::path rel = fs::path(f).lexically_relative(root);
            for (const auto& kw : keywords)
                if (match(rel, kw)) {
                    out[split].push_back(f);
                    break;
                }
        }
    return out;
}

[[noreturn]] void throw_no_train(const std::string& root, const std::vector<std::string>& splits,
                                 const std::string& how) {
    throw std::runtime_error("dataset '" + root + "' has the splits " + join(splits) + " (" + how +
                             ") but no 'train' split; train_text_to_image.py trains on "
                             "dataset['train']: name the training files train-*.parquet or put "
                             "them in a train/ folder");
}

}  // namespace

std::vector<std::string> train_split_files(const std::string& root,
                                           const std::vector<std::string>& files) {
    // 1. SPLIT_PATTERN_SHARDED: data/{split}-[0-9]{5}-of-[0-9]{5}*.*, the Hub's own layout.
    static const std::regex kSharded(R"(^data/([^/]+?)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]*$)");
    std::map<std::string, std::vector<std::string>> sharded;
    for (const auto& f : files) {
        std::smatch m;
        const std::string rel = fs::path(f).lexically_relative(root).generic_string();
        if (std::regex_match(rel, m, kSharded)) sharded[m[1].str()].push_back(f);
    }
    if (!sharded.empty()) {
        if (sharded.count("train")) return sharded["train"];
        std::vector<std::string> splits;
        for (const auto& kv : sharded) splits.push_back(kv.first);
        throw_no_train(root, splits, "data/<split>-NNNNN-of-NNNNN files");
    }
    // 2. and 3. Split keywords in folder names, then in file names; the first that names any
    // split decides.
    for (const auto& [match, how] :
         {std::pair<Matcher, const char*>{dir_names, "folder names"}, {file_names, "file names"}}) {
        auto splits = match_splits(files, root, match);
        if (splits.empty()) continue;
        if (splits.count("train")) return splits["train"];
        std::vector<std::string> names;
        for (const auto& kv : splits) names.push_back(kv.first);
        throw_no_train(root, names, how);
    }
    // 4. DEFAULT_PATTERNS_ALL: every file is the train split.
    return files;
}

ArrowFiles find_saved_dataset(const std::string& dir) {
    const fs::path folder(dir);
    if (io::file_exists((folder / "dataset_dict.json").string())) {
        const auto dict   = io::read_json((folder / "dataset_dict.json").string());
        const auto splits = dict.get<std::vector<std::string>>("splits");
        if (std::find(splits.begin(), splits.end(), "train") == splits.end())
            throw std::runtime_error("'" + dict.path() + "' is a DatasetDict with the splits " +
                                     join(splits) +
                                     " but no 'train' split, which train_text_to_image.py trains "
                                     "on; save the training split as 'train'");
        ArrowFiles files = find_saved_dataset((folder / "train").string());
        if (files.layout.empty())
            throw std::runtime_error("'" + dict.path() + "' names a 'train' split, but '" +
                                     (folder / "train" / "state.json").string() +
                                     "' does not exist: the folder is incomplete; save it again "
                                     "with DatasetDict.save_to_disk");
        return files;
    }
    const fs::path state_file = folder / "state.json";
    if (!io::file_exists(state_file.string())) return {};
    const auto state = io::read_json(state_file.string());
    if (!state.has("_data_files") || !state.json().at("_data_files").is_array())
        state.fail("_data_files",
                   "is missing or not a list: expected [{\"filename\": "
                   "\"data-00000-of-00001.arrow\"}, ...] as save_to_disk writes it");
    ArrowFiles files;
    files.layout = "save_to_disk";
    files.folder = dir;
    for (const auto& entry : state.json().at("_data_files")) {
        if (!entry.is_object() || !entry.contains("filename") || !entry["filename"].is_string())
            state.fail("_data_files",
                       "holds " + io::dump_json(entry).substr(0, 200) +
                           ", expected {\"filename\": \"data-NNNNN-of-NNNNN.arrow\"}");
        const fs::path name = entry["filename"].get<std::string>();
        // A shard is a file of this folder: state.json must not point t2i anywhere else.
        if (name.empty() || name.has_parent_path() || name == "." || name == "..")
            state.fail("_data_files",
                       "names '" + name.string() + "', which is not a file name in '" + dir + "'");
        const std::string path = (folder / name).string();
        if (!io::file_exists(path))
            state.fail("_data_files", "names '" + name.string() + "', but '" + path +
                                          "' does not exist: the folder is incomplete");
        files.shards.push_back(path);
    }
    if (files.shards.empty()) state.fail("_data_files", "is empty: the dataset has no data files");
    return files;
}

}  // namespace t2i::data

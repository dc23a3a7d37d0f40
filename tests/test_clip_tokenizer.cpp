// Implements: tests of the CLIP tokenizer and its text cleaning against
// golden/tokenizer_ids.{json,safetensors} (transformers' slow CLIPTokenizer, with ftfy 6.1.1 and
// with its BasicTokenizer fallback), plus formula-level and error-path checks.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "io/file_util.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tokenizer/clip_tokenizer.h"
#include "tokenizer/text_clean.h"

namespace t2i::testing {
namespace {

using tokenizer::CLIPTokenizer;
using tokenizer::TextCleanMode;

const nlohmann::json& golden() {
    static const nlohmann::json json =
        nlohmann::json::parse(io::read_text_file(fixture("golden/tokenizer_ids.json")));
    return json;
}

std::string tokenizer_dir(const std::string& name) {
    if (name == "clip") return fixture("clip-tokenizer");
    return fixture(name + "/tokenizer");
}

// Every prompt of the golden file through one tokenizer in one mode.
void check_golden(const std::string& name, const std::string& mode_name) {
    const CLIPTokenizer tok  = CLIPTokenizer::from_pretrained(tokenizer_dir(name));
    const TextCleanMode mode = tokenizer::parse_clean_mode(mode_name);
    const nlohmann::json& g  = golden().at("tokenizers").at(name).at(mode_name);
    const auto& prompts      = golden().at("prompts");

    EXPECT_EQ(tok.vocab_size(), g.at("vocab_size").get<int64_t>());
    EXPECT_EQ(tok.bos_token_id(), g.at("bos_token_id").get<int64_t>());
    EXPECT_EQ(tok.eos_token_id(), g.at("eos_token_id").get<int64_t>());
    EXPECT_EQ(tok.pad_token_id(), g.at("pad_token_id").get<int64_t>());
    EXPECT_EQ(tok.model_max_length(), golden().at("max_length").get<int64_t>());

    int matched = 0;
    for (size_t p = 0; p < prompts.size(); ++p) {
        const std::string prompt   = prompts[p].get<std::string>();
        const nlohmann::json& want = g.at("per_prompt")[p];
        SCOPED_TRACE(name + "/" + mode_name + " prompt " + std::to_string(p) + ": " + prompt);
        const auto tokens = tok.tokenize(prompt, mode);
        const auto ids    = tok.encode(prompt, mode);
        const auto out    = tok(prompt, mode);
        EXPECT_EQ(tokens, want.at("tokens").get<std::vector<std::string>>());
        EXPECT_EQ(ids, want.at("ids_no_truncation").get<std::vector<int64_t>>());
        EXPECT_EQ(out.input_ids, want.at("input_ids").get<std::vector<int64_t>>());
        EXPECT_EQ(out.attention_mask, want.at("attention_mask").get<std::vector<int64_t>>());
        matched += tokens == want.at("tokens").get<std::vector<std::string>>() &&
                   ids == want.at("ids_no_truncation").get<std::vector<int64_t>>() &&
                   out.input_ids == want.at("input_ids").get<std::vector<int64_t>>();
    }
    EXPECT_EQ(matched, static_cast<int>(prompts.size())) << name << "/" << mode_name;

    // The same ids as a batch tensor, against the safetensors copy of the golden.
    std::vector<std::string> texts;
    for (const auto& prompt : prompts) texts.push_back(prompt.get<std::string>());
    const io::TensorMap golden_tensors =
        io::load_safetensors(fixture("golden/tokenizer_ids.safetensors"));
    const std::string key     = name + "." + mode_name + ".";
    const torch::Tensor batch = tok.batch_input_ids(texts, mode);
    EXPECT_EQ(batch.scalar_type(), torch::kInt64);
    EXPECT_TRUE(torch::equal(batch, golden_tensors.at(key + "input_ids").to(torch::kInt64)));
    const torch::Tensor mask = golden_tensors.at(key + "attention_mask").to(torch::kInt64);
    for (size_t p = 0; p < texts.size(); ++p) {
        const auto out = tok(texts[p], mode);
        EXPECT_TRUE(torch::equal(torch::tensor(out.attention_mask, torch::kInt64), mask[p]));
    }
}

TEST(CLIPTokenizer, GoldenTinySd1Ftfy) { check_golden("tiny-sd1", "ftfy"); }
TEST(CLIPTokenizer, GoldenTinySd1Basic) { check_golden("tiny-sd1", "basic"); }
TEST(CLIPTokenizer, GoldenTinySd2Ftfy) { check_golden("tiny-sd2", "ftfy"); }
TEST(CLIPTokenizer, GoldenTinySd2Basic) { check_golden("tiny-sd2", "basic"); }
TEST(CLIPTokenizer, GoldenClipFtfy) { check_golden("clip", "ftfy"); }
TEST(CLIPTokenizer, GoldenClipBasic) { check_golden("clip", "basic"); }

TEST(CLIPTokenizer, BytesToUnicodeIsABijectionOntoPrintableSymbols) {
    const auto table = tokenizer::bytes_to_unicode();
    const std::set<char32_t> distinct(table.begin(), table.end());
    EXPECT_EQ(distinct.size(), 256u);
    for (int b = '!'; b <= '~'; ++b) EXPECT_EQ(table[b], static_cast<char32_t>(b));
    EXPECT_EQ(table[' '], U'\u0120');  // "Ġ": the first unprintable byte 0 is U+0100
    EXPECT_EQ(table[0], U'\u0100');
    EXPECT_EQ(table[0xAD], U'\u0143');  // the 68th and last remapped byte
}

TEST(CLIPTokenizer, RealVocabKnownIds) {
    const CLIPTokenizer tok = CLIPTokenizer::from_pretrained(fixture("clip-tokenizer"));
    EXPECT_EQ(tok.encode("a photo of a cat", TextCleanMode::kFtfy),
              (std::vector<int64_t>{49406, 320, 1125, 539, 320, 2368, 49407}));
}

TEST(CLIPTokenizer, PaddingUsesPadIdAndMask) {
    for (const std::string name : {"tiny-sd1", "tiny-sd2", "clip"}) {
        const CLIPTokenizer tok = CLIPTokenizer::from_pretrained(tokenizer_dir(name));
        const auto out          = tok("a cat");
        ASSERT_EQ(out.input_ids.size(), 77u);
        EXPECT_EQ(out.input_ids.front(), tok.bos_token_id());
        EXPECT_EQ(out.input_ids[out.length - 1], tok.eos_token_id());
        for (size_t k = 0; k < 77; ++k) {
            EXPECT_EQ(out.attention_mask[k], k < out.length ? 1 : 0);
            if (k >= out.length) EXPECT_EQ(out.input_ids[k], tok.pad_token_id()) << name;
        }
    }
    EXPECT_EQ(CLIPTokenizer::from_pretrained(tokenizer_dir("tiny-sd2")).pad_token_id(), 0);
}

TEST(CLIPTokenizer, TruncationKeepsBosFirstTokensAndEos) {
    const CLIPTokenizer tok = CLIPTokenizer::from_pretrained(fixture("clip-tokenizer"));
    std::string text        = "a";
    for (int k = 0; k < 200; ++k) text += " cat";
    const auto full = tok.encode(text, TextCleanMode::kFtfy);
    const auto out  = tok(text);
    ASSERT_EQ(full.size(), 203u);
    EXPECT_EQ(out.length, 77u);
    EXPECT_EQ(std::vector<int64_t>(out.input_ids.begin(), out.input_ids.begin() + 76),
              std::vector<int64_t>(full.begin(), full.begin() + 76));
    EXPECT_EQ(out.input_ids[76], tok.eos_token_id());
    EXPECT_EQ(tok.batch_input_ids({text, ""}).sizes(), (torch::IntArrayRef{2, 77}));
}

TEST(CLIPTokenizer, AddedTokensAreSplitBeforeCleaning) {
    // tiny-sd2's pad token "!" is an added special token: "!!!" is three of them.
    const CLIPTokenizer tok = CLIPTokenizer::from_pretrained(tokenizer_dir("tiny-sd2"));
    EXPECT_EQ(tok.tokenize("hi!!", TextCleanMode::kFtfy).back(), "!");
    const auto ids = tok.encode("<|endoftext|>", TextCleanMode::kBasic);
    EXPECT_EQ(ids, (std::vector<int64_t>{998, 999, 999}));
}

TEST(CLIPTokenizer, FtfyFixesMojibakeEntitiesAndWidth) {
    using tokenizer::ftfy_fix_text;
    // Examples from ftfy 6.1.1's docstrings (outputs as ftfy 6.1.1 really returns them: the
    // ellipsis entity stays an ellipsis, only NFKC would turn it into "...").
    EXPECT_EQ(ftfy_fix_text("\u00e2\u0153\u201d No problems"), "\u2714 No problems");
    EXPECT_EQ(ftfy_fix_text("&macr;\\_(\u00e3\u0083\u0084)_/&macr;"), "\u00af\\_(\u30c4)_/\u00af");
    EXPECT_EQ(ftfy_fix_text("Broken text&hellip; it&#x2019;s \ufb02ubberi\ufb01c!"),
              "Broken text\u2026 it's flubberific!");
    EXPECT_EQ(ftfy_fix_text("\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33"),
              "LOUD NOISES");
    EXPECT_EQ(ftfy_fix_text("voil\u00c3 le travail"), "voil\u00e0 le travail");
    EXPECT_EQ(ftfy_fix_text("P&EACUTE;REZ"), "P\u00c9REZ");
    // A literal '<' means real HTML: entities stay.
    EXPECT_EQ(ftfy_fix_text("<b>&amp;</b>"), "<b>&amp;</b>");
    // Legitimate accented text is left alone.
    EXPECT_EQ(ftfy_fix_text("caf\u00e9 na\u00efve \u00c9cole"), "caf\u00e9 na\u00efve \u00c9cole");
}

TEST(CLIPTokenizer, CleanModes) {
    using tokenizer::clean_text;
    EXPECT_EQ(clean_text("  A\tB\n\nC  ", TextCleanMode::kFtfy), "a b c");
    EXPECT_EQ(clean_text("  A\tB\n\nC  ", TextCleanMode::kBasic), "a b c");
    EXPECT_EQ(clean_text("\u65e5\u672c", TextCleanMode::kBasic), "\u65e5 \u672c");
    EXPECT_EQ(clean_text("\u201cq\u201d", TextCleanMode::kBasic), "\u201cq\u201d");
    EXPECT_EQ(clean_text("\u201cq\u201d", TextCleanMode::kFtfy), "\"q\"");
    EXPECT_THROW(tokenizer::parse_clean_mode("nfc"), std::runtime_error);
}

TEST(CLIPTokenizer, MissingVocabIsAClearError) {
    TempDir dir;
    std::ofstream(dir.file("merges.txt")) << "#version: 0.2\n";
    try {
        CLIPTokenizer::from_pretrained(dir.path());
        FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("vocab.json"), std::string::npos) << e.what();
    }
}

TEST(CLIPTokenizer, MalformedMergesNamesFileAndLine) {
    TempDir dir;
    std::ofstream(dir.file("vocab.json")) << R"({"a": 0, "b": 1, "ab</w>": 2})";
    std::ofstream(dir.file("merges.txt")) << "#version: 0.2\na b</w>\nab\n";
    try {
        CLIPTokenizer::from_pretrained(dir.path());
        FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("merges.txt"), std::string::npos) << msg;
        EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
    }
    std::ofstream(dir.file("merges.txt")) << "#version: 0.2\na b</w>\n";
    std::ofstream(dir.file("vocab.json")) << R"({"a": 0, "b": )";
    EXPECT_THROW(CLIPTokenizer::from_pretrained(dir.path()), std::runtime_error);
}

}  // namespace
}  // namespace t2i::testing

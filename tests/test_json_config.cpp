// Tests: io/json_config: typed getters, diffusers' "absent or null takes the default" rule,
// int-or-list broadcasting, and errors that name the file and the key.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "test_util.h"

namespace t2i {
namespace {

using testing::fixture;
using testing::TempDir;

const char* kPath = "/models/x/unet/config.json";

io::JsonConfig config() {
    return io::JsonConfig(nlohmann::json::parse(R"({
        "in_channels": 4, "scale": 0.5, "name": "unet", "flag": true, "nothing": null,
        "heads": 8, "head_list": [5, 10, 20, 20], "blocks": ["A", "B"], "bad_list": [1, "x"]
    })"),
                          kPath);
}

// `f` throws std::runtime_error whose message contains every needle.
template <typename F>
::testing::AssertionResult throws_with(F&& f, const std::vector<std::string>& needles) {
    try {
        f();
    } catch (const std::runtime_error& e) {
        const std::string msg = e.what();
        for (const auto& needle : needles)
            if (msg.find(needle) == std::string::npos)
                return ::testing::AssertionFailure() << "message lacks '" << needle << "': " << msg;
        return ::testing::AssertionSuccess() << msg;
    }
    return ::testing::AssertionFailure() << "did not throw";
}

TEST(JsonConfig, RequiredValues) {
    const auto c = config();
    EXPECT_EQ(c.get<int64_t>("in_channels"), 4);
    EXPECT_DOUBLE_EQ(c.get<double>("scale"), 0.5);
    EXPECT_DOUBLE_EQ(c.get<double>("in_channels"), 4.0);  // an int is a valid float
    EXPECT_EQ(c.get<std::string>("name"), "unet");
    EXPECT_TRUE(c.get<bool>("flag"));
    EXPECT_EQ(c.get<std::vector<std::string>>("blocks"), (std::vector<std::string>{"A", "B"}));
    EXPECT_EQ(c.path(), kPath);
}

TEST(JsonConfig, MissingRequiredKeyNamesFileAndKey) {
    const auto c = config();
    EXPECT_TRUE(throws_with([&] { c.get<int64_t>("out_channels"); },
                            {kPath, "missing key 'out_channels'"}));
    // null counts as absent
    EXPECT_TRUE(throws_with([&] { c.get<int64_t>("nothing"); }, {kPath, "'nothing'"}));
}

TEST(JsonConfig, WrongTypeNamesFileKeyAndValue) {
    const auto c = config();
    EXPECT_TRUE(
        throws_with([&] { c.get<int64_t>("name"); }, {kPath, "'name'", "\"unet\"", "type"}));
    EXPECT_TRUE(throws_with([&] { c.get<std::string>("in_channels"); }, {kPath, "'in_channels'"}));
    EXPECT_TRUE(throws_with([&] { c.get<bool>("in_channels"); }, {kPath, "'in_channels'"}));
    EXPECT_TRUE(throws_with([&] { c.get<std::vector<int64_t>>("blocks"); }, {kPath, "'blocks'"}));
    // A default does not hide a present value of the wrong type.
    EXPECT_TRUE(throws_with([&] { c.get<int64_t>("name", 3); }, {kPath, "'name'"}));
}

TEST(JsonConfig, IntegerKeyRejectsFractionalNumber) {
    // `layers_per_block: 1.5` is a broken config, not 1 (style rule 8: never correct silently).
    const io::JsonConfig c(nlohmann::json::parse(R"({"layers_per_block": 1.5})"), kPath);
    EXPECT_TRUE(
        throws_with([&] { c.get<int64_t>("layers_per_block"); }, {kPath, "'layers_per_block'"}));
    EXPECT_TRUE(
        throws_with([&] { c.get<int64_t>("layers_per_block", 2); }, {kPath, "'layers_per_block'"}));
}

TEST(JsonConfig, DefaultForAbsentAndNull) {
    const auto c = config();
    EXPECT_EQ(c.get<int64_t>("absent", 7), 7);
    EXPECT_EQ(c.get<int64_t>("nothing", 7), 7);
    EXPECT_EQ(c.get<int64_t>("in_channels", 7), 4);
    EXPECT_EQ(c.get<std::string>("nothing", "d"), "d");
    EXPECT_EQ(c.get("absent", std::vector<int64_t>{1, 2}), (std::vector<int64_t>{1, 2}));
    EXPECT_FALSE(c.has("absent"));
    EXPECT_FALSE(c.has("nothing"));
    EXPECT_TRUE(c.has("flag"));
}

TEST(JsonConfig, IntOrListBroadcastsAndChecksLength) {
    const auto c = config();
    EXPECT_EQ(c.get_int_or_list("heads", 3, 1), (std::vector<int64_t>{8, 8, 8}));
    EXPECT_EQ(c.get_int_or_list("head_list", 4, 1), (std::vector<int64_t>{5, 10, 20, 20}));
    EXPECT_EQ(c.get_int_or_list("absent", 2, 9), (std::vector<int64_t>{9, 9}));
    EXPECT_EQ(c.get_int_or_list("nothing", 2, 9), (std::vector<int64_t>{9, 9}));
    EXPECT_TRUE(throws_with([&] { c.get_int_or_list("head_list", 3, 1); },
                            {kPath, "'head_list'", "4 entries", "3"}));
    EXPECT_TRUE(throws_with([&] { c.get_int_or_list("name", 3, 1); }, {kPath, "'name'"}));
    EXPECT_TRUE(throws_with([&] { c.get_int_or_list("bad_list", 2, 1); }, {kPath, "'bad_list'"}));
}

TEST(JsonConfig, ReadJsonFromFile) {
    const auto c = io::read_json(fixture("tiny-sd1/vae/config.json"));
    EXPECT_EQ(c.path(), fixture("tiny-sd1/vae/config.json"));
    EXPECT_EQ(c.get<std::vector<int64_t>>("block_out_channels"), (std::vector<int64_t>{32, 64}));
    EXPECT_DOUBLE_EQ(c.get<double>("scaling_factor"), 0.18215);
    EXPECT_FALSE(c.has("latents_mean"));  // null in the file
    EXPECT_EQ(c.get<std::string>("_class_name"), "AutoencoderKL");
}

TEST(JsonConfig, ReadJsonErrorsNameTheFile) {
    TempDir dir;
    const std::string bad = dir.file("config.json");
    std::ofstream(bad) << "{\n  \"a\": 1,\n  \"b\": \n}\n";
    EXPECT_TRUE(throws_with([&] { io::read_json(bad); }, {bad, "parse"}));
    const std::string missing = dir.file("missing.json");
    EXPECT_TRUE(throws_with([&] { io::read_json(missing); }, {missing}));
}

}  // namespace
}  // namespace t2i

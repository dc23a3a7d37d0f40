// Fuzz target: dataset metadata (data/caption_dataset): the first byte picks metadata.jsonl,
// metadata.csv, a .json file of records or a .txt sidecar caption; the rest is its content.
// The folder also holds two small images, so parsed records are loaded and tokenized.
#include <filesystem>

#include "data/caption_dataset.h"
#include "fuzz_target.h"
#include "io/image_io.h"

T2I_FUZZ_TARGET(metadata) {
    if (size == 0) return;
    static const std::string png = t2i::io::encode_png(torch::full({6, 5, 3}, 99, torch::kUInt8));
    static const auto tok =
        t2i::tokenizer::CLIPTokenizer::from_pretrained(T2I_FIXTURES_DIR "/tiny-sd1/tokenizer");
    const std::string dir = t2i::fuzz::scratch_dir();
    std::filesystem::create_directories(dir + "/sub");
    t2i::fuzz::write_file(dir + "/a.png", png);
    t2i::fuzz::write_file(dir + "/sub/b.png", png);
    const std::string content(reinterpret_cast<const char*>(data) + 1, size - 1);
    t2i::data::DatasetConfig cfg;
    cfg.train_data_dir       = dir;
    cfg.transform.resolution = 8;
    cfg.max_train_samples    = data[0] & 0x80 ? 1 : -1;
    switch (data[0] % 4) {
        case 0:
            t2i::fuzz::write_file(dir + "/metadata.jsonl", content);
            break;
        case 1:
            t2i::fuzz::write_file(dir + "/metadata.csv", content);
            break;
        case 2:
            t2i::fuzz::write_file(dir + "/records.json", content);
            cfg.dataset_name = dir + "/records.json";
            break;
        default:
            t2i::fuzz::write_file(dir + "/a.txt", content);
    }
    const auto ds = t2i::data::CaptionDataset::open(cfg, tok);
    for (int64_t i = 0; i < std::min<int64_t>(ds.size(), 4); ++i) {
        t2i::data::Rng rng(static_cast<uint64_t>(i));
        try {
            (void)ds.get(i, rng);
        } catch (const t2i::data::BadSampleError&) {
        }
    }
}

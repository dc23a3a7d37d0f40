// Fuzz target: safetensors files (io/safetensors): the 8-byte length, the JSON header, every
// offset, dtype and shape, then each tensor copied out (the conversions a load does).
#include "fuzz_target.h"
#include "io/safetensors.h"

T2I_FUZZ_TARGET(safetensors) {
    const std::string path = t2i::fuzz::scratch_dir() + "/model.safetensors";
    t2i::fuzz::write_file(path, std::string(reinterpret_cast<const char*>(data), size));
    t2i::io::SafetensorsFile file(path);
    for (const auto& info : file.tensors()) {
        auto t = file.get(info.name);
        if (t.numel() > 0) (void)t.sum();  // touch every byte of the copy
    }
}

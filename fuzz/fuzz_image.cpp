// Fuzz target: image files through t2i's decoder wrapper (io/image_io: PNG, JPEG, WebP, the
// header checks and the pixel budget), then the training transform on what decodes.
#include "data/transforms.h"
#include "fuzz_target.h"
#include "io/image_io.h"

T2I_FUZZ_TARGET(image) {
    const auto image = t2i::io::decode_image_bytes(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz input");
    t2i::data::TransformConfig cfg;
    cfg.resolution  = 16;
    cfg.random_flip = size % 2 == 1;
    t2i::data::Rng rng(size);
    (void)t2i::data::train_transform(image, cfg, rng);
}

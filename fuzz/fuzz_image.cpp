// Fuzz target: image files through t2i's decoder wrapper (io/image_io: PNG, JPEG, WebP, the
// header checks and the pixel budget), then the training transform on what decodes; and the
// header-only size reader (the aspect-ratio buckets' input), which must agree with the decoder
// on every image that decodes.
#include <cstdlib>

#include "data/transforms.h"
#include "fuzz_target.h"
#include "io/image_io.h"

T2I_FUZZ_TARGET(image) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    t2i::io::ImageSize header;
    try {
        header = t2i::io::read_image_size_bytes(bytes, "fuzz input");
    } catch (const std::exception&) {
    }
    const auto image = t2i::io::decode_image_bytes(bytes, "fuzz input");
    if (header.width != image.size(1) || header.height != image.size(0)) std::abort();
    t2i::data::TransformConfig cfg;
    cfg.resolution  = 16;
    cfg.random_flip = size % 2 == 1;
    t2i::data::Rng rng(size);
    (void)t2i::data::train_transform(image, cfg, rng);
}

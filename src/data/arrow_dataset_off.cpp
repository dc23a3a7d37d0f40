// Implements: arrow_dataset.h in a build without Apache Arrow (T2I_WITH_ARROW off): a Parquet /
// Arrow dataset is recognised by its files (arrow_files.cpp) and refused with how to enable it.
// Mirrors: nothing; datasets always has pyarrow.
#include <stdexcept>

#include "data/arrow_dataset.h"

namespace t2i::data {

bool arrow_enabled() { return false; }

ArrowIndex read_arrow_dataset(const ArrowFiles& files, const std::string&, const std::string&) {
    throw std::runtime_error(
        "dataset '" + files.folder + "' is a " +
        (files.layout == "save_to_disk" ? "datasets save_to_disk folder" : "Hub dataset") +
        " stored as " + (files.layout == "parquet" ? "Parquet" : "Arrow") + " files ('" +
        files.shards.front() +
        "'), but this t2i was built without Apache Arrow. Install its C++ libraries with "
        "scripts/install_deps.sh (the pyarrow wheel, in ~/.cache/t2i/pyarrow-*) and rebuild with "
        "cmake -DT2I_WITH_ARROW=ON (or -DT2I_ARROW_HOME=<venv with pyarrow>); or export the "
        "dataset to an image folder with metadata.jsonl");
}

}  // namespace t2i::data

// Implements: util/machine.h.
#include "util/machine.h"

#include <unistd.h>

#include <algorithm>
#include <thread>

namespace t2i {

uint64_t physical_memory_bytes() {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

int max_useful_threads() {
    return std::max(16, 4 * static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace t2i

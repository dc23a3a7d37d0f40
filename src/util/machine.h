// Implements: what this machine has, for the checks that refuse flags or configs it could never
// run (a clear error naming the flag instead of the OOM killer or thousands of threads).
#pragma once

#include <cstdint>

namespace t2i {

// Physical memory in bytes (sysconf), 0 when unknown.
uint64_t physical_memory_bytes();

// The most threads (tensor threads, data-loader workers) or local processes worth starting:
// 4 per core, at least 16. More only oversubscribe the cores and cost a stack each.
int max_useful_threads();

}  // namespace t2i

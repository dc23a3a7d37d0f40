// Implements: util/torch_compat.h.
#include "util/torch_compat.h"

#include <thread>

namespace t2i {

void set_num_threads(int n) {
    if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
    if (n <= 0) n = 1;
    torch::set_num_threads(n);
    // Initializes this thread's OpenMP team size now, so worker threads that later lower the
    // global count for themselves (data loading) do not lower it here.
    (void)at::get_num_threads();
}

}  // namespace t2i

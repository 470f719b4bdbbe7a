// patronus::parallel_threads_seen(work): how many threads one at::parallel_for over `work` items
// (grain 1) ran on. A debug entry point: it shows whether the extension's parallel loops use the
// threads torch is set to (the extension must be compiled with the OpenMP flags torch uses; without
// them the loops run on one thread whatever torch.set_num_threads says).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <atomic>
#include <cstdint>

namespace {

int64_t parallel_threads_seen(int64_t work) {
  TORCH_CHECK(work >= 0, "parallel_threads_seen: work must be >= 0, got ", work);
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, work, 1, [&](int64_t, int64_t) {
    const int thread = at::get_thread_num();
    if (thread < 64) seen.fetch_or(uint64_t{1} << thread);
  });
  return __builtin_popcountll(seen.load());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patronus, m) {
  m.def("parallel_threads_seen(int work) -> int", &parallel_threads_seen);
}

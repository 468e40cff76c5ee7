#include "common/malloc_tuning.h"

#include <malloc.h>

#include <cstdlib>

namespace sslbench {

void TuneMallocForLargeBuffers(int arenas) {
  if (arenas > 0 && std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, arenas);
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) mallopt(M_MMAP_THRESHOLD, 64 << 20);
  if (std::getenv("MALLOC_TRIM_THRESHOLD_") == nullptr) mallopt(M_TRIM_THRESHOLD, 128 << 20);
}

void ReleaseFreeMemory() { malloc_trim(0); }

}  // namespace sslbench

#pragma once
// glibc malloc settings for processes that move multi-megabyte buffers
// (feature chunks, checkpoints) on many threads.

namespace sslbench {

// Serves buffers up to 64 MiB from the heap instead of a fresh mapping each
// (mapping, faulting in, zeroing and unmapping 4 MiB per chunk cost a fifth
// of the feature store's loopback throughput), and keeps up to 128 MiB free
// at the top of a heap. With `arenas` > 0, caps glibc's per-thread arenas
// (whose freed blocks otherwise stay resident). The environment's
// MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ win.
// Call before threads start; pair with ReleaseFreeMemory() when calm.
void TuneMallocForLargeBuffers(int arenas);

// Hands freed heap memory back to the system (malloc_trim).
void ReleaseFreeMemory();

}  // namespace sslbench

#pragma once
// A fixed-size pool of threads running closures in FIFO order. The gRPC
// reactors hand database work to it so that no reaction blocks.

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace sslbench {

class ThreadPool {
 public:
  // `max_queued` bounds the closures waiting for a thread (0: unbounded);
  // TrySchedule refuses past it.
  explicit ThreadPool(int num_threads, size_t max_queued = 0);
  // Runs every queued closure, then joins the threads.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Schedule(std::function<void()> fn);
  // Schedule unless `max_queued` closures are already waiting; false then
  // (the caller answers "overloaded" instead of queueing without bound).
  bool TrySchedule(std::function<void()> fn);

 private:
  void Run();

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  const size_t max_queued_;
  std::vector<std::thread> threads_;
};

}  // namespace sslbench

// The coordinator's executor: FIFO closures, and a bound on what may wait.

#include "common/thread_pool.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace sslbench {
namespace {

TEST(ThreadPoolTest, TryScheduleRefusesPastTheQueueBound) {
  std::atomic<int> ran{0};
  absl::Notification started, release;
  {
    ThreadPool pool(1, /*max_queued=*/2);
    pool.Schedule([&] {
      started.Notify();
      release.WaitForNotification();
      ++ran;
    });
    started.WaitForNotification();  // the one thread is busy; the queue is empty
    EXPECT_TRUE(pool.TrySchedule([&] { ++ran; }));
    EXPECT_TRUE(pool.TrySchedule([&] { ++ran; }));
    EXPECT_FALSE(pool.TrySchedule([&] { ++ran; })) << "a third waiting call was queued";
    release.Notify();
  }  // the destructor runs what is queued
  EXPECT_EQ(ran.load(), 3);

  ThreadPool unbounded(1);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(unbounded.TrySchedule([] {}));
}

}  // namespace
}  // namespace sslbench

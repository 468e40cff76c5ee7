#include "worker/task_runner.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace sslbench::worker {

std::string TaskKindLabel(v1::TaskKind kind) {
  std::string name = v1::TaskKind_Name(kind);
  constexpr absl::string_view kPrefix = "TASK_KIND_";
  if (absl::StartsWith(name, kPrefix)) name = name.substr(kPrefix.size());
  return name.empty() ? "unknown" : absl::AsciiStrToLower(name);
}

TaskContext::TaskContext(const v1::LeaseTaskResponse& lease, CoordinatorConnection& connection,
                         const absl::Notification& daemon_stopping, absl::Duration rpc_timeout,
                         absl::Duration rpc_retry_window)
    : task_id_(lease.task_id()),
      token_(lease.lease_token()),
      attempt_(lease.attempt()),
      spec_(lease.spec()),
      connection_(connection),
      daemon_stopping_(daemon_stopping),
      rpc_timeout_(rpc_timeout),
      rpc_retry_window_(rpc_retry_window) {}

CallOptions TaskContext::rpc() const {
  CallOptions options;
  options.timeout = rpc_timeout_;
  options.retry_window = rpc_retry_window_;
  options.stop = [this] { return ShouldStop(); };
  return options;
}

void TaskRunners::Register(v1::TaskKind kind, std::shared_ptr<TaskRunner> runner) {
  runners_[kind] = std::move(runner);
}

TaskRunner* TaskRunners::Find(v1::TaskKind kind) const {
  auto it = runners_.find(kind);
  return it == runners_.end() ? nullptr : it->second.get();
}

std::vector<v1::TaskKind> TaskRunners::Kinds() const {
  std::vector<v1::TaskKind> kinds;
  for (const auto& [kind, runner] : runners_) kinds.push_back(kind);
  return kinds;
}

}  // namespace sslbench::worker

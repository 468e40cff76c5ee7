#include "server/study_service.h"

#include <grpcpp/alarm.h>

#include <atomic>
#include <memory>

#include "absl/synchronization/mutex.h"

#include "server/service_util.h"

namespace sslbench::server {
namespace {

// Streams a study's status: poll on the executor, write, wait on an alarm,
// repeat until the study ends or the client goes away.
class WatchReactor final : public grpc::ServerWriteReactor<v1::StudyStatus> {
 public:
  WatchReactor(Coordinator& coordinator, ThreadPool& pool, Authenticator& auth,
               std::string authorization, int64_t study_id, absl::Duration interval)
      : coordinator_(coordinator), pool_(pool), study_id_(study_id), interval_(interval) {
    pool_.Schedule([this, &auth, authorization = std::move(authorization)] {
      const absl::StatusOr<Caller> caller = auth.Authorize(authorization, "WatchStudy");
      if (!caller.ok()) {
        FinishOnce(ToGrpcStatus(caller.status()));
        return;
      }
      Poll();
    });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce(grpc::Status(grpc::CANCELLED, "client went away"));
      return;
    }
    if (terminal_) {
      FinishOnce(grpc::Status::OK);
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (!cancelled_) {
        // A fresh alarm for every wait: setting the previous one again could
        // replace its callback while that is still running on another
        // thread. Dropping it is safe even then (gRPC keeps it alive until
        // its callback returns).
        alarm_ = std::make_unique<grpc::Alarm>();
        alarm_->Set(std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(interval_),
                    [this](bool fired) {
                      if (fired && !cancelled_) {
                        pool_.Schedule([this] { Poll(); });
                      } else {
                        FinishOnce(grpc::Status(grpc::CANCELLED, "watch cancelled"));
                      }
                    });
        return;
      }
    }
    FinishOnce(grpc::Status(grpc::CANCELLED, "watch cancelled"));
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (alarm_) alarm_->Cancel();
  }
  void OnDone() override { delete this; }

 private:
  void Poll() {
    if (cancelled_) {
      FinishOnce(grpc::Status(grpc::CANCELLED, "watch cancelled"));
      return;
    }
    auto status = coordinator_.GetStudy(study_id_);
    if (!status.ok()) {
      FinishOnce(ToGrpcStatus(status.status()));
      return;
    }
    status_ = *std::move(status);
    terminal_ = IsTerminal(status_.state());
    StartWrite(&status_);
  }
  void FinishOnce(const grpc::Status& status) {
    if (!finished_.exchange(true)) Finish(status);
  }

  Coordinator& coordinator_;
  ThreadPool& pool_;
  const int64_t study_id_;
  const absl::Duration interval_;
  absl::Mutex mu_;
  std::unique_ptr<grpc::Alarm> alarm_ ABSL_GUARDED_BY(mu_);
  v1::StudyStatus status_;
  bool terminal_ = false;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> finished_{false};
};

}  // namespace

grpc::ServerUnaryReactor* StudyServiceImpl::SubmitStudy(
    grpc::CallbackServerContext* context, const v1::SubmitStudyRequest* request,
    v1::SubmitStudyResponse* response) {
  return RunUnary(context, "SubmitStudy", pool_, metrics_, auth_, response,
                  [this, request](const Caller& caller) {
                    return coordinator_.SubmitStudy(*request, caller);
                  });
}

grpc::ServerUnaryReactor* StudyServiceImpl::GetStudy(
    grpc::CallbackServerContext* context, const v1::GetStudyRequest* request,
    v1::StudyStatus* response) {
  return RunUnary(context, "GetStudy", pool_, metrics_, auth_, response,
                  [this, request] {
                    return coordinator_.GetStudy(request->study_id(), request->include_spec());
                  });
}

grpc::ServerWriteReactor<v1::StudyStatus>* StudyServiceImpl::WatchStudy(
    grpc::CallbackServerContext* context, const v1::WatchStudyRequest* request) {
  const int interval_ms = request->interval_ms() > 0 ? request->interval_ms() : 500;
  return new WatchReactor(coordinator_, pool_, auth_, AuthorizationOf(*context),
                          request->study_id(),
                          absl::Milliseconds(std::max(interval_ms, 50)));
}

grpc::ServerUnaryReactor* StudyServiceImpl::CancelStudy(
    grpc::CallbackServerContext* context, const v1::CancelStudyRequest* request,
    v1::StudyStatus* response) {
  return RunUnary(context, "CancelStudy", pool_, metrics_, auth_, response,
                  [this, request](const Caller& caller) {
                    return coordinator_.CancelStudy(request->study_id(), caller);
                  });
}

grpc::ServerUnaryReactor* StudyServiceImpl::ListResults(
    grpc::CallbackServerContext* context, const v1::ListResultsRequest* request,
    v1::ListResultsResponse* response) {
  return RunUnary(context, "ListResults", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.ListResults(request->study_id()); });
}

grpc::ServerUnaryReactor* StudyServiceImpl::ListWorkers(
    grpc::CallbackServerContext* context, const v1::ListWorkersRequest* /*request*/,
    v1::ListWorkersResponse* response) {
  return RunUnary(context, "ListWorkers", pool_, metrics_, auth_, response,
                  [this] { return coordinator_.ListWorkers(); });
}

grpc::ServerUnaryReactor* StudyServiceImpl::GetArtifact(
    grpc::CallbackServerContext* context, const v1::GetArtifactRequest* request,
    v1::Artifact* response) {
  return RunUnary(context, "GetArtifact", pool_, metrics_, auth_, response,
                  [this, request] {
                    return coordinator_.GetArtifact(request->artifact_id(), request->offset(),
                                                    request->max_bytes());
                  });
}

grpc::ServerUnaryReactor* StudyServiceImpl::Correlate(
    grpc::CallbackServerContext* context, const v1::CorrelateRequest* request,
    v1::CorrelateResponse* response) {
  return RunUnary(context, "Correlate", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.Correlate(*request); });
}

grpc::ServerUnaryReactor* StudyServiceImpl::CreateToken(
    grpc::CallbackServerContext* context, const v1::CreateTokenRequest* request,
    v1::CreateTokenResponse* response) {
  return RunUnary(context, "CreateToken", pool_, metrics_, auth_, response,
                  [this, request](const Caller& caller) {
                    return coordinator_.CreateToken(*request, caller);
                  });
}

grpc::ServerUnaryReactor* StudyServiceImpl::ListTokens(
    grpc::CallbackServerContext* context, const v1::ListTokensRequest* /*request*/,
    v1::ListTokensResponse* response) {
  return RunUnary(context, "ListTokens", pool_, metrics_, auth_, response,
                  [this] { return coordinator_.ListTokens(); });
}

grpc::ServerUnaryReactor* StudyServiceImpl::RevokeToken(
    grpc::CallbackServerContext* context, const v1::RevokeTokenRequest* request,
    v1::TokenInfo* response) {
  return RunUnary(context, "RevokeToken", pool_, metrics_, auth_, response,
                  [this, request](const Caller& caller) {
                    return coordinator_.RevokeToken(request->token_id(), caller);
                  });
}

grpc::ServerUnaryReactor* StudyServiceImpl::ListFeatureCaches(
    grpc::CallbackServerContext* context, const v1::ListFeatureCachesRequest* request,
    v1::ListFeatureCachesResponse* response) {
  return RunUnary(context, "ListFeatureCaches", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.ListFeatureCaches(request->study_id()); });
}

grpc::ServerUnaryReactor* StudyServiceImpl::DropFeatureCache(
    grpc::CallbackServerContext* context, const v1::DropFeatureCacheRequest* request,
    v1::FeatureCacheSummary* response) {
  return RunUnary(context, "DropFeatureCache", pool_, metrics_, auth_, response,
                  [this, request](const Caller& caller) {
                    return coordinator_.DropFeatureCache(request->cache_key(), caller);
                  });
}

}  // namespace sslbench::server

#pragma once
// gRPC adapter of the client API (sslbench.v1.StudyService), callback API.

#include "common/thread_pool.h"
#include "server/coordinator.h"
#include "sslbench/v1/client_api.grpc.pb.h"

namespace sslbench::server {

class StudyServiceImpl final : public v1::StudyService::CallbackService {
 public:
  // All arguments must outlive the service; `metrics` may be null.
  StudyServiceImpl(Coordinator& coordinator, ThreadPool& pool,
                   CoordinatorMetrics* metrics, Authenticator& auth)
      : coordinator_(coordinator), pool_(pool), metrics_(metrics), auth_(auth) {}

  grpc::ServerUnaryReactor* SubmitStudy(grpc::CallbackServerContext* context,
                                        const v1::SubmitStudyRequest* request,
                                        v1::SubmitStudyResponse* response) override;
  grpc::ServerUnaryReactor* GetStudy(grpc::CallbackServerContext* context,
                                     const v1::GetStudyRequest* request,
                                     v1::StudyStatus* response) override;
  grpc::ServerWriteReactor<v1::StudyStatus>* WatchStudy(
      grpc::CallbackServerContext* context,
      const v1::WatchStudyRequest* request) override;
  grpc::ServerUnaryReactor* CancelStudy(grpc::CallbackServerContext* context,
                                        const v1::CancelStudyRequest* request,
                                        v1::StudyStatus* response) override;
  grpc::ServerUnaryReactor* ListResults(grpc::CallbackServerContext* context,
                                        const v1::ListResultsRequest* request,
                                        v1::ListResultsResponse* response) override;
  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* context,
                                        const v1::ListWorkersRequest* request,
                                        v1::ListWorkersResponse* response) override;
  grpc::ServerUnaryReactor* GetArtifact(grpc::CallbackServerContext* context,
                                        const v1::GetArtifactRequest* request,
                                        v1::Artifact* response) override;
  grpc::ServerUnaryReactor* Correlate(grpc::CallbackServerContext* context,
                                      const v1::CorrelateRequest* request,
                                      v1::CorrelateResponse* response) override;
  grpc::ServerUnaryReactor* CreateToken(grpc::CallbackServerContext* context,
                                        const v1::CreateTokenRequest* request,
                                        v1::CreateTokenResponse* response) override;
  grpc::ServerUnaryReactor* ListTokens(grpc::CallbackServerContext* context,
                                       const v1::ListTokensRequest* request,
                                       v1::ListTokensResponse* response) override;
  grpc::ServerUnaryReactor* RevokeToken(grpc::CallbackServerContext* context,
                                        const v1::RevokeTokenRequest* request,
                                        v1::TokenInfo* response) override;
  grpc::ServerUnaryReactor* ListFeatureCaches(grpc::CallbackServerContext* context,
                                              const v1::ListFeatureCachesRequest* request,
                                              v1::ListFeatureCachesResponse* response) override;
  grpc::ServerUnaryReactor* DropFeatureCache(grpc::CallbackServerContext* context,
                                             const v1::DropFeatureCacheRequest* request,
                                             v1::FeatureCacheSummary* response) override;

 private:
  Coordinator& coordinator_;
  ThreadPool& pool_;
  CoordinatorMetrics* metrics_;
  Authenticator& auth_;
};

}  // namespace sslbench::server

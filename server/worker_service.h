#pragma once
// gRPC adapter of the worker API (sslbench.v1.WorkerService), callback API.

#include "common/thread_pool.h"
#include "server/coordinator.h"
#include "sslbench/v1/worker_api.grpc.pb.h"

namespace sslbench::server {

class WorkerServiceImpl final : public v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(Coordinator& coordinator, ThreadPool& pool,
                    CoordinatorMetrics* metrics, Authenticator& auth)
      : coordinator_(coordinator), pool_(pool), metrics_(metrics), auth_(auth) {}

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* context,
                                           const v1::RegisterWorkerRequest* request,
                                           v1::RegisterWorkerResponse* response) override;
  grpc::ServerUnaryReactor* LeaseTask(grpc::CallbackServerContext* context,
                                      const v1::LeaseTaskRequest* request,
                                      v1::LeaseTaskResponse* response) override;
  grpc::ServerUnaryReactor* LeaseTasks(grpc::CallbackServerContext* context,
                                       const v1::LeaseTasksRequest* request,
                                       v1::LeaseTasksResponse* response) override;
  grpc::ServerUnaryReactor* CompleteTasks(grpc::CallbackServerContext* context,
                                          const v1::CompleteTasksRequest* request,
                                          v1::CompleteTasksResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* CompleteTask(grpc::CallbackServerContext* context,
                                         const v1::CompleteTaskRequest* request,
                                         v1::CompleteTaskResponse* response) override;
  grpc::ServerUnaryReactor* FailTask(grpc::CallbackServerContext* context,
                                     const v1::FailTaskRequest* request,
                                     v1::FailTaskResponse* response) override;
  grpc::ServerUnaryReactor* PutFeatureChunk(grpc::CallbackServerContext* context,
                                            const v1::PutFeatureChunkRequest* request,
                                            v1::PutFeatureChunkResponse* response) override;
  grpc::ServerUnaryReactor* GetFeatureChunk(grpc::CallbackServerContext* context,
                                            const v1::GetFeatureChunkRequest* request,
                                            v1::FeatureChunk* response) override;
  grpc::ServerUnaryReactor* GetFeatureCache(grpc::CallbackServerContext* context,
                                            const v1::GetFeatureCacheRequest* request,
                                            v1::FeatureCacheInfo* response) override;
  grpc::ServerUnaryReactor* PutCheckpoint(grpc::CallbackServerContext* context,
                                          const v1::PutCheckpointRequest* request,
                                          v1::PutCheckpointResponse* response) override;
  grpc::ServerUnaryReactor* PutArtifactPart(grpc::CallbackServerContext* context,
                                            const v1::PutArtifactPartRequest* request,
                                            v1::PutArtifactPartResponse* response) override;
  grpc::ServerUnaryReactor* GetCheckpoint(grpc::CallbackServerContext* context,
                                          const v1::GetCheckpointRequest* request,
                                          v1::Checkpoint* response) override;

 private:
  Coordinator& coordinator_;
  ThreadPool& pool_;
  CoordinatorMetrics* metrics_;
  Authenticator& auth_;
};

}  // namespace sslbench::server

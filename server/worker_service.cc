#include "server/worker_service.h"

#include "server/service_util.h"

namespace sslbench::server {

grpc::ServerUnaryReactor* WorkerServiceImpl::RegisterWorker(
    grpc::CallbackServerContext* context, const v1::RegisterWorkerRequest* request,
    v1::RegisterWorkerResponse* response) {
  return RunUnary(context, "RegisterWorker", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.RegisterWorker(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::LeaseTask(
    grpc::CallbackServerContext* context, const v1::LeaseTaskRequest* request,
    v1::LeaseTaskResponse* response) {
  return RunUnary(context, "LeaseTask", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.LeaseTask(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::LeaseTasks(
    grpc::CallbackServerContext* context, const v1::LeaseTasksRequest* request,
    v1::LeaseTasksResponse* response) {
  return RunUnary(context, "LeaseTasks", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.LeaseTasks(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::CompleteTasks(
    grpc::CallbackServerContext* context, const v1::CompleteTasksRequest* request,
    v1::CompleteTasksResponse* response) {
  return RunUnary(context, "CompleteTasks", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.CompleteTasks(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Heartbeat(
    grpc::CallbackServerContext* context, const v1::HeartbeatRequest* request,
    v1::HeartbeatResponse* response) {
  return RunUnary(context, "Heartbeat", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.Heartbeat(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::CompleteTask(
    grpc::CallbackServerContext* context, const v1::CompleteTaskRequest* request,
    v1::CompleteTaskResponse* response) {
  return RunUnary(context, "CompleteTask", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.CompleteTask(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::FailTask(
    grpc::CallbackServerContext* context, const v1::FailTaskRequest* request,
    v1::FailTaskResponse* response) {
  return RunUnary(context, "FailTask", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.FailTask(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::PutFeatureChunk(
    grpc::CallbackServerContext* context, const v1::PutFeatureChunkRequest* request,
    v1::PutFeatureChunkResponse* response) {
  return RunUnary(context, "PutFeatureChunk", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.PutFeatureChunk(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::GetFeatureChunk(
    grpc::CallbackServerContext* context, const v1::GetFeatureChunkRequest* request,
    v1::FeatureChunk* response) {
  return RunUnary(context, "GetFeatureChunk", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.GetFeatureChunk(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::GetFeatureCache(
    grpc::CallbackServerContext* context, const v1::GetFeatureCacheRequest* request,
    v1::FeatureCacheInfo* response) {
  return RunUnary(context, "GetFeatureCache", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.GetFeatureCache(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::PutCheckpoint(
    grpc::CallbackServerContext* context, const v1::PutCheckpointRequest* request,
    v1::PutCheckpointResponse* response) {
  return RunUnary(context, "PutCheckpoint", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.PutCheckpoint(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::PutArtifactPart(
    grpc::CallbackServerContext* context, const v1::PutArtifactPartRequest* request,
    v1::PutArtifactPartResponse* response) {
  return RunUnary(context, "PutArtifactPart", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.PutArtifactPart(*request); });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::GetCheckpoint(
    grpc::CallbackServerContext* context, const v1::GetCheckpointRequest* request,
    v1::Checkpoint* response) {
  return RunUnary(context, "GetCheckpoint", pool_, metrics_, auth_, response,
                  [this, request] { return coordinator_.GetCheckpoint(*request); });
}

}  // namespace sslbench::server

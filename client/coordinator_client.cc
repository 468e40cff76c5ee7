#include "client/coordinator_client.h"

#include <sys/ioctl.h>

#include <fstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/format.h"
#include "common/random.h"
#include "common/grpc_status.h"

namespace sslbench::client {

std::string ResolveCoordinatorAddress(const std::string& flag_value,
                                      const char* env_value,
                                      const std::string& addr_file) {
  if (!flag_value.empty()) return flag_value;
  if (env_value != nullptr && env_value[0] != '\0') return env_value;
  std::ifstream in(addr_file);
  std::string line;
  if (in && std::getline(in, line)) {
    const std::string address(absl::StripAsciiWhitespace(line));
    if (!address.empty()) return address;
  }
  return kDefaultCoordinator;
}

absl::StatusOr<std::string> ResolveToken(const std::string& token_file, const char* env_value,
                                         const std::string& default_file) {
  auto read = [](const std::string& path) -> std::string {
    std::ifstream in(path);
    std::string line;
    if (!in || !std::getline(in, line)) return "";
    return std::string(absl::StripAsciiWhitespace(line));
  };
  if (!token_file.empty()) {
    std::ifstream probe(token_file);
    if (!probe) return absl::NotFoundError(absl::StrCat("token file ", token_file, " cannot be read"));
    std::string token = read(token_file);
    if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("token file ", token_file, " is empty"));
    return token;
  }
  if (env_value != nullptr && env_value[0] != '\0') return std::string(env_value);
  return read(default_file);
}

std::string FormatError(const absl::Status& status, const std::string& address) {
  std::string out = absl::StrCat("sslbench: ", absl::StatusCodeToString(status.code()),
                                 ": ", status.message());
  if (status.code() == absl::StatusCode::kUnavailable) {
    absl::StrAppend(&out, "\n  no coordinator answered at ", address,
                    "; start a local one with `sslbench up`, or point to one with "
                    "--coordinator=HOST:PORT or SSLBENCH_COORDINATOR");
  }
  return out;
}

CoordinatorClient::CoordinatorClient(const std::string& address,
                                     absl::Duration rpc_timeout, std::string token,
                                     std::shared_ptr<grpc::ChannelCredentials> credentials)
    : address_(address), rpc_timeout_(rpc_timeout), token_(std::move(token)) {
  grpc::ChannelArguments args;
  // Study specs and result lists with per-class accuracies can be large.
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  channel_ = grpc::CreateCustomChannel(
      address_, credentials ? credentials : grpc::InsecureChannelCredentials(), args);
  stub_ = v1::StudyService::NewStub(channel_);
}

void CoordinatorClient::Prepare(grpc::ClientContext& context) const {
  context.set_deadline(absl::ToChronoTime(absl::Now() + rpc_timeout_));
  Authorize(context);
}

void CoordinatorClient::Authorize(grpc::ClientContext& context) const {
  if (!token_.empty()) context.AddMetadata("authorization", "Bearer " + token_);
}

absl::StatusOr<v1::CreateTokenResponse> CoordinatorClient::CreateToken(const std::string& name,
                                                                       const std::string& role) {
  grpc::ClientContext context;
  Prepare(context);
  v1::CreateTokenRequest request;
  request.set_name(name);
  request.set_role(role);
  v1::CreateTokenResponse response;
  const grpc::Status status = stub_->CreateToken(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ListTokensResponse> CoordinatorClient::ListTokens() {
  grpc::ClientContext context;
  Prepare(context);
  v1::ListTokensResponse response;
  const grpc::Status status = stub_->ListTokens(&context, v1::ListTokensRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::TokenInfo> CoordinatorClient::RevokeToken(int64_t token_id) {
  grpc::ClientContext context;
  Prepare(context);
  v1::RevokeTokenRequest request;
  request.set_token_id(token_id);
  v1::TokenInfo response;
  const grpc::Status status = stub_->RevokeToken(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ListFeatureCachesResponse> CoordinatorClient::ListFeatureCaches(
    int64_t study_id) {
  grpc::ClientContext context;
  Prepare(context);
  v1::ListFeatureCachesRequest request;
  request.set_study_id(study_id);
  v1::ListFeatureCachesResponse response;
  const grpc::Status status = stub_->ListFeatureCaches(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::FeatureCacheSummary> CoordinatorClient::DropFeatureCache(
    const std::string& cache_key) {
  grpc::ClientContext context;
  Prepare(context);
  v1::DropFeatureCacheRequest request;
  request.set_cache_key(cache_key);
  v1::FeatureCacheSummary response;
  const grpc::Status status = stub_->DropFeatureCache(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::SubmitStudyResponse> CoordinatorClient::SubmitStudy(
    const v1::StudySpec& spec, const std::string& request_id, std::string* used_request_id) {
  v1::SubmitStudyRequest request;
  *request.mutable_spec() = spec;
  request.set_request_id(request_id.empty() ? "cli-" + RandomHex(16) : request_id);
  if (used_request_id != nullptr) *used_request_id = request.request_id();
  absl::Duration backoff = submit_backoff;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    Prepare(context);
    v1::SubmitStudyResponse response;
    const grpc::Status status = stub_->SubmitStudy(&context, request, &response);
    if (status.ok()) return response;
    // A first call that found nobody listening sent nothing: no coordinator
    // runs there, and saying so at once helps more than waiting.
    const bool never_sent = attempt == 1 &&
                            status.error_code() == grpc::StatusCode::UNAVAILABLE &&
                            absl::StrContains(status.error_message(), "failed to connect");
    const bool retry = (status.error_code() == grpc::StatusCode::UNAVAILABLE && !never_sent) ||
                       status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                       status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
    if (!retry || attempt >= submit_attempts) return FromGrpcStatus(status);
    std::fprintf(stderr, "sslbench: submit: %s; trying again in %s under the same request id\n",
                 status.error_message().c_str(), absl::FormatDuration(backoff).c_str());
    absl::SleepFor(backoff);
    backoff *= 2;
  }
}

absl::StatusOr<v1::StudyStatus> CoordinatorClient::GetStudy(int64_t study_id, bool include_spec) {
  grpc::ClientContext context;
  Prepare(context);
  v1::GetStudyRequest request;
  request.set_study_id(study_id);
  request.set_include_spec(include_spec);
  v1::StudyStatus response;
  const grpc::Status status = stub_->GetStudy(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::StudyStatus> CoordinatorClient::CancelStudy(int64_t study_id) {
  grpc::ClientContext context;
  Prepare(context);
  v1::CancelStudyRequest request;
  request.set_study_id(study_id);
  v1::StudyStatus response;
  const grpc::Status status = stub_->CancelStudy(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ListResultsResponse> CoordinatorClient::ListResults(
    int64_t study_id) {
  grpc::ClientContext context;
  Prepare(context);
  v1::ListResultsRequest request;
  request.set_study_id(study_id);
  v1::ListResultsResponse response;
  const grpc::Status status = stub_->ListResults(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ListWorkersResponse> CoordinatorClient::ListWorkers() {
  grpc::ClientContext context;
  Prepare(context);
  v1::ListWorkersResponse response;
  const grpc::Status status =
      stub_->ListWorkers(&context, v1::ListWorkersRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::Artifact> CoordinatorClient::GetArtifact(int64_t artifact_id) {
  // In pages of 8 MiB, so an artefact of any size fits the message limits.
  constexpr int64_t kPage = int64_t{8} << 20;
  v1::Artifact whole;
  std::string data;
  while (true) {
    grpc::ClientContext context;
    Prepare(context);
    v1::GetArtifactRequest request;
    request.set_artifact_id(artifact_id);
    request.set_offset(static_cast<int64_t>(data.size()));
    request.set_max_bytes(kPage);
    v1::Artifact page;
    const grpc::Status status = stub_->GetArtifact(&context, request, &page);
    if (!status.ok()) return FromGrpcStatus(status);
    if (page.offset() != static_cast<int64_t>(data.size())) {
      return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": asked for bytes from ",
                                              data.size(), ", got bytes from ", page.offset()));
    }
    data.append(page.data());
    if (static_cast<int64_t>(data.size()) >= page.total_bytes() || page.data().empty()) {
      if (static_cast<int64_t>(data.size()) != page.total_bytes()) {
        return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": ", data.size(),
                                                " of ", page.total_bytes(), " bytes read"));
      }
      whole = std::move(page);
      break;
    }
  }
  whole.set_data(std::move(data));
  whole.set_offset(0);
  return whole;
}

absl::StatusOr<v1::StudyStatus> StudyWatcher::Run() {
  constexpr absl::Duration kReconnectFor = absl::Minutes(1);
  bool seen_any = false;
  absl::Time lost_since = absl::InfiniteFuture();
  v1::StudyStatus last;
  while (true) {
    grpc::ClientContext context;
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return absl::CancelledError("watch cancelled");
      context_ = &context;
    }
    v1::WatchStudyRequest request;
    request.set_study_id(study_id_);
    request.set_interval_ms(500);
    client_->Authorize(context);
    std::unique_ptr<grpc::ClientReader<v1::StudyStatus>> reader =
        client_->stub()->WatchStudy(&context, request);
    v1::StudyStatus status;
    while (reader->Read(&status)) {
      seen_any = true;
      lost_since = absl::InfiniteFuture();
      last = status;
      const bool ended = status.state() != v1::STUDY_STATE_RUNNING;
      Draw(status, ended);
    }
    const grpc::Status finish = reader->Finish();
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      context_ = nullptr;
      cancelled = cancelled_;
    }
    if (cancelled) return absl::CancelledError("watch cancelled");
    if (seen_any && last.state() != v1::STUDY_STATE_RUNNING &&
        last.state() != v1::STUDY_STATE_UNSPECIFIED) {
      return last;
    }
    // The stream broke (or closed early) before the study ended: a
    // coordinator restart or a replica going away. Reconnect for a while,
    // but report a coordinator that never answered at once.
    const bool retryable =
        finish.ok() || finish.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (!retryable || !seen_any) {
      if (finish.ok()) {
        return absl::InternalError("the coordinator closed the watch before the study ended");
      }
      return FromGrpcStatus(finish);
    }
    const absl::Time now = absl::Now();
    if (lost_since == absl::InfiniteFuture()) lost_since = now;
    if (now - lost_since > kReconnectFor) {
      return finish.ok() ? absl::UnavailableError("lost the coordinator")
                         : FromGrpcStatus(finish);
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

void StudyWatcher::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

void StudyWatcher::Draw(const v1::StudyStatus& status, bool final) {
  const absl::Time now = absl::Now();
  std::vector<std::string> lines = bars_.Lines(status, now);
  if (tty_) {
    // A wrapped line would break the cursor-up redraw: cut at the width.
    winsize ws{};
    if (ioctl(fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1) {
      for (auto& line : lines) {
        if (line.size() >= ws.ws_col) line.resize(ws.ws_col - 1);
      }
    }
    std::string out;
    if (drawn_lines_ > 0) absl::StrAppend(&out, "\x1b[", drawn_lines_, "A");
    for (const auto& line : lines) absl::StrAppend(&out, "\r\x1b[2K", line, "\n");
    std::fputs(out.c_str(), out_);
    std::fflush(out_);
    drawn_lines_ = static_cast<int>(lines.size());
    return;
  }
  // Without a terminal: print when something changed, or now and then.
  std::string counts;
  for (const auto& p : status.progress()) {
    absl::StrAppend(&counts, p.kind(), ":", p.succeeded(), ",", p.leased(), ",",
                    p.failed(), ",", p.cancelled(), ";");
  }
  if (!final && counts == last_counts_ && now - last_print_ < absl::Seconds(30)) return;
  last_counts_ = counts;
  last_print_ = now;
  const std::string stamp = FormatDuration(status.elapsed_seconds());
  for (const auto& line : lines) std::fprintf(out_, "[%s] %s\n", stamp.c_str(), line.c_str());
  std::fflush(out_);
}

int ExitCodeForState(v1::StudyState state) {
  switch (state) {
    case v1::STUDY_STATE_SUCCEEDED:
      return 0;
    case v1::STUDY_STATE_CANCELLED:
      return 2;
    default:
      return 1;
  }
}

absl::StatusOr<v1::CorrelateResponse> Correlate(CoordinatorClient& client,
                                                const v1::CorrelateRequest& request,
                                                absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  client.Authorize(context);
  v1::CorrelateResponse response;
  const grpc::Status status = client.stub()->Correlate(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

}  // namespace sslbench::client

// PgStore's checkpoints: parts recorded in the database under the lease's
// fence, their bytes in the blob store; a checkpoint becomes the task's
// latest when its last part is recorded.

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "server/store/pg_internal.h"
#include "server/store/pg_store.h"

namespace sslbench::server {
namespace {

constexpr int32_t kMaxParts = 1 << 16;

}  // namespace

absl::Status PgStore::PutCheckpoint(const v1::PutCheckpointRequest& request, absl::Time now) {
  const int64_t task_id = request.task_id();
  const int64_t token = request.lease_token();
  const int32_t num_parts = request.num_parts() == 0 ? 1 : request.num_parts();
  const int64_t total =
      request.total_bytes() == 0 && num_parts == 1 ? static_cast<int64_t>(request.data().size())
                                                   : request.total_bytes();
  if (num_parts < 1 || num_parts > kMaxParts || request.part() < 0 ||
      request.part() >= num_parts || total < static_cast<int64_t>(request.data().size()) ||
      request.step() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint of task ", task_id, ": part ", request.part(), " of ", num_parts, ", ",
        request.data().size(), " of ", total, " bytes, step ", request.step(),
        " do not fit together"));
  }
  RETURN_IF_ERROR(Transact("check_fence", [&](Txn& t) { return CheckLease(t.work, task_id, token); }));
  const std::string key = absl::StrCat("checkpoints/", task_id, "/", token, ".", request.step(),
                                       ".", request.part());
  RETURN_IF_ERROR(blobs_->Put(key, request.data()));
  std::vector<std::string> obsolete;
  const absl::Status recorded = Transact("put_checkpoint", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    obsolete.clear();
    RETURN_IF_ERROR(CheckLease(w, task_id, token));
    w.exec_params(
        "INSERT INTO checkpoint_parts (task_id, token, step, part, num_parts, total_bytes, "
        "blob_key, bytes, crc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (task_id, token, step, part) DO UPDATE SET num_parts = EXCLUDED.num_parts, "
        "total_bytes = EXCLUDED.total_bytes, blob_key = EXCLUDED.blob_key, "
        "bytes = EXCLUDED.bytes, crc = EXCLUDED.crc",
        task_id, token, request.step(), request.part(), num_parts, total, key,
        static_cast<int64_t>(request.data().size()), static_cast<int64_t>(Crc32(request.data())));
    const auto have = w.exec_params(
        "SELECT count(*), COALESCE(sum(bytes), 0), min(num_parts), max(num_parts), "
        "min(total_bytes), max(total_bytes) FROM checkpoint_parts "
        "WHERE task_id = $1 AND token = $2 AND step = $3",
        task_id, token, request.step());
    const int64_t parts = have[0][0].as<int64_t>();
    const int64_t bytes = have[0][1].as<int64_t>();
    if (have[0][2].as<int32_t>() != have[0][3].as<int32_t>() ||
        have[0][4].as<int64_t>() != have[0][5].as<int64_t>()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint of task ", task_id, " at step ", request.step(),
          ": parts disagree on the part count or the total size"));
    }
    if (parts < num_parts) return absl::OkStatus();  // more parts to come
    if (bytes != total) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint of task ", task_id, " at step ", request.step(), ": its ", num_parts,
          " parts hold ", bytes, " bytes, not ", total));
    }
    // Complete: it becomes the task's checkpoint; the parts of every other
    // checkpoint of the task go.
    w.exec_params(
        "INSERT INTO checkpoints (task_id, step, data, updated_us, token, num_parts, total_bytes) "
        "VALUES ($1, $2, NULL, $3, $4, $5, $6) ON CONFLICT (task_id) DO UPDATE SET "
        "step = EXCLUDED.step, data = NULL, updated_us = EXCLUDED.updated_us, "
        "token = EXCLUDED.token, num_parts = EXCLUDED.num_parts, "
        "total_bytes = EXCLUDED.total_bytes",
        task_id, request.step(), absl::ToUnixMicros(now), token, num_parts, total);
    const auto old = w.exec_params(
        "DELETE FROM checkpoint_parts WHERE task_id = $1 AND NOT (token = $2 AND step = $3) "
        "RETURNING blob_key",
        task_id, token, request.step());
    for (const auto& row : old) obsolete.push_back(row[0].as<std::string>());
    return absl::OkStatus();
  });
  if (!recorded.ok()) {
    blobs_->Delete(key).IgnoreError();
    return recorded;
  }
  for (const std::string& k : obsolete) {
    if (absl::Status s = blobs_->Delete(k); !s.ok()) {
      LogWarning("store", "orphaned blob ", k, " in ", blobs_->Describe(), ": ", s.message());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Checkpoint> PgStore::GetCheckpoint(int64_t task_id, int32_t part) {
  v1::Checkpoint checkpoint;
  std::string key;
  int64_t bytes = 0, crc = 0;
  RETURN_IF_ERROR(Transact("get_checkpoint", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    key.clear();
    const auto r = w.exec_params(
        "SELECT step, data IS NULL, token, num_parts, total_bytes, "
        "CASE WHEN data IS NOT NULL AND $2 = 0 THEN data END "
        "FROM checkpoints WHERE task_id = $1",
        task_id, part);
    if (r.empty()) return absl::NotFoundError(absl::StrCat("task ", task_id, " has no checkpoint"));
    checkpoint.set_task_id(task_id);
    checkpoint.set_step(r[0][0].as<int64_t>());
    checkpoint.set_part(part);
    if (!r[0][1].as<bool>()) {
      // Written before checkpoints came in parts: one part, in the row.
      if (part != 0) {
        return absl::NotFoundError(absl::StrCat("checkpoint of task ", task_id, " has no part ", part));
      }
      checkpoint.set_data(FromBytes(r[0][5]));
      checkpoint.set_num_parts(1);
      checkpoint.set_total_bytes(static_cast<int64_t>(checkpoint.data().size()));
      return absl::OkStatus();
    }
    checkpoint.set_num_parts(r[0][3].as<int32_t>());
    checkpoint.set_total_bytes(r[0][4].as<int64_t>());
    const auto p = w.exec_params(
        "SELECT blob_key, bytes, crc FROM checkpoint_parts "
        "WHERE task_id = $1 AND token = $2 AND step = $3 AND part = $4",
        task_id, r[0][2].as<int64_t>(), checkpoint.step(), part);
    if (p.empty()) {
      return absl::NotFoundError(absl::StrCat("checkpoint of task ", task_id, " has no part ", part,
                                              " (it has ", checkpoint.num_parts(), ")"));
    }
    key = p[0][0].as<std::string>();
    bytes = p[0][1].as<int64_t>();
    crc = p[0][2].as<int64_t>();
    return absl::OkStatus();
  }));
  if (key.empty()) return checkpoint;
  ASSIGN_OR_RETURN(std::string data, blobs_->Get(key));
  if (static_cast<int64_t>(data.size()) != bytes || static_cast<int64_t>(Crc32(data)) != crc) {
    return absl::DataLossError(absl::StrCat("checkpoint of task ", task_id, ": part ", part,
                                            " is damaged in ", blobs_->Describe()));
  }
  checkpoint.set_data(std::move(data));
  return checkpoint;
}

}  // namespace sslbench::server

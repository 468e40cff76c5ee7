#include "server/store/migrations.h"

namespace sslbench::server {

const std::vector<Migration>& Migrations() {
  // Times are microseconds since the Unix epoch, taken from the coordinator's
  // injected clock (not the database's now()), so leases are testable.
  static const std::vector<Migration> kMigrations = {
      {1, "studies, tasks, leases, feature cache, results, workers", R"sql(
CREATE TABLE studies (
  id               BIGSERIAL PRIMARY KEY,
  request_id       TEXT UNIQUE,
  name             TEXT NOT NULL,
  spec             BYTEA NOT NULL,
  state            TEXT NOT NULL,
  error            TEXT NOT NULL DEFAULT '',
  reused_features  INT NOT NULL DEFAULT 0,
  created_us       BIGINT NOT NULL,
  finished_us      BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE tasks (
  id                BIGSERIAL PRIMARY KEY,
  study_id          BIGINT NOT NULL REFERENCES studies(id),
  kind              TEXT NOT NULL,
  state             TEXT NOT NULL,
  spec              BYTEA NOT NULL,
  cache_key         TEXT NOT NULL DEFAULT '',
  attempts          INT NOT NULL DEFAULT 0,
  max_attempts      INT NOT NULL,
  not_before_us     BIGINT NOT NULL DEFAULT 0,
  lease_token       BIGINT NOT NULL DEFAULT 0,
  lease_worker      BIGINT NOT NULL DEFAULT 0,
  lease_deadline_us BIGINT NOT NULL DEFAULT 0,
  work_done         BIGINT NOT NULL DEFAULT 0,
  work_total        BIGINT NOT NULL DEFAULT 0,
  last_error        TEXT NOT NULL DEFAULT '',
  created_us        BIGINT NOT NULL,
  finished_us       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tasks_pending ON tasks (id) WHERE state = 'PENDING';
CREATE INDEX tasks_leased ON tasks (lease_deadline_us) WHERE state = 'LEASED';
CREATE INDEX tasks_study ON tasks (study_id);
CREATE TABLE task_deps (
  task_id    BIGINT NOT NULL REFERENCES tasks(id),
  depends_on BIGINT NOT NULL REFERENCES tasks(id),
  PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX task_deps_reverse ON task_deps (depends_on);
CREATE SEQUENCE lease_tokens;
CREATE TABLE feature_caches (
  cache_key     TEXT PRIMARY KEY,
  model         TEXT NOT NULL,
  dataset       TEXT NOT NULL,
  split         TEXT NOT NULL,
  complete      BOOLEAN NOT NULL DEFAULT false,
  producer_task BIGINT NOT NULL DEFAULT 0,
  num_rows      BIGINT NOT NULL DEFAULT 0,
  dim           INT NOT NULL DEFAULT 0,
  num_chunks    INT NOT NULL DEFAULT 0,
  created_us    BIGINT NOT NULL,
  completed_us  BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE feature_chunks (
  cache_key   TEXT NOT NULL REFERENCES feature_caches(cache_key),
  chunk_index INT NOT NULL,
  row_start   BIGINT NOT NULL,
  num_rows    INT NOT NULL,
  dim         INT NOT NULL,
  features    BYTEA NOT NULL,
  labels      BYTEA NOT NULL,
  PRIMARY KEY (cache_key, chunk_index)
);
-- Float features do not compress; skip TOAST compression (pglz only wastes CPU).
ALTER TABLE feature_chunks ALTER COLUMN features SET STORAGE EXTERNAL;
CREATE TABLE results (
  id             BIGSERIAL PRIMARY KEY,
  study_id       BIGINT NOT NULL REFERENCES studies(id),
  task_id        BIGINT NOT NULL REFERENCES tasks(id),
  model          TEXT NOT NULL,
  dataset        TEXT NOT NULL,
  protocol       TEXT NOT NULL,
  variant        TEXT NOT NULL,
  top1           DOUBLE PRECISION NOT NULL,
  top5           DOUBLE PRECISION NOT NULL,
  mean_per_class DOUBLE PRECISION NOT NULL,
  result         BYTEA NOT NULL,
  UNIQUE (task_id, variant)
);
CREATE INDEX results_study ON results (study_id);
CREATE TABLE workers (
  id            BIGSERIAL PRIMARY KEY,
  name          TEXT NOT NULL,
  hostname      TEXT NOT NULL,
  device        TEXT NOT NULL,
  registered_us BIGINT NOT NULL,
  last_seen_us  BIGINT NOT NULL,
  current_task  BIGINT NOT NULL DEFAULT 0
);
)sql"},
      {2, "artefacts: trained heads and other task outputs", R"sql(
CREATE TABLE artifacts (
  id           BIGSERIAL PRIMARY KEY,
  study_id     BIGINT NOT NULL REFERENCES studies(id),
  task_id      BIGINT NOT NULL REFERENCES tasks(id),
  name         TEXT NOT NULL,
  content_type TEXT NOT NULL,
  data         BYTEA NOT NULL,
  created_us   BIGINT NOT NULL
);
CREATE INDEX artifacts_task ON artifacts (task_id);
ALTER TABLE artifacts ALTER COLUMN data SET STORAGE EXTERNAL;
)sql"},
      {3, "checkpoints of long tasks (fine-tuning)", R"sql(
CREATE TABLE checkpoints (
  task_id    BIGINT PRIMARY KEY REFERENCES tasks(id),
  step       BIGINT NOT NULL,
  data       BYTEA NOT NULL,
  updated_us BIGINT NOT NULL
);
ALTER TABLE checkpoints ALTER COLUMN data SET STORAGE EXTERNAL;
)sql"},
      {4, "feature chunk bytes in a blob store; the database keeps the record", R"sql(
CREATE TABLE blobs (
  key  TEXT PRIMARY KEY,
  data BYTEA NOT NULL
);
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
-- Chunks written before this version keep their bytes in the row.
ALTER TABLE feature_chunks
  ALTER COLUMN features DROP NOT NULL,
  ALTER COLUMN labels DROP NOT NULL,
  ADD COLUMN blob_key TEXT,
  ADD COLUMN blob_bytes BIGINT,
  ADD COLUMN blob_crc BIGINT,
  ADD COLUMN dtype TEXT NOT NULL DEFAULT 'float32';
)sql"},
      {5, "checkpoints in parts, their bytes in the blob store", R"sql(
CREATE TABLE checkpoint_parts (
  task_id     BIGINT NOT NULL REFERENCES tasks(id),
  token       BIGINT NOT NULL,
  step        BIGINT NOT NULL,
  part        INT NOT NULL,
  num_parts   INT NOT NULL,
  total_bytes BIGINT NOT NULL,
  blob_key    TEXT NOT NULL,
  bytes       BIGINT NOT NULL,
  crc         BIGINT NOT NULL,
  PRIMARY KEY (task_id, token, step, part)
);
-- Checkpoints written before this version keep their bytes in the row.
ALTER TABLE checkpoints
  ALTER COLUMN data DROP NOT NULL,
  ADD COLUMN token BIGINT,
  ADD COLUMN num_parts INT,
  ADD COLUMN total_bytes BIGINT;
)sql"},
      {6, "the features a probe reads, for leasing it where they are cached", R"sql(
ALTER TABLE tasks ADD COLUMN input_key TEXT NOT NULL DEFAULT '';
)sql"},
      {7, "tasks that only GPU workers may lease", R"sql(
ALTER TABLE tasks ADD COLUMN requires_gpu BOOLEAN NOT NULL DEFAULT false;
)sql"},
      {8, "when a coordinator last reached the database, to bridge outages", R"sql(
CREATE TABLE lease_clock (
  id           INT PRIMARY KEY CHECK (id = 1),
  last_tick_us BIGINT NOT NULL
);
-- Fencing tokens are now random (drawn by the coordinator), not a sequence.
DROP SEQUENCE lease_tokens;
)sql"},
      {9, "access tokens with roles; who submitted and cancelled each study", R"sql(
CREATE TABLE access_tokens (
  id          BIGSERIAL PRIMARY KEY,
  name        TEXT NOT NULL,
  role        TEXT NOT NULL,
  secret_hash TEXT NOT NULL UNIQUE,
  created_us  BIGINT NOT NULL,
  created_by  TEXT NOT NULL DEFAULT '',
  revoked_us  BIGINT NOT NULL DEFAULT 0
);
ALTER TABLE studies
  ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '',
  ADD COLUMN cancelled_by TEXT NOT NULL DEFAULT '';
)sql"},
      {10, "leasing without scanning the queue: a count of unfinished dependencies", R"sql(
-- Dependencies not yet SUCCEEDED; a PENDING task with none is ready. Kept by
-- CreateStudy and CompleteTask, so a lease reads the first ready task from
-- an index instead of checking every pending task's dependencies.
ALTER TABLE tasks ADD COLUMN blocked_deps INT NOT NULL DEFAULT 0;
UPDATE tasks t SET blocked_deps = (
  SELECT count(*) FROM task_deps d JOIN tasks p ON p.id = d.depends_on
  WHERE d.task_id = t.id AND p.state <> 'SUCCEEDED')
WHERE t.state = 'PENDING';
CREATE INDEX tasks_ready ON tasks (id) WHERE state = 'PENDING' AND blocked_deps = 0;
CREATE INDEX tasks_ready_cpu ON tasks (id)
  WHERE state = 'PENDING' AND blocked_deps = 0 AND NOT requires_gpu;
CREATE INDEX tasks_ready_input ON tasks (input_key)
  WHERE state = 'PENDING' AND blocked_deps = 0;
-- Whether a study still has work: one index probe, not a count of its tasks.
CREATE INDEX tasks_study_open ON tasks (study_id) WHERE state IN ('PENDING', 'LEASED');
)sql"},
      {11, "whether a study is open, asked from its newest tasks; tasks vacuumed sooner", R"sql(
-- Finished tasks leave dead entries in the open-task index until a vacuum;
-- tasks finish roughly in id order, so asking for the study's newest open
-- task finds a live entry first instead of stepping over the dead ones.
DROP INDEX tasks_study_open;
CREATE INDEX tasks_study_open ON tasks (study_id, id) WHERE state IN ('PENDING', 'LEASED');
-- The queue indexes gather dead entries at their heads as tasks are leased
-- and finished: vacuum the table after 2% of its rows changed, not 20%.
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.02,
                       autovacuum_analyze_scale_factor = 0.05,
                       autovacuum_vacuum_cost_delay = 0);
)sql"},
      {12, "dropping feature caches: the test features a probe reads; cache generations", R"sql(
-- input_key holds the train features a probe reads; test_key the test ones.
-- Tasks created before this version have none (their studies finished or
-- are readers the producer check still sees through task_deps).
ALTER TABLE tasks ADD COLUMN test_key TEXT NOT NULL DEFAULT '';
-- Which incarnation of a cache key a row is (random; 0 before this version):
-- a cache dropped and extracted again gets a new one, so workers know their
-- local copies of the old one are stale.
ALTER TABLE feature_caches ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
)sql"},
      {13, "artefacts uploaded in parts, joined when their task completes", R"sql(
-- Parts of an artefact too large for one message, under the lease that
-- wrote them (a stale writer's parts are never joined); removed when the
-- task completes, and with the task.
CREATE TABLE artifact_parts (
  task_id BIGINT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  lease_token BIGINT NOT NULL,
  result_index INT NOT NULL,
  part INT NOT NULL,
  data BYTEA NOT NULL,
  PRIMARY KEY (task_id, lease_token, result_index, part));
ALTER TABLE artifact_parts ALTER COLUMN data SET STORAGE EXTERNAL;
)sql"},
      {14, "results without foreign-key triggers", R"sql(
-- Results are written by one statement only, the completion that marks
-- their task SUCCEEDED while holding its row (the task exists, and so does
-- its study), and tasks and studies are never deleted. The two foreign keys
-- cost a trigger, an index probe and a row lock each per result: 7% of the
-- database's time at 3,000 completions/s.
ALTER TABLE results DROP CONSTRAINT IF EXISTS results_study_id_fkey,
                    DROP CONSTRAINT IF EXISTS results_task_id_fkey;
)sql"},
  };
  return kMigrations;
}

}  // namespace sslbench::server

#!/usr/bin/env bash
# Runs one fuzz target for a bounded time from the committed corpus (read
# only) plus a scratch corpus in the build folder, and prints libFuzzer's
# final statistics. Usage: run.sh BINARY SEED_CORPUS WORK_DIR SECONDS
set -euo pipefail
binary=$1 seeds=$2 work=$3 seconds=$4
mkdir -p "$work/corpus" "$work/artifacts"
# A finding (crash, leak, timeout, out-of-memory) exits non-zero and leaves
# its input in $work/artifacts: fix it, then add the input to $seeds.
"$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" "$seeds" 2>&1 \
  | grep -E "^(stat::|INFO: (seed corpus|-max_len)|==|SUMMARY|Done|#[0-9]+ *DONE)" || true
exit "${PIPESTATUS[0]}"

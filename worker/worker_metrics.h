#pragma once
// The worker's Prometheus metrics, built once and handed to the daemon and
// the runners.

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace sslbench::worker {

class WorkerMetrics {
 public:
  explicit WorkerMetrics(prometheus::Registry& registry);
  prometheus::Family<prometheus::Counter>* tasks;
  prometheus::Family<prometheus::Histogram>* task_duration;
  prometheus::Counter* images;
  prometheus::Counter* feature_bytes_uploaded;
  prometheus::Gauge* busy;
};

}  // namespace sslbench::worker

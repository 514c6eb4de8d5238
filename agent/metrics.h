#pragma once
// Component metrics.
//
// Every component owns a MetricSet registered under its kind and name ("SOURCE", "tail_web").
// Counters are atomics so threads owned by libraries (librdkafka, the file channel writer) may
// bump them; gauges are functions evaluated on the loop thread when the status server renders.
// Names are Flume's (EventReceivedCount); /metrics.json shows them as they are, /metrics derives
// Prometheus names from them (sluice_source_event_received_total{name="tail_web"}).
// A set outlives a reload of its component when the name stays, so counters keep counting.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sluice {

class Counter {
 public:
  void inc(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class MetricSet {
 public:
  MetricSet(std::string kind, std::string name) : kind_(std::move(kind)), name_(std::move(name)) {}

  const std::string& kind() const { return kind_; }
  const std::string& name() const { return name_; }

  // Returns the counter of that Flume-style name, creating it at zero. References stay valid for
  // the life of the set. Call at component construction, not on the hot path.
  Counter& counter(const std::string& flume_name);
  // Registers (or replaces) a gauge owned by `owner`. The function runs on the loop thread.
  void gauge(const std::string& flume_name, std::function<double()> fn,
             const void* owner = nullptr);
  // Drops the gauges `owner` registered; a component calls this before it dies so no gauge
  // points at it. Gauges another owner registered since (a replacement after a reload) stay.
  void clearGauges(const void* owner = nullptr);

  struct Sample {
    std::string name;
    double value;
    bool is_counter;
  };
  std::vector<Sample> samples() const;

 private:
  std::string kind_, name_;
  mutable std::mutex mutex_;
  std::map<std::string, std::unique_ptr<Counter>> counters_;
  struct Gauge {
    std::function<double()> fn;
    const void* owner;
  };
  std::map<std::string, Gauge> gauges_;
};

using MetricSetPtr = std::shared_ptr<MetricSet>;

class MetricsRegistry {
 public:
  // Returns the set for (kind, name), creating it if needed.
  MetricSetPtr set(const std::string& kind, const std::string& name);
  // Forgets sets whose (kind, name) is not in `keep` (after a reload removed components).
  void retainOnly(const std::vector<std::pair<std::string, std::string>>& keep);

  std::string renderPrometheus() const;
  std::string renderJson() const;

  // "EventReceivedCount" -> "event_received" (counters) ; "ChannelSize" -> "channel_size".
  static std::string prometheusName(const std::string& kind, const std::string& flume_name,
                                    bool is_counter);

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, MetricSetPtr> sets_;
};

}  // namespace sluice

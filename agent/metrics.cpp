#include "agent/metrics.h"

#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

namespace sluice {

Counter& MetricSet::counter(const std::string& flume_name) {
  std::lock_guard lock(mutex_);
  auto& slot = counters_[flume_name];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

void MetricSet::gauge(const std::string& flume_name, std::function<double()> fn,
                      const void* owner) {
  std::lock_guard lock(mutex_);
  gauges_[flume_name] = {std::move(fn), owner};
}

void MetricSet::clearGauges(const void* owner) {
  std::lock_guard lock(mutex_);
  for (auto it = gauges_.begin(); it != gauges_.end();) {
    it = it->second.owner == owner ? gauges_.erase(it) : std::next(it);
  }
}

std::vector<MetricSet::Sample> MetricSet::samples() const {
  std::lock_guard lock(mutex_);
  std::vector<Sample> out;
  for (const auto& [name, c] : counters_) {
    out.push_back({name, static_cast<double>(c->value()), true});
  }
  for (const auto& [name, g] : gauges_) out.push_back({name, g.fn(), false});
  return out;
}

MetricSetPtr MetricsRegistry::set(const std::string& kind, const std::string& name) {
  std::lock_guard lock(mutex_);
  auto& slot = sets_[{kind, name}];
  if (!slot) slot = std::make_shared<MetricSet>(kind, name);
  return slot;
}

void MetricsRegistry::retainOnly(const std::vector<std::pair<std::string, std::string>>& keep) {
  std::lock_guard lock(mutex_);
  for (auto it = sets_.begin(); it != sets_.end();) {
    bool kept = false;
    for (const auto& k : keep) kept = kept || k == it->first;
    it = kept ? std::next(it) : sets_.erase(it);
  }
}

std::string MetricsRegistry::prometheusName(const std::string& kind, const std::string& flume_name,
                                            bool is_counter) {
  std::string base = flume_name;
  if (is_counter && base.size() > 5 && base.compare(base.size() - 5, 5, "Count") == 0) {
    base.resize(base.size() - 5);
  }
  std::string out = "sluice_";
  for (char c : kind) out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  out += '_';
  for (size_t i = 0; i < base.size(); ++i) {
    auto c = static_cast<unsigned char>(base[i]);
    if (std::isupper(c)) {
      if (i > 0 && out.back() != '_') out += '_';
      out += static_cast<char>(std::tolower(c));
    } else if (std::isalnum(c)) {
      out += static_cast<char>(c);
    } else {
      out += '_';
    }
  }
  if (is_counter) out += "_total";
  return out;
}

namespace {
std::string formatNumber(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) {
    return std::to_string(static_cast<long long>(v));
  }
  std::ostringstream os;
  os.precision(6);
  os << std::fixed << v;
  return os.str();
}

std::string escapeLabel(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}
}  // namespace

std::string MetricsRegistry::renderPrometheus() const {
  // Prometheus wants every sample of one metric name together, under one TYPE line.
  struct Line {
    bool is_counter;
    std::vector<std::string> samples;
  };
  std::map<std::string, Line> by_metric;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [key, set] : sets_) {
      for (const auto& s : set->samples()) {
        auto metric = prometheusName(set->kind(), s.name, s.is_counter);
        auto& line = by_metric[metric];
        line.is_counter = s.is_counter;
        line.samples.push_back(metric + "{name=\"" + escapeLabel(set->name()) + "\"} " +
                               formatNumber(s.value));
      }
    }
  }
  std::string out;
  for (const auto& [metric, line] : by_metric) {
    out += "# TYPE " + metric + (line.is_counter ? " counter\n" : " gauge\n");
    for (const auto& s : line.samples) out += s + "\n";
  }
  return out;
}

std::string MetricsRegistry::renderJson() const {
  nlohmann::ordered_json doc = nlohmann::ordered_json::object();
  std::lock_guard lock(mutex_);
  for (const auto& [key, set] : sets_) {
    auto& obj = doc[set->kind() + "." + set->name()];
    obj = nlohmann::ordered_json::object();
    for (const auto& s : set->samples()) {
      if (s.is_counter || s.value == std::floor(s.value)) {
        obj[s.name] = static_cast<long long>(s.value);
      } else {
        obj[s.name] = s.value;
      }
    }
  }
  return doc.dump(2) + "\n";
}

}  // namespace sluice

#pragma once
// What /health judges, apart from the agent's own state.
//
// The agent is healthy (200) when it runs (not starting, reloading or draining) and no
// component has a problem; otherwise /health answers 503 and its body lists each problem:
//   source      the source reported one (SourceContext::reportProblem: a listener that cannot
//               bind, say), until it clears it;
//   sink_group  events wait in its channel and it committed none for agent.stall_after (each
//               instance by its own last commit, a retiring one draining an old channel too);
//   channel     it refuses puts for free space (ChannelStats::refusing_for_space: what waits to
//               be written and the put would leave less than min_free_bytes free).
//
// Everything here runs on the loop thread.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sluice {

struct HealthProblem {
  std::string component;  // "agent", "source", "sink_group", "channel"
  std::string name;
  std::string reason;
  bool operator==(const HealthProblem&) const = default;
};

// Watches one sink group's progress: how long events have waited with nothing delivered.
class StallWatch {
 public:
  // `lag`: events its cursor has not committed; `delivered`: events its sinks delivered so far
  // (a running total, or any value that changes with each delivery, such as the time of the
  // last commit). Returns how long (ms) events have waited without a delivery; 0 when
  // nothing waits or something was delivered since the last call.
  uint64_t update(uint64_t now_ms, uint64_t lag, uint64_t delivered) {
    if (!seen_ || lag == 0 || delivered != delivered_) {
      seen_ = true;
      since_ms_ = now_ms;
      delivered_ = delivered;
      return 0;
    }
    return now_ms - since_ms_;
  }

 private:
  bool seen_ = false;
  uint64_t since_ms_ = 0;
  uint64_t delivered_ = 0;
};

// One sink group instance as the stall watch sees it. Each instance is watched on its own: a
// group replaced by a reload and still draining its old channel (retiring) is watched beside
// its successor of the same name, and neither one's commits hide the other's stall.
struct GroupProgress {
  const void* instance = nullptr;  // the SinkGroup
  std::string name;
  std::string component;  // "sink" (an implicit group of one sink) or "sink_group"
  std::string channel;
  bool retiring = false;        // draining a channel the configuration no longer has
  uint64_t lag = 0;             // events its cursor has not committed
  uint64_t last_commit_ms = 0;  // this instance's own last commit (uv_now), 0: none yet
};

class StallWatches {
 public:
  struct Entry {
    GroupProgress group;
    StallWatch watch;
    uint64_t waited_ms = 0;  // events have waited this long with nothing committed
    bool logged = false;     // the stall was logged (once, until it delivers again)
  };

  // Feeds every group instance alive now; instances not among them are forgotten.
  void update(uint64_t now_ms, const std::vector<GroupProgress>& groups) {
    std::map<const void*, Entry> next;
    for (const auto& g : groups) {
      auto it = entries_.find(g.instance);
      Entry e = it == entries_.end() ? Entry{} : std::move(it->second);
      e.group = g;
      e.waited_ms = e.watch.update(now_ms, g.lag, g.last_commit_ms);
      next.emplace(g.instance, std::move(e));
    }
    entries_ = std::move(next);
  }
  // A new instance: a watch left for a freed one at the same address must not carry over.
  void forget(const void* instance) { entries_.erase(instance); }
  std::map<const void*, Entry>& entries() { return entries_; }
  const std::map<const void*, Entry>& entries() const { return entries_; }

 private:
  std::map<const void*, Entry> entries_;
};

}  // namespace sluice

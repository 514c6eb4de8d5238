#pragma once
// What /health judges, apart from the agent's own state.
//
// The agent is healthy (200) when it runs (not starting, reloading or draining) and no
// component has a problem; otherwise /health answers 503 and its body lists each problem:
//   source      the source reported one (SourceContext::reportProblem: a listener that cannot
//               bind, say), until it clears it;
//   sink_group  events wait in its channel and its sinks delivered none for agent.stall_after;
//   channel     the free space on its volume is below its min_free_bytes, so it accepts nothing.
//
// Everything here runs on the loop thread.

#include <cstdint>
#include <string>

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
  // (a running total). Returns how long (ms) events have waited without a delivery; 0 when
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

}  // namespace sluice

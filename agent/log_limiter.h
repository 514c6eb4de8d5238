#pragma once
// A token bucket for log lines that an outsider can produce at any rate (a child's stderr, a
// misbehaving peer): at most `burst` lines at once and `per_second` on average after that. What
// it refuses is counted, so the caller can say how many lines it left out when it logs again.

#include <algorithm>
#include <cstdint>
#include <utility>

namespace sluice {

class LogLimiter {
 public:
  LogLimiter(double per_second, double burst)
      : per_second_(per_second), burst_(burst), tokens_(burst) {}

  // True when one more line may be logged at `now_ms` (a monotonic clock such as uv_now);
  // false counts it as suppressed.
  bool allow(uint64_t now_ms) {
    if (now_ms > last_ms_) {
      tokens_ =
          std::min(burst_, tokens_ + static_cast<double>(now_ms - last_ms_) * per_second_ / 1000.0);
      last_ms_ = now_ms;
    }
    if (tokens_ >= 1.0) {
      tokens_ -= 1.0;
      return true;
    }
    ++suppressed_;
    return false;
  }

  // Lines refused since the last call.
  uint64_t takeSuppressed() { return std::exchange(suppressed_, 0); }

 private:
  double per_second_;
  double burst_;
  double tokens_;
  uint64_t last_ms_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace sluice

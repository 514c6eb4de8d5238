#pragma once
// The source contract.
//
// A source reads from the outside world on the loop thread and offers batches to its context.
// The context runs the interceptors, picks the channels and puts the batch into all required
// channels or none. When the channels are full the offer is refused and the source must stop
// producing (stop reading its pipe or socket, stop reading files) until resume() is called:
// that is how backpressure reaches the outside world.
//
// Lifecycle, all on the loop thread: construct -> start(ctx) -> [offer/resume]* -> stop(done).
// stop() may finish asynchronously (a child process to reap, a socket to close); it offers what
// it has read so far once more, then calls done exactly once. The context outlives the source.

#include <uv.h>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/event.h"
#include "agent/metrics.h"

namespace sluice {

enum class OfferResult {
  Accepted,  // the batch went into every required channel; it has been cleared for reuse
  Full,      // no room: nothing was put, the batch is untouched, resume() will follow
};

class SourceContext {
 public:
  virtual ~SourceContext() = default;
  virtual uv_loop_t* loop() = 0;
  virtual OfferResult offer(Batch& batch) = 0;
  // Like offer(), and stores `positions` (key -> opaque value) in the same durable write as the
  // batch in every channel that keeps positions (the file channel), so that after a crash the
  // source resumes exactly after what the channels hold. A context that keeps no positions
  // (test doubles) just offers.
  virtual OfferResult offerWithPositions(
      Batch& batch, std::vector<std::pair<std::string, std::string>> positions) {
    (void)positions;
    return offer(batch);
  }
  // The durable values of a position key, one per channel of the source that holds it (empty
  // when none does: a memory channel keeps none). With several, the source resumes from the
  // oldest, so no channel misses anything.
  virtual std::vector<std::string> durablePositions(const std::string& key) {
    (void)key;
    return {};
  }
  // Whether a channel of the source keeps its positions durably with the events (a file
  // channel): then a position is safe to act on (a spooled file to complete, say) only once
  // durablePositions() shows it, and the source needs no state file of its own. False: no
  // channel keeps them (memory channels). nullopt: the context cannot tell (test doubles), and
  // the source learns it from durablePositions().
  virtual std::optional<bool> keepsPositions() { return std::nullopt; }
  // Health: the source reports what keeps it from working (a listener that could not bind, say),
  // one text per key, and clears the key once it works again. While a problem is reported,
  // /health answers 503 naming it; a problem reported by the first start of the agent's sources
  // fails the start. The default (test doubles) ignores them.
  virtual void reportProblem(const std::string& key, const std::string& text) {
    (void)key;
    (void)text;
  }
  virtual void clearProblem(const std::string& key) { (void)key; }
  // The source's metric set; the context already counts EventReceivedCount/EventAcceptedCount.
  virtual MetricSet& metrics() = 0;
  virtual const std::string& name() const = 0;
};

class Source {
 public:
  virtual ~Source() = default;
  virtual void start(SourceContext& ctx) = 0;
  // Room is available again after an offer returned Full.
  virtual void resume() = 0;
  virtual void stop(std::function<void()> done) = 0;
  // SIGHUP reloaded the configuration and this source's part is unchanged, so it keeps running:
  // re-read whatever it reads from files outside the configuration (certificates, say).
  virtual void reload() {}
};

using SourcePtr = std::unique_ptr<Source>;

}  // namespace sluice

#pragma once
// The sink contract.
//
// A sink delivers a taken batch to its destination and reports when the destination has
// acknowledged it. Taking and committing belong to the sink group that drives the sink (see
// sink_group.h), not to the sink: that is what lets a failover group hand a batch that failed on
// one sink to the next one without committing it twice. A sink never commits; it answers.
//
// Threads: start, deliver and stop are called on the loop thread; `done` must be called on the
// loop thread exactly once per deliver (sinks with their own threads hand results back with
// uv_async_send). The take passed to deliver stays alive and unchanged until done is called.

#include <uv.h>
#include <functional>
#include <memory>
#include <string>

#include "agent/channel.h"
#include "agent/metrics.h"

namespace sluice {

enum class DeliveryStatus {
  Ok,     // every event is acknowledged (or dead-lettered and counted): commit
  Retry,  // nothing of this batch may be counted as delivered: roll back, back off, try again
};

struct DeliveryResult {
  DeliveryStatus status = DeliveryStatus::Ok;
  std::string error;  // why, for the log, when status is Retry
  static DeliveryResult ok() { return {}; }
  static DeliveryResult retry(std::string why) { return {DeliveryStatus::Retry, std::move(why)}; }
};

using DeliveryDone = std::function<void(DeliveryResult)>;

class SinkContext {
 public:
  virtual ~SinkContext() = default;
  virtual uv_loop_t* loop() = 0;
  // The sink's metric set; the group counts EventDrainAttemptCount/EventDrainSuccessCount.
  virtual MetricSet& metrics() = 0;
  virtual const std::string& name() const = 0;
  // A sink that said it was not ready calls this when it can take deliveries again, and a sink
  // calls it whenever available() changes.
  virtual void wake() = 0;
};

class Sink {
 public:
  virtual ~Sink() = default;
  virtual void start(SinkContext& ctx) = 0;
  virtual void deliver(const Take& take, DeliveryDone done) = 0;
  // How many deliveries may be outstanding at once.
  virtual size_t maxInFlight() const { return 1; }
  // False while the sink's own queue is full; the group takes nothing more until wake().
  // "Busy": a failover group waits for a busy higher-priority sink rather than skip it.
  virtual bool ready() const { return true; }
  // False while the destination cannot be reached (no connection for a while; each sink says
  // what that means and how long it waits before saying it). Not "busy": a group with other
  // sinks treats an unavailable sink like one in penalty (skips it, counts it not live, sets it
  // aside) and takes back its outstanding deliveries (abandon). The sink calls ctx.wake() when
  // this changes, either way.
  virtual bool available() const { return true; }
  // The group takes back every outstanding delivery of this sink, to give them to another one.
  // A sink that can let go returns true: it no longer reads the takes (the group rolls them back
  // at once, which empties them), it answers each delivery soon (Retry for what the destination
  // has not confirmed; the group ignores these answers, whatever they say) and gives up what it
  // can of them (purges its queue) so the destination gets as few of them as possible. False
  // (the default): the sink keeps its takes, and its deliveries stay with it until answered.
  virtual bool abandon() { return false; }
  // The agent is shutting down past its drain deadline and will not wait for outstanding
  // deliveries. A sink that can abandon them (purge its queue) answers each one soon, Retry for
  // whatever the destination has not confirmed, so the group rolls it back into the channel (a
  // file channel delivers it after the restart). Default: nothing; the delivery answers when it
  // does, bounded by the agent's hard stop.
  virtual void cancel() {}
  // Called once no delivery is outstanding; releases resources, then calls done.
  virtual void stop(std::function<void()> done) { done(); }
};

using SinkPtr = std::unique_ptr<Sink>;

}  // namespace sluice

#pragma once
// The `memory` channel: a bounded, in-memory log of frozen batches with one cursor per consumer.
// What it holds is lost when the process dies, by design; use the `file` channel for durability.
//
// Layout and invariants
// ---------------------
// Every event gets a global position (a uint64 event number, contiguous across batches). The
// channel keeps a deque of entries, one per batch put, each with the position of its first
// event; a put shares the batch (`std::shared_ptr<const Batch>`) and never copies a body.
//
//   head_pos_ <= every live cursor's low-water mark <= next_pos_ of that cursor <= tail_pos_
//
// - tail_pos_: the position the next put starts at.
// - head_pos_: the oldest event still held. Events below head_pos_ are freed: the accounting
//   (events, bytes) drops them as soon as every cursor's low-water mark has passed them; a batch's
//   memory is released when its last event is freed (so memory may exceed max_bytes by at most
//   part of one batch).
// - A cursor's low-water mark is the smallest position it has not committed. Each cursor keeps
//   the ranges it handed out but that are not yet committed (per outstanding take) and the ranges
//   rolled back (handed out first by the next take, in position order); agent/cursor_ledger.h.
// - With no cursor at all nothing is freed: data waits for its first consumer. A new consumer
//   starts at head_pos_.
//
// Bounds: hasRoom(e, b) is true when the channel would hold at most max_events events and
// max_bytes bytes after the put, OR when it holds nothing at all. The second clause means a single
// batch larger than the bounds is accepted into an empty channel instead of blocking its source
// for ever; the channel then refuses everything else until that batch is freed.
//
// Callbacks (a cursor's onReady, space listeners) are deferred to the loop through one uv_idle_t
// handle and never run inside put/take/commit/rollback. A cursor's onReady fires once after one of
// its takes came back empty and data became available to it (put or rollback). Space listeners
// fire once room frees (events freed, or bounds raised) after hasRoom or put said no; commits
// while nobody waits cost nothing extra.
//
// Lifetimes: the Cursor& returned by cursor() stays valid until dropCursor(name) or the channel's
// destruction. Takes may outlive both: a cursor with outstanding takes is detached instead of
// destroyed, its later commit/rollback only settles the take (the events are no longer the
// channel's business), and the cursor frees itself when its last take is settled.
//
// Threads: everything runs on the loop thread (BuildContext::loop, which must not be null). The
// channel's uv handle is closed in the destructor and freed by its close callback, so the loop
// must run once more after the channel dies (uv_loop_close would report it busy otherwise).
//
// Metrics (Flume names): EventPutAttemptCount (events offered), EventPutSuccessCount (events
// accepted), PutRefusedCount (puts refused for lack of room), EventTakeAttemptCount (take calls),
// EventTakeSuccessCount (events handed out), RollbackCount (takes rolled back); gauges ChannelSize
// (events), ChannelBytes, ChannelCapacity (max_events), ChannelFillPercentage (the larger of the
// event and byte fill, 0..100).

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/channel.h"
#include "agent/cursor_ledger.h"
#include "agent/metrics.h"
#include "agent/registry.h"

namespace sluice {

struct MemoryChannelConfig {
  uint64_t max_events = 100000;
  uint64_t max_bytes = 64ull << 20;
  bool operator==(const MemoryChannelConfig&) const = default;
};

class MemoryChannel;

class MemoryCursor final : public Cursor {
 public:
  Take take(size_t max_events, size_t max_bytes) override;
  uint64_t lag() const override;
  void setOnReady(std::function<void()> fn) override { on_ready_ = std::move(fn); }

  // The smallest position this consumer has not committed.
  uint64_t lowWaterMark() const { return ledger_.lowWater(); }

 protected:
  void commitTake(uint64_t id) override;
  void rollbackTake(uint64_t id) override;

 private:
  friend class MemoryChannel;

  MemoryCursor(MemoryChannel* channel, uint64_t start);

  MemoryChannel* channel_;  // null once detached (dropped, or the channel is gone)
  CursorLedger<NoLoc> ledger_;
  bool wants_ready_ = false;  // a take came back empty
  bool ready_queued_ = false;
  std::function<void()> on_ready_;
};

class MemoryChannel final : public Channel {
 public:
  MemoryChannel(const MemoryChannelConfig& config, const BuildContext& context);
  ~MemoryChannel() override;
  MemoryChannel(const MemoryChannel&) = delete;
  MemoryChannel& operator=(const MemoryChannel&) = delete;

  bool hasRoom(size_t events, size_t bytes) const override;
  bool put(std::shared_ptr<const Batch> batch, PutOptions options = {}) override;
  uint64_t addSpaceListener(std::function<void()> fn) override;
  void removeSpaceListener(uint64_t handle) override;
  Cursor& cursor(const std::string& consumer) override;
  void dropCursor(const std::string& consumer) override;
  ChannelStats stats() const override;

  // Applies new bounds in place; keeps every event (a lowered bound just refuses puts until
  // enough is freed). Always true.
  bool reconfigure(const MemoryChannelConfig& config);
  const MemoryChannelConfig& config() const { return config_; }
  const MetricSetPtr& metrics() const { return metrics_; }

 private:
  friend class MemoryCursor;
  struct Entry {
    std::shared_ptr<const Batch> batch;
    uint64_t first_pos = 0;
    uint64_t bytes = 0;        // batch->bytes() at put time
    uint64_t freed_bytes = 0;  // bytes of this entry's events already freed (front entry only)
    // prefix[i] = payload bytes of events [0, i); built on first need (a cut inside the batch).
    std::vector<uint32_t> prefix;
  };
  // A take being assembled.
  struct TakeBuilder {
    size_t max_events = 1;
    size_t max_bytes = 0;
    size_t events = 0;
    size_t bytes = 0;
    bool full = false;
    std::vector<Slice> slices;
  };

  size_t entryIndex(uint64_t pos) const;
  const std::vector<uint32_t>& prefix(Entry& e);
  uint64_t rangeBytes(Entry& e, uint32_t begin, uint32_t end);
  // Adds slices for positions [pos, end) within the builder's limits; returns the position
  // reached.
  uint64_t collect(uint64_t pos, uint64_t end, TakeBuilder& tb);
  // Frees what every live cursor has committed.
  void maybeFree();
  void queueReady(MemoryCursor* cursor);
  void schedule();
  static void onIdle(uv_idle_t* handle);
  void dispatch();
  std::vector<std::function<void()>> durable_queue_;  // on_durable callbacks, deferred
  double fillPercentage() const;

  MemoryChannelConfig config_;
  std::string name_;
  MetricSetPtr metrics_;
  Counter* put_attempt_;
  Counter* put_success_;
  Counter* put_refused_;
  Counter* take_attempt_;
  Counter* take_success_;
  Counter* rollback_;
  Counter* commit_;

  std::deque<Entry> entries_;
  uint64_t head_pos_ = 0;
  uint64_t tail_pos_ = 0;
  uint64_t bytes_held_ = 0;

  std::unordered_map<std::string, MemoryCursor*> cursors_;  // owned; see ~MemoryChannel

  struct Listener {
    uint64_t id;
    std::function<void()> fn;
    bool removed;
  };
  std::vector<Listener> listeners_;
  uint64_t next_listener_id_ = 1;
  mutable bool space_wanted_ = false;  // hasRoom or put said no since room last freed
  bool space_queued_ = false;

  std::vector<MemoryCursor*> ready_queue_;
  std::vector<MemoryCursor*> firing_ready_;  // the batch dispatch() is calling; null: dropped
  uv_idle_t* idle_ = nullptr;                // owned; freed in its close callback
  bool idle_active_ = false;
  bool firing_listeners_ = false;
  bool* destroyed_ = nullptr;  // set while dispatching, so a callback may destroy the channel
};

std::shared_ptr<MemoryChannel> makeMemoryChannel(const MemoryChannelConfig& config,
                                                 const BuildContext& context);

void registerMemoryChannel(Registry& registry);

}  // namespace sluice

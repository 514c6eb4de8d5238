#pragma once
// The sink group: the consumer of one channel cursor, driving one or more sinks.
//
// The group owns the take/commit cycle: it takes a batch from its cursor, hands it to the sink
// its processor picks, and commits only when that sink answers Ok. On Retry it rolls the batch
// back (the next take hands the same events out first) and sets the sink aside for a penalty
// that doubles per consecutive failure, with jitter, up to a maximum. A failover group then
// gives the batch to the next live sink in priority order; a load_balance group takes turns
// among live sinks. A lone sink is a group of one, whose penalty is its retry backoff.
//
// A sink that says it is not available (Sink::available: its destination cannot be reached) is,
// in a group of several, set aside at once like a failed one, and the group takes back its
// outstanding deliveries (Sink::abandon): their takes are rolled back, so the next take hands
// the same events to the next live sink, and whatever the abandoned sink answers for them later
// is ignored (a late Ok commits nothing: the events were given to another sink). It is live
// again once it is available and its penalty is over. A group of one has nowhere else to send:
// its sink keeps its deliveries and is given more while unavailable (it only shows not live).
//
// Logging: one warning when a sink starts failing or becomes unavailable, one line when it
// delivers again or becomes available, with the count of deliveries that failed in between; the
// failures of deliveries that were out when the sink was set aside neither log nor lengthen the
// penalty (they are the same outage).
//
// Threads: everything runs on the loop thread. Sinks may answer synchronously from deliver().

#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "agent/channel.h"
#include "agent/config.h"
#include "agent/metrics.h"
#include "agent/sink.h"

namespace sluice {

struct MemberState;

class SinkGroup {
 public:
  struct Member {
    SinkSpec spec;
    SinkPtr sink;
    MetricSetPtr metrics;
  };

  // `metrics` (optional) is the group's own set: FailoverCount, LiveSinkCount.
  SinkGroup(uv_loop_t* loop, GroupSpec spec, ChannelPtr channel, std::vector<Member> members,
            MetricSetPtr metrics = nullptr);
  ~SinkGroup();
  SinkGroup(const SinkGroup&) = delete;
  SinkGroup& operator=(const SinkGroup&) = delete;

  void start();
  // Stops taking, waits for outstanding deliveries, stops the sinks, then calls done.
  void stop(std::function<void()> done);
  // Asks every sink to answer its outstanding deliveries now (shutdown past the drain deadline).
  void cancel();

  const std::string& name() const { return spec_.name; }
  const GroupSpec& spec() const { return spec_; }
  const ChannelPtr& channel() const { return channel_; }
  uint64_t lag() const { return cursor_ ? cursor_->lag() : channel_->cursor(spec_.name).lag(); }
  size_t inFlight() const { return in_flight_.size(); }
  const std::vector<std::unique_ptr<MemberState>>& members() const { return members_; }

  // The group's state for a health check: each member in priority order, and the uv_now() time
  // of the last commit (0: none yet).
  struct MemberStatus {
    std::string name;
    bool available = true;  // the sink says its destination is reachable
    bool in_penalty = false;
    uint64_t penalty_until_ms = 0;  // uv_now() time
    size_t in_flight = 0;           // deliveries the sink holds, taken back ones included
  };
  std::vector<MemberStatus> memberStatus() const;
  uint64_t lastCommitMs() const { return last_commit_ms_; }
  // Members that are available and not in penalty (the LiveSinkCount gauge).
  size_t liveCount() const;

 private:
  struct InFlight {
    Take take;
    MemberState* member;
    uint64_t penalty_gen;  // the member's penalty_gen when it was handed out
  };

  void schedulePump();
  void pump();
  MemberState* choose();
  void onDelivered(uint64_t id, DeliveryResult result);
  void checkAvailability();
  std::pair<size_t, size_t> takeBack(MemberState* st);
  void setAside(MemberState* st);
  bool isLive(const MemberState* st, uint64_t now) const;
  void maybeFinishStop();
  static void onTimer(uv_timer_t* t);

  uv_loop_t* loop_;
  GroupSpec spec_;
  ChannelPtr channel_;
  Cursor* cursor_ = nullptr;  // opened by start()
  std::vector<std::unique_ptr<MemberState>> members_;
  std::unordered_map<uint64_t, std::unique_ptr<InFlight>> in_flight_;
  // Deliveries taken back from an unavailable sink: rolled back, waiting for the sink's answer,
  // which is ignored. By id, with the sink that holds them.
  std::unordered_map<uint64_t, MemberState*> abandoned_;
  uint64_t last_commit_ms_ = 0;
  uint64_t next_id_ = 1;
  size_t round_robin_ = 0;
  bool running_ = false;
  bool pumping_ = false;
  bool repump_ = false;
  bool stopping_ = false;
  std::function<void()> stop_done_;
  uv_timer_t* timer_ = nullptr;  // wakes the pump (penalties, yielding); freed in its close cb
  std::minstd_rand rng_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  MetricSetPtr metrics_;
  Counter* failovers_ = nullptr;
};

// Per-sink state inside a group; also the sink's SinkContext.
struct MemberState : SinkContext {
  SinkGroup::Member m;
  SinkGroup* group = nullptr;
  uv_loop_t* loop_ptr = nullptr;
  std::function<void()> on_wake;
  size_t in_flight = 0;
  uint32_t failures = 0;
  uint64_t penalty_until_ms = 0;  // uv_now() time
  uint64_t penalty_gen = 0;       // counts the times it was set aside
  bool available = true;          // as last seen by the group (Sink::available)
  bool failing = false;           // set aside (failed or unavailable) and not delivered since
  uint64_t failed_in_state = 0;   // deliveries failed since `failing` was set
  Counter* attempts = nullptr;
  Counter* successes = nullptr;
  Counter* failed = nullptr;
  Counter* batches_complete = nullptr;
  Counter* batches_underflow = nullptr;
  Counter* batches_empty = nullptr;
  Counter* penalty_ms = nullptr;
  Counter* taken_back = nullptr;

  uv_loop_t* loop() override { return loop_ptr; }
  MetricSet& metrics() override { return *m.metrics; }
  const std::string& name() const override { return m.spec.name; }
  void wake() override {
    if (on_wake) on_wake();
  }
};

}  // namespace sluice

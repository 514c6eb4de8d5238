#include "agent/sink_group.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace sluice {

namespace {
constexpr int kMaxTakesPerTurn = 64;  // then yield to the loop so sources get their turn
}

SinkGroup::SinkGroup(uv_loop_t* loop, GroupSpec spec, ChannelPtr channel,
                     std::vector<Member> members, MetricSetPtr metrics)
    : loop_(loop),
      spec_(std::move(spec)),
      channel_(std::move(channel)),
      rng_(static_cast<unsigned>(std::random_device{}())) {
  for (auto& m : members) {
    auto st = std::make_unique<MemberState>();
    st->m = std::move(m);
    st->group = this;
    st->loop_ptr = loop_;
    st->on_wake = [this] { schedulePump(); };
    auto& ms = *st->m.metrics;
    st->attempts = &ms.counter("EventDrainAttemptCount");
    st->successes = &ms.counter("EventDrainSuccessCount");
    st->failed = &ms.counter("ConnectionFailedCount");
    st->batches_complete = &ms.counter("BatchCompleteCount");
    st->batches_underflow = &ms.counter("BatchUnderflowCount");
    st->batches_empty = &ms.counter("BatchEmptyCount");
    st->penalty_ms = &ms.counter("PenaltyTimeMsCount");
    st->taken_back = &ms.counter("DeliveryTakenBackCount");
    MemberState* raw = st.get();
    ms.gauge(
        "InFlightBatches", [raw] { return static_cast<double>(raw->in_flight); }, this);
    ms.gauge(
        "Active", [this, raw] { return (isLive(raw, uv_now(loop_)) && running_) ? 1.0 : 0.0; },
        this);
    members_.push_back(std::move(st));
  }
  metrics_ = metrics ? std::move(metrics) : std::make_shared<MetricSet>("SINKGROUP", spec_.name);
  failovers_ = &metrics_->counter("FailoverCount");
  metrics_->gauge(
      "LiveSinkCount", [this] { return static_cast<double>(liveCount()); }, this);
  timer_ = new uv_timer_t;
  uv_timer_init(loop_, timer_);
  timer_->data = this;
}

SinkGroup::~SinkGroup() {
  *alive_ = false;
  in_flight_.clear();  // any take still here rolls back
  abandoned_.clear();
  for (auto& st : members_) st->m.metrics->clearGauges(this);
  metrics_->clearGauges(this);
  if (cursor_) cursor_->setOnReady(nullptr);
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
}

void SinkGroup::start() {
  // The cursor is opened here, not at construction: a group built for a reload that is then
  // refused must not leave a cursor behind that holds the channel's data forever.
  cursor_ = &channel_->cursor(spec_.name);
  running_ = true;
  for (auto& st : members_) st->m.sink->start(*st);
  cursor_->setOnReady([this] { schedulePump(); });
  schedulePump();
}

void SinkGroup::schedulePump() {
  if (!running_) return;
  if (pumping_) {
    repump_ = true;
    return;
  }
  pump();
}

void SinkGroup::onTimer(uv_timer_t* t) {
  auto* self = static_cast<SinkGroup*>(t->data);
  if (self) self->schedulePump();
}

bool SinkGroup::isLive(const MemberState* st, uint64_t now) const {
  return st->penalty_until_ms <= now && st->available;
}

size_t SinkGroup::liveCount() const {
  uint64_t now = uv_now(loop_);
  size_t live = 0;
  for (auto& st : members_) live += isLive(st.get(), now) ? 1 : 0;
  return live;
}

std::vector<SinkGroup::MemberStatus> SinkGroup::memberStatus() const {
  uint64_t now = uv_now(loop_);
  std::vector<MemberStatus> out;
  for (auto& st : members_) {
    out.push_back({st->m.spec.name, st->available, st->penalty_until_ms > now, st->penalty_until_ms,
                   st->in_flight});
  }
  return out;
}

// Sets the member aside for a penalty that doubles with each consecutive failure (jittered).
void SinkGroup::setAside(MemberState* st) {
  ++st->failures;
  ++st->penalty_gen;
  auto base = spec_.common.penalty_min.count();
  auto cap = spec_.common.penalty_max.count();
  int64_t penalty = base;
  for (uint32_t i = 1; i < st->failures && penalty < cap; ++i) penalty *= 2;
  penalty = std::min<int64_t>(penalty, cap);
  // Jitter in [50%, 100%] so a fleet of agents does not retry in lockstep.
  std::uniform_int_distribution<int64_t> jitter(penalty / 2, std::max<int64_t>(penalty, 1));
  penalty = jitter(rng_);
  st->penalty_until_ms = uv_now(loop_) + static_cast<uint64_t>(penalty);
  st->penalty_ms->inc(static_cast<uint64_t>(penalty));
  if (members_.size() > 1) failovers_->inc();  // the next batch goes to another sink
}

// Takes back every delivery the member holds, when the sink can let go of them: rolled back at
// once (the next take hands them to another sink), their answers ignored. Returns how many were
// taken back and how many stay with a sink that cannot let go.
std::pair<size_t, size_t> SinkGroup::takeBack(MemberState* st) {
  std::vector<uint64_t> ids;
  for (auto& [id, entry] : in_flight_) {
    if (entry->member == st) ids.push_back(id);
  }
  if (ids.empty()) return {0, 0};
  // Rolled back in the order they were taken, so the next sink gets the events in order.
  std::sort(ids.begin(), ids.end());
  // Moved aside first: the sink may answer from inside abandon().
  std::vector<std::unique_ptr<InFlight>> entries;
  for (uint64_t id : ids) {
    auto it = in_flight_.find(id);
    entries.push_back(std::move(it->second));
    in_flight_.erase(it);
    abandoned_.emplace(id, st);
  }
  if (!st->m.sink->abandon()) {
    size_t kept = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (abandoned_.erase(ids[i]) == 0) {
        // It answered from inside abandon() although it could not let go: that answer was
        // ignored, so the events go back to the channel rather than waiting for ever.
        entries[i]->take.rollback();
        continue;
      }
      in_flight_.emplace(ids[i], std::move(entries[i]));
      ++kept;
    }
    return {0, kept};
  }
  st->taken_back->inc(ids.size());
  for (auto& e : entries) e->take.rollback();
  return {ids.size(), 0};
}

// Applies changes of Sink::available: an unavailable sink in a group of several is set aside
// and its deliveries are taken back.
void SinkGroup::checkAvailability() {
  for (auto& p : members_) {
    MemberState* st = p.get();
    bool available = st->m.sink->available();
    if (available == st->available) continue;
    st->available = available;
    if (available) {
      uint64_t now = uv_now(loop_);
      spdlog::info("sink {}: destination available again; {}", st->m.spec.name,
                   st->penalty_until_ms > now
                       ? fmt::format("used again in {} ms", st->penalty_until_ms - now)
                       : std::string("used again now"));
      continue;
    }
    if (members_.size() == 1) {
      spdlog::warn("sink {}: destination unavailable; the group has no other sink",
                   st->m.spec.name);
      continue;
    }
    setAside(st);
    if (!st->failing) st->failed_in_state = 0;
    st->failing = true;
    auto [taken, kept] = takeBack(st);
    spdlog::warn(
        "sink {}: destination unavailable; {} deliveries taken back for the other sinks{}, set "
        "aside for {} ms",
        st->m.spec.name, taken,
        kept > 0 ? fmt::format(" ({} left with it: it cannot let go)", kept) : std::string(),
        st->penalty_until_ms - uv_now(loop_));
  }
}

MemberState* SinkGroup::choose() {
  uint64_t now = uv_now(loop_);
  // A group of one has no other sink: its sink is used while unavailable.
  bool lone = members_.size() == 1;
  auto setAsideNow = [&](MemberState* st) {
    return st->penalty_until_ms > now || (!lone && !st->available);
  };
  auto usable = [&](MemberState* st) {
    return !setAsideNow(st) && st->in_flight < st->m.sink->maxInFlight() && st->m.sink->ready();
  };
  if (spec_.common.processor == "load_balance") {
    if (spec_.common.balance == "random") {
      std::vector<MemberState*> live;
      for (auto& st : members_) {
        if (usable(st.get())) live.push_back(st.get());
      }
      if (live.empty()) return nullptr;
      std::uniform_int_distribution<size_t> pick(0, live.size() - 1);
      return live[pick(rng_)];
    }
    for (size_t i = 0; i < members_.size(); ++i) {
      auto* st = members_[(round_robin_ + i) % members_.size()].get();
      if (usable(st)) {
        round_robin_ = (round_robin_ + i + 1) % members_.size();
        return st;
      }
    }
    return nullptr;
  }
  // failover: the first sink in priority order that is not set aside. A higher-priority sink
  // that is live but busy is waited for rather than skipped, so order is kept.
  for (auto& st : members_) {
    if (setAsideNow(st.get())) continue;
    return usable(st.get()) ? st.get() : nullptr;
  }
  return nullptr;
}

void SinkGroup::pump() {
  pumping_ = true;
  int takes = 0;
  do {
    repump_ = false;
    checkAvailability();
    while (running_ && takes < kMaxTakesPerTurn) {
      MemberState* st = choose();
      if (!st) break;
      Take take = cursor_->take(st->m.spec.common.batch_size, st->m.spec.common.batch_max_bytes);
      if (!take) {
        st->batches_empty->inc();
        break;  // the cursor's ready callback pumps again
      }
      ++takes;
      if (take.events() < st->m.spec.common.batch_size) {
        st->batches_underflow->inc();
      } else {
        st->batches_complete->inc();
      }
      st->attempts->inc(take.events());
      ++st->in_flight;
      uint64_t id = next_id_++;
      auto entry = std::make_unique<InFlight>(InFlight{std::move(take), st, st->penalty_gen});
      const Take& ref = entry->take;
      in_flight_.emplace(id, std::move(entry));
      std::weak_ptr<bool> alive = alive_;
      st->m.sink->deliver(ref, [this, id, alive](DeliveryResult r) {
        if (alive.expired()) return;
        onDelivered(id, std::move(r));
      });
    }
  } while (repump_ && running_ && takes < kMaxTakesPerTurn);
  pumping_ = false;

  if (!running_) return;
  // Wake up again when the turn was cut short, or when the earliest penalty ends.
  uint64_t now = uv_now(loop_);
  uint64_t wake_in = UINT64_MAX;
  if (takes >= kMaxTakesPerTurn) wake_in = 0;
  for (auto& st : members_) {
    if (st->penalty_until_ms > now) wake_in = std::min(wake_in, st->penalty_until_ms - now);
  }
  if (wake_in != UINT64_MAX) uv_timer_start(timer_, &SinkGroup::onTimer, wake_in, 0);
}

void SinkGroup::onDelivered(uint64_t id, DeliveryResult result) {
  auto it = in_flight_.find(id);
  if (it == in_flight_.end()) {
    // A delivery taken back from an unavailable sink: already rolled back and given to another
    // sink, so whatever it says now commits nothing.
    auto ab = abandoned_.find(id);
    if (ab == abandoned_.end()) return;
    MemberState* st = ab->second;
    abandoned_.erase(ab);
    --st->in_flight;
    spdlog::debug("sink {}: answer for a delivery taken back ignored ({})", st->m.spec.name,
                  result.status == DeliveryStatus::Ok ? "ok" : result.error);
    if (stopping_) {
      maybeFinishStop();
      return;
    }
    schedulePump();
    return;
  }
  auto entry = std::move(it->second);
  in_flight_.erase(it);
  MemberState* st = entry->member;
  --st->in_flight;
  if (result.status == DeliveryStatus::Ok) {
    size_t events = entry->take.events();
    entry->take.commit();
    last_commit_ms_ = uv_now(loop_);
    st->successes->inc(events);
    st->failures = 0;
    if (st->failing) {
      st->failing = false;
      spdlog::info("sink {}: delivering again ({} deliveries failed meanwhile)", st->m.spec.name,
                   st->failed_in_state);
    }
  } else {
    entry->take.rollback();
    st->failed->inc();
    ++st->failed_in_state;
    // A delivery handed out before the sink was last set aside failed in the same outage: it
    // neither lengthens the penalty nor logs again.
    if (entry->penalty_gen == st->penalty_gen) {
      setAside(st);
      if (!st->failing) {
        st->failing = true;
        st->failed_in_state = 1;
        spdlog::warn("sink {}: delivery failed ({}); set aside for {} ms", st->m.spec.name,
                     result.error, st->penalty_until_ms - uv_now(loop_));
      } else {
        spdlog::debug("sink {}: delivery failed ({}); set aside for {} ms", st->m.spec.name,
                      result.error, st->penalty_until_ms - uv_now(loop_));
      }
    } else {
      spdlog::debug("sink {}: delivery failed ({})", st->m.spec.name, result.error);
    }
  }
  if (stopping_) {
    maybeFinishStop();
    return;
  }
  schedulePump();
}

void SinkGroup::stop(std::function<void()> done) {
  running_ = false;
  stopping_ = true;
  stop_done_ = std::move(done);
  uv_timer_stop(timer_);
  if (cursor_) cursor_->setOnReady(nullptr);
  maybeFinishStop();
}

void SinkGroup::cancel() {
  if (in_flight_.empty() && abandoned_.empty()) return;
  for (auto& st : members_) st->m.sink->cancel();
}

void SinkGroup::maybeFinishStop() {
  if (!stopping_ || !in_flight_.empty() || !abandoned_.empty() || !stop_done_) return;
  auto remaining = std::make_shared<size_t>(members_.size());
  auto done = std::move(stop_done_);
  stop_done_ = nullptr;
  if (members_.empty()) {
    done();
    return;
  }
  for (auto& st : members_) {
    st->m.sink->stop([remaining, done] {
      if (--*remaining == 0) done();
    });
  }
}

}  // namespace sluice

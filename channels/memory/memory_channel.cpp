#include "channels/memory/memory_channel.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>

namespace sluice {

namespace {

uint32_t eventBytes(const EventView& ev) {
  size_t n = ev.body().size();
  ev.forEachHeader([&n](std::string_view k, std::string_view v) { n += k.size() + v.size(); });
  return static_cast<uint32_t>(n);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// MemoryCursor

MemoryCursor::MemoryCursor(MemoryChannel* channel, uint64_t start)
    : channel_(channel), ledger_(start, NoLoc{}) {}

Take MemoryCursor::take(size_t max_events, size_t max_bytes) {
  if (!channel_) return {};
  MemoryChannel& ch = *channel_;
  ch.take_attempt_->inc();

  MemoryChannel::TakeBuilder tb;
  tb.max_events = std::max<size_t>(max_events, 1);
  tb.max_bytes = max_bytes;
  auto rec = ledger_.gather(
      ch.tail_pos_,
      [&ch, &tb](uint64_t begin, uint64_t end, NoLoc&) { return ch.collect(begin, end, tb); },
      [&tb] { return tb.full; });

  if (tb.events == 0) {
    wants_ready_ = true;
    return {};
  }
  uint64_t id = ledger_.add(std::move(rec), tb.events);
  ch.take_success_->inc(tb.events);
  return makeTake(id, std::move(tb.slices), tb.events, tb.bytes);
}

uint64_t MemoryCursor::lag() const {
  if (!channel_) return 0;
  return ledger_.lag(channel_->tail_pos_);
}

void MemoryCursor::commitTake(uint64_t id) {
  if (!ledger_.commit(id)) return;
  if (!channel_) {
    // Detached: the take is settled; the cursor frees itself with its last one.
    if (!ledger_.hasOutstanding()) delete this;
    return;
  }
  channel_->commit_->inc();
  uint64_t old = ledger_.lowWater();
  ledger_.recomputeLowWater();
  // Only the cursor(s) at the channel's head hold data back.
  if (ledger_.lowWater() != old && old == channel_->head_pos_) channel_->maybeFree();
}

void MemoryCursor::rollbackTake(uint64_t id) {
  if (!channel_) {
    // Detached: the events are no longer the channel's business; only settle the take.
    if (ledger_.commit(id) && !ledger_.hasOutstanding()) delete this;
    return;
  }
  if (!ledger_.rollback(id)) return;
  channel_->rollback_->inc();
  if (wants_ready_) channel_->queueReady(this);
}

// ---------------------------------------------------------------------------------------------
// MemoryChannel

MemoryChannel::MemoryChannel(const MemoryChannelConfig& config, const BuildContext& context)
    : config_(config), name_(context.name), metrics_(context.metrics) {
  if (!context.loop) {
    // Callbacks are deferred to the loop; without one they could never fire.
    spdlog::critical("memory channel '{}' built without a loop", name_);
    std::abort();
  }
  if (!metrics_) metrics_ = std::make_shared<MetricSet>("CHANNEL", name_);
  put_attempt_ = &metrics_->counter("EventPutAttemptCount");
  put_success_ = &metrics_->counter("EventPutSuccessCount");
  put_refused_ = &metrics_->counter("PutRefusedCount");
  take_attempt_ = &metrics_->counter("EventTakeAttemptCount");
  take_success_ = &metrics_->counter("EventTakeSuccessCount");
  rollback_ = &metrics_->counter("RollbackCount");
  commit_ = &metrics_->counter("CommitCount");
  metrics_->gauge(
      "ChannelSize", [this] { return static_cast<double>(tail_pos_ - head_pos_); }, this);
  metrics_->gauge(
      "ChannelBytes", [this] { return static_cast<double>(bytes_held_); }, this);
  metrics_->gauge(
      "ChannelCapacity", [this] { return static_cast<double>(config_.max_events); }, this);
  metrics_->gauge(
      "ChannelFillPercentage", [this] { return fillPercentage(); }, this);

  // Heap-allocated and freed by its close callback, so the channel may die at any time.
  idle_ = new uv_idle_t;
  uv_idle_init(context.loop, idle_);
  idle_->data = this;
}

MemoryChannel::~MemoryChannel() {
  if (destroyed_) *destroyed_ = true;
  metrics_->clearGauges(this);
  for (auto& [name, c] : cursors_) {
    c->channel_ = nullptr;
    if (!c->ledger_.hasOutstanding()) delete c;  // else it frees itself when its last take settles
  }
  idle_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(idle_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
}

bool MemoryChannel::hasRoom(size_t events, size_t bytes) const {
  uint64_t held = tail_pos_ - head_pos_;
  // An empty channel takes any batch, however large: refusing it would block its source for
  // ever.
  if (held == 0) return true;
  if (held + events <= config_.max_events && bytes_held_ + bytes <= config_.max_bytes) return true;
  space_wanted_ = true;
  return false;
}

bool MemoryChannel::put(std::shared_ptr<const Batch> batch, PutOptions options) {
  // Positions mean nothing in memory: they would not survive the crash they exist for.
  auto accepted = [&] {
    if (options.on_durable) {
      durable_queue_.push_back(std::move(options.on_durable));
      schedule();
    }
    return true;
  };
  if (!batch || batch->empty()) return accepted();
  size_t n = batch->size();
  put_attempt_->inc(n);
  if (!hasRoom(n, batch->bytes())) {
    put_refused_->inc();
    return false;
  }
  Entry& e = entries_.emplace_back();
  e.first_pos = tail_pos_;
  e.bytes = batch->bytes();
  e.batch = std::move(batch);
  tail_pos_ += n;
  bytes_held_ += e.bytes;
  put_success_->inc(n);
  for (auto& [name, c] : cursors_) {
    if (c->wants_ready_) queueReady(c);
  }
  return accepted();
}

uint64_t MemoryChannel::addSpaceListener(std::function<void()> fn) {
  uint64_t id = next_listener_id_++;
  listeners_.push_back({id, std::move(fn), false});
  return id;
}

void MemoryChannel::removeSpaceListener(uint64_t handle) {
  for (size_t i = 0; i < listeners_.size(); ++i) {
    if (listeners_[i].id != handle) continue;
    if (firing_listeners_) {
      listeners_[i].removed = true;  // erased after the dispatch loop
    } else {
      listeners_.erase(listeners_.begin() + static_cast<ptrdiff_t>(i));
    }
    return;
  }
}

Cursor& MemoryChannel::cursor(const std::string& consumer) {
  auto it = cursors_.find(consumer);
  if (it != cursors_.end()) return *it->second;
  auto* c = new MemoryCursor(this, head_pos_);
  cursors_.emplace(consumer, c);
  return *c;
}

void MemoryChannel::dropCursor(const std::string& consumer) {
  auto it = cursors_.find(consumer);
  if (it == cursors_.end()) return;
  MemoryCursor* c = it->second;
  cursors_.erase(it);
  ready_queue_.erase(std::remove(ready_queue_.begin(), ready_queue_.end(), c), ready_queue_.end());
  std::replace(firing_ready_.begin(), firing_ready_.end(), c, static_cast<MemoryCursor*>(nullptr));
  c->channel_ = nullptr;
  c->on_ready_ = nullptr;
  if (!c->ledger_.hasOutstanding()) delete c;  // else it frees itself when its last take settles
  maybeFree();
}

ChannelStats MemoryChannel::stats() const {
  ChannelStats s;
  s.events = tail_pos_ - head_pos_;
  s.bytes = bytes_held_;
  s.capacity_events = config_.max_events;
  s.capacity_bytes = config_.max_bytes;
  return s;
}

bool MemoryChannel::reconfigure(const MemoryChannelConfig& config) {
  config_ = config;
  // Raised bounds may have made room for a source that waits.
  if (space_wanted_) {
    space_wanted_ = false;
    space_queued_ = true;
    schedule();
  }
  return true;
}

size_t MemoryChannel::entryIndex(uint64_t pos) const {
  auto it = std::upper_bound(entries_.begin(), entries_.end(), pos,
                             [](uint64_t p, const Entry& e) { return p < e.first_pos; });
  return static_cast<size_t>(it - entries_.begin()) - 1;
}

const std::vector<uint32_t>& MemoryChannel::prefix(Entry& e) {
  if (e.prefix.empty()) {
    const Batch& b = *e.batch;
    e.prefix.resize(b.size() + 1);
    uint32_t sum = 0;
    e.prefix[0] = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      sum += eventBytes(b[i]);
      e.prefix[i + 1] = sum;
    }
  }
  return e.prefix;
}

uint64_t MemoryChannel::rangeBytes(Entry& e, uint32_t begin, uint32_t end) {
  if (begin == 0 && end == e.batch->size()) return e.bytes;
  const auto& p = prefix(e);
  return p[end] - p[begin];
}

uint64_t MemoryChannel::collect(uint64_t pos, uint64_t end, TakeBuilder& tb) {
  size_t i = entryIndex(pos);
  while (pos < end && !tb.full) {
    Entry& e = entries_[i];
    auto n = static_cast<uint32_t>(e.batch->size());
    auto b = static_cast<uint32_t>(pos - e.first_pos);
    auto stop = static_cast<uint32_t>(std::min<uint64_t>(n, end - e.first_pos));
    uint32_t avail = stop - b;
    auto cap = static_cast<uint32_t>(std::min<size_t>(avail, tb.max_events - tb.events));
    size_t budget = tb.max_bytes > tb.bytes ? tb.max_bytes - tb.bytes : 0;

    uint32_t k = 0;
    uint64_t bytes = 0;
    if (b == 0 && cap == n && e.bytes <= budget) {
      k = cap;  // the whole batch fits: no per-event sizes needed
      bytes = e.bytes;
    } else {
      const auto& p = prefix(e);
      if (p[b + cap] - p[b] <= budget) {
        k = cap;
      } else {
        // The most events whose bytes fit the budget (p is non-decreasing).
        uint64_t limit = static_cast<uint64_t>(p[b]) + budget;
        auto it = std::upper_bound(p.begin() + b + 1, p.begin() + b + cap + 1, limit);
        k = static_cast<uint32_t>(it - (p.begin() + b + 1));
      }
      if (k == 0 && tb.events == 0) k = 1;  // a take hands out at least one event
      bytes = p[b + k] - p[b];
    }
    if (k == 0) {
      tb.full = true;
      break;
    }
    Slice* last = tb.slices.empty() ? nullptr : &tb.slices.back();
    if (last && last->batch == e.batch && last->end == b) {
      last->end = b + k;  // a rolled-back range followed by its continuation
    } else {
      tb.slices.push_back({e.batch, b, b + k});
    }
    tb.events += k;
    tb.bytes += bytes;
    pos += k;
    if (k < avail || tb.events >= tb.max_events) tb.full = true;
    ++i;
  }
  return pos;
}

void MemoryChannel::maybeFree() {
  if (cursors_.empty()) return;  // data waits for its first consumer
  uint64_t low = tail_pos_;
  for (const auto& [name, c] : cursors_) low = std::min(low, c->ledger_.lowWater());
  if (low <= head_pos_) return;
  while (head_pos_ < low) {
    Entry& f = entries_.front();
    uint64_t end = f.first_pos + f.batch->size();
    if (end <= low) {
      bytes_held_ -= f.bytes - f.freed_bytes;
      head_pos_ = end;
      entries_.pop_front();
    } else {
      uint64_t bytes = rangeBytes(f, static_cast<uint32_t>(head_pos_ - f.first_pos),
                                  static_cast<uint32_t>(low - f.first_pos));
      f.freed_bytes += bytes;
      bytes_held_ -= bytes;
      head_pos_ = low;
    }
  }
  if (space_wanted_) {
    space_wanted_ = false;
    space_queued_ = true;
    schedule();
  }
}

void MemoryChannel::queueReady(MemoryCursor* cursor) {
  if (cursor->ready_queued_) return;
  cursor->wants_ready_ = false;
  cursor->ready_queued_ = true;
  ready_queue_.push_back(cursor);
  schedule();
}

void MemoryChannel::schedule() {
  if (idle_active_) return;
  uv_idle_start(idle_, &MemoryChannel::onIdle);
  idle_active_ = true;
}

void MemoryChannel::onIdle(uv_idle_t* handle) {
  auto* self = static_cast<MemoryChannel*>(handle->data);
  if (!self) {
    uv_idle_stop(handle);
    return;
  }
  self->dispatch();
}

void MemoryChannel::dispatch() {
  uv_idle_stop(idle_);
  idle_active_ = false;
  // A callback may drop cursors, remove listeners or even destroy this channel.
  bool destroyed = false;
  destroyed_ = &destroyed;

  auto durable = std::move(durable_queue_);
  durable_queue_.clear();
  for (auto& fn : durable) {
    fn();
    if (destroyed) return;
  }

  firing_ready_.swap(ready_queue_);
  for (size_t i = 0; i < firing_ready_.size(); ++i) {
    MemoryCursor* c = firing_ready_[i];
    if (!c) continue;  // dropped by an earlier callback
    c->ready_queued_ = false;
    if (!c->on_ready_) continue;
    auto fn = c->on_ready_;  // the callback may replace or drop it
    fn();
    if (destroyed) return;
  }
  firing_ready_.clear();

  if (space_queued_) {
    space_queued_ = false;
    firing_listeners_ = true;
    size_t n = listeners_.size();  // listeners added meanwhile wait for the next time
    for (size_t i = 0; i < n; ++i) {
      if (listeners_[i].removed || !listeners_[i].fn) continue;
      auto fn = listeners_[i].fn;
      fn();
      if (destroyed) return;
    }
    firing_listeners_ = false;
    listeners_.erase(std::remove_if(listeners_.begin(), listeners_.end(),
                                    [](const Listener& l) { return l.removed; }),
                     listeners_.end());
  }
  destroyed_ = nullptr;
}

double MemoryChannel::fillPercentage() const {
  double by_events =
      config_.max_events ? static_cast<double>(tail_pos_ - head_pos_) / config_.max_events : 0.0;
  double by_bytes = config_.max_bytes ? static_cast<double>(bytes_held_) / config_.max_bytes : 0.0;
  return std::min(100.0, 100.0 * std::max(by_events, by_bytes));
}

std::shared_ptr<MemoryChannel> makeMemoryChannel(const MemoryChannelConfig& config,
                                                 const BuildContext& context) {
  return std::make_shared<MemoryChannel>(config, context);
}

void registerMemoryChannel(Registry& registry) {
  OptionTable<MemoryChannelConfig> table;
  table
      .integer("max_events", &MemoryChannelConfig::max_events, 100000, 1, 100000000,
               "Most events held")
      .size("max_bytes", &MemoryChannelConfig::max_bytes, "64MiB", 1024, 64ull << 30,
            "Most payload bytes held");
  registry.addChannel<MemoryChannelConfig, MemoryChannel>(
      "memory", "Bounded in-memory channel; what it holds is lost if the agent dies",
      std::move(table), &makeMemoryChannel,
      [](MemoryChannel& channel, const MemoryChannelConfig& config) {
        return channel.reconfigure(config);
      });
}

}  // namespace sluice

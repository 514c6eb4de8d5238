#pragma once
// SourceRunner: the SourceContext of one running source (interceptors, selector, the
// all-or-nothing put, backpressure). Used by the agent; separate so it can be tested alone.

#include <spdlog/spdlog.h>
#include <uv.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/channel.h"
#include "agent/config.h"
#include "agent/interceptor.h"
#include "agent/source.h"

namespace sluice {

// The context of one running source: it runs the source's interceptors, asks its selector
// which channels each event goes to, and puts the batch into every required channel or none.
// When they are full it keeps the (already intercepted) batch parked here and refuses the
// next offer, so the source pauses; when room frees up it puts the parked batch first and then
// resumes the source. Memory held: one parked batch per source.
// Stopping reports done only once every put into a channel that keeps positions is durable (at
// most `stop_wait`): a replacement (a reload) resumes from the durable positions, and would
// otherwise read the last batch again and put it into a file channel twice.
class SourceRunner : public SourceContext {
 public:
  SourceRunner(uv_loop_t* loop, SourceSpec spec, SourcePtr source, MetricSetPtr metrics,
               std::vector<InterceptorPtr> interceptors)
      : loop_(loop),
        spec_(std::move(spec)),
        source_(std::move(source)),
        metrics_(std::move(metrics)),
        interceptors_(std::move(interceptors)) {
    received_ = &metrics_->counter("EventReceivedCount");
    accepted_ = &metrics_->counter("EventAcceptedCount");
    refused_ = &metrics_->counter("ChannelFullCount");
    filtered_ = &metrics_->counter("EventFilteredCount");
    optional_full_ = &metrics_->counter("OptionalChannelFullCount");
    unrouted_ = &metrics_->counter("EventUnroutedCount");
    dropped_ = &metrics_->counter("DroppedEventCount");
    const auto& channels = spec_.common.channels;
    optional_.assign(channels.size(), false);
    for (size_t i = 0; i < channels.size(); ++i) {
      const auto& opt = spec_.selector.optional;
      optional_[i] = std::find(opt.begin(), opt.end(), channels[i]) != opt.end();
    }
    auto indices = [&](const std::vector<std::string>& names) {
      std::vector<size_t> out;
      for (const auto& n : names) {
        out.push_back(
            static_cast<size_t>(std::find(channels.begin(), channels.end(), n) - channels.begin()));
      }
      return out;
    };
    for (const auto& [value, names] : spec_.selector.mapping) mapping_[value] = indices(names);
    default_ = indices(spec_.selector.default_channels);
  }
  ~SourceRunner() override {
    setChannels({});
    if (stop_timer_) {
      uv_close(reinterpret_cast<uv_handle_t*>(stop_timer_),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    }
  }
  // Longest a stop waits for the last puts to be durable (a failing disk must not hold a stop
  // for ever); past it the stop completes and a replacement may read that batch again.
  void setStopWait(Millis wait) { stop_wait_ = wait; }

  const SourceSpec& spec() const { return spec_; }

  void setChannels(std::vector<ChannelPtr> channels) {
    for (size_t i = 0; i < channels_.size(); ++i) channels_[i]->removeSpaceListener(listeners_[i]);
    channels_ = std::move(channels);
    listeners_.clear();
    for (auto& ch : channels_) {
      listeners_.push_back(ch->addSpaceListener([this] { onSpace(); }));
    }
    ++positions_gen_;  // what is in flight for the old channels is theirs
    positions_only_.assign(channels_.size(), {});
  }

  void start() { source_->start(*this); }
  void reloadSource() { source_->reload(); }
  void stop(std::function<void()> done) {
    stopped_ = true;
    source_->stop([this, done = std::move(done)] {
      if (parked_ && !tryPut(*parked_, parked_positions_)) {
        dropped_->inc(parked_->size());
        spdlog::error("source {}: {} events could not be put before stopping: channels full",
                      spec_.name, parked_->size());
      }
      parked_.reset();
      whenDurable(std::move(done));
    });
  }
  // After a reload the channels may have changed: a waiting source gets a new chance.
  void poke() { onSpace(); }

  uv_loop_t* loop() override { return loop_; }
  MetricSet& metrics() override { return *metrics_; }
  const std::string& name() const override { return spec_.name; }

  OfferResult offer(Batch& batch) override { return offerWithPositions(batch, {}); }

  OfferResult offerWithPositions(
      Batch& batch, std::vector<std::pair<std::string, std::string>> positions) override {
    if (parked_) {
      waiting_ = true;
      refused_->inc();
      return OfferResult::Full;
    }
    if (batch.empty() && positions.empty()) return OfferResult::Accepted;
    received_->inc(batch.size());
    size_t filtered = 0;
    for (auto& i : interceptors_) filtered += i->apply(batch);
    if (filtered) filtered_->inc(filtered);
    if ((!batch.empty() || !positions.empty()) && !tryPut(batch, positions)) {
      parked_ = std::make_unique<Batch>(std::move(batch));
      parked_positions_ = std::move(positions);
    }
    batch.clear();
    return OfferResult::Accepted;
  }

  void reportProblem(const std::string& key, const std::string& text) override {
    problems_[key] = text;
  }
  void clearProblem(const std::string& key) override { problems_.erase(key); }
  // What the source reports as keeping it from working, by key (reportProblem).
  const std::map<std::string, std::string>& problems() const { return problems_; }

  std::optional<bool> keepsPositions() override {
    for (auto& ch : channels_) {
      if (ch->keepsPositions()) return true;
    }
    return false;
  }

  std::vector<std::string> durablePositions(const std::string& key) override {
    std::vector<std::string> out;
    for (auto& ch : channels_) {
      auto all = ch->positions();
      auto it = all.find(key);
      if (it != all.end()) out.push_back(it->second);
    }
    return out;
  }

 private:
  // Puts into every required channel or none; false (batch untouched) when one lacks room.
  bool tryPut(Batch& batch, const std::vector<std::pair<std::string, std::string>>& positions) {
    size_t n = batch.size();
    positions_ = &positions;
    if (n == 0) {
      // Positions alone (a source that moved on without new events): every channel gets them.
      auto empty = std::make_shared<const Batch>();
      for (size_t c = 0; c < channels_.size(); ++c) putOne(c, empty);
      return true;
    }
    if (spec_.selector.type != "multiplexing") {
      for (size_t c = 0; c < channels_.size(); ++c) {
        if (!optional_[c] && !channels_[c]->hasRoom(n, batch.bytes())) return false;
      }
      auto frozen = std::make_shared<const Batch>(std::move(batch));
      for (size_t c = 0; c < channels_.size(); ++c) putOne(c, frozen);
      accepted_->inc(n);
      return true;
    }
    // Multiplexing: which channels each event goes to.
    std::vector<const std::vector<size_t>*> routes(n);
    bool uniform = true;
    for (size_t i = 0; i < n; ++i) {
      auto value = batch[i].header(spec_.selector.header);
      const std::vector<size_t>* route = &default_;
      if (value) {
        auto it = mapping_.find(std::string(*value));
        if (it != mapping_.end()) route = &it->second;
      }
      routes[i] = route;
      uniform = uniform && (*route == *routes[0]);
    }
    std::vector<Batch> parts(channels_.size());
    if (!uniform) {
      for (size_t i = 0; i < n; ++i) {
        for (size_t c : *routes[i]) parts[c].append(batch[i]);
      }
      for (size_t c = 0; c < channels_.size(); ++c) {
        if (!optional_[c] && !parts[c].empty() &&
            !channels_[c]->hasRoom(parts[c].size(), parts[c].bytes())) {
          return false;
        }
      }
    } else {
      for (size_t c : *routes[0]) {
        if (!optional_[c] && !channels_[c]->hasRoom(n, batch.bytes())) return false;
      }
    }
    size_t unrouted = 0;
    for (size_t i = 0; i < n; ++i) unrouted += routes[i]->empty();
    if (unrouted) {
      unrouted_->inc(unrouted);
      if (!warned_unrouted_) {
        warned_unrouted_ = true;
        spdlog::warn(
            "source {}: events whose '{}' header maps to no channel and no default are "
            "discarded and counted in EventUnroutedCount",
            spec_.name, spec_.selector.header);
      }
    }
    std::vector<bool> got(channels_.size(), false);
    if (uniform) {
      auto frozen = std::make_shared<const Batch>(std::move(batch));
      for (size_t c : *routes[0]) got[c] = putOne(c, frozen);
    } else {
      for (size_t c = 0; c < channels_.size(); ++c) {
        if (parts[c].empty()) continue;
        got[c] = putOne(c, std::make_shared<const Batch>(std::move(parts[c])));
      }
    }
    positionsToKeepers(got);
    accepted_->inc(n - unrouted);
    return true;
  }

  // True when the channel took the batch or (an optional channel that is full) the
  // positions alone are on their way.
  bool putOne(size_t c, std::shared_ptr<const Batch> frozen) {
    size_t n = frozen->size();
    if (optional_[c] && !channels_[c]->hasRoom(n, frozen->bytes())) {
      optional_full_->inc(n);
      positionsToKeeper(c);
      return true;
    }
    // Required channels said yes just now and nothing ran in between: put cannot refuse.
    PutOptions options;
    options.positions = *positions_;
    bool counted = channels_[c]->keepsPositions();
    if (counted) options.on_durable = countDurable();
    if (!channels_[c]->put(std::move(frozen), std::move(options))) {
      if (counted) --undurable_;
      if (!optional_[c]) std::abort();
      return false;
    }
    return true;
  }

  // Counts a put into a channel that keeps positions until it is durable (see stop).
  std::function<void()> countDurable() {
    ++undurable_;
    return [this, alive = std::weak_ptr<int>(alive_)] {
      if (alive.expired()) return;
      --undurable_;
      if (undurable_ == 0 && stop_done_) finishStop();
    };
  }
  void whenDurable(std::function<void()> done) {
    // Positions still waiting go now (when there is room): they are the source's latest.
    for (size_t c = 0; c < positions_only_.size(); ++c) sendPositionsOnly(c);
    if (undurable_ == 0) {
      stop_reported_ = true;
      done();
      return;
    }
    stop_done_ = std::move(done);
    stop_timer_ = new uv_timer_t;
    uv_timer_init(loop_, stop_timer_);
    stop_timer_->data = this;
    uv_timer_start(
        stop_timer_,
        [](uv_timer_t* t) {
          auto* self = static_cast<SourceRunner*>(t->data);
          spdlog::warn(
              "source {}: {} puts still not durable {} after it stopped; stopping anyway (a "
              "replacement may read them again)",
              self->spec_.name, self->undurable_, formatDuration(self->stop_wait_));
          self->finishStop();
        },
        static_cast<uint64_t>(stop_wait_.count()), 0);
  }
  void finishStop() {
    if (stop_timer_) uv_timer_stop(stop_timer_);
    auto done = std::move(stop_done_);
    stop_done_ = nullptr;
    stop_reported_ = true;  // from here on a replacement may read the positions: put nothing
    if (done) done();
  }

  // A channel that keeps positions gets the source's positions with every put, also one that
  // sent it no event (multiplexing) or found it full (optional): its durable position must
  // follow the source, or a source waiting for it (a spooled file to complete) would wait for
  // ever, and one resuming from it would resume from an old place. Such positions-only puts
  // are coalesced per channel: one in flight, the latest waiting, and none while the channel
  // has no room (sent when it has again), so a full or failing channel is not flooded.
  void positionsToKeepers(const std::vector<bool>& got) {
    for (size_t c = 0; c < channels_.size(); ++c) {
      if (!got[c]) positionsToKeeper(c);
    }
  }
  void positionsToKeeper(size_t c) {
    if (positions_->empty() || !channels_[c]->keepsPositions()) return;
    positions_only_[c].latest = *positions_;
    positions_only_[c].waiting = true;
    sendPositionsOnly(c);
  }
  void sendPositionsOnly(size_t c) {
    auto& p = positions_only_[c];
    if (!p.waiting || p.in_flight || stop_reported_) return;
    size_t bytes = 0;
    for (const auto& [k, v] : p.latest) bytes += k.size() + v.size();
    if (!channels_[c]->hasRoom(0, bytes)) return;  // its space listener calls onSpace
    PutOptions options;
    options.positions = p.latest;
    p.waiting = false;
    p.in_flight = true;
    std::weak_ptr<int> alive = alive_;
    options.on_durable = [this, alive, c, gen = positions_gen_, counted = countDurable()] {
      // The next waiting positions are sent before this put is counted durable, so a stop
      // waiting for the count cannot finish between the two.
      if (!alive.expired() && gen == positions_gen_) {
        positions_only_[c].in_flight = false;
        sendPositionsOnly(c);
      }
      counted();
    };
    if (!channels_[c]->put(std::make_shared<const Batch>(), std::move(options))) {
      --undurable_;
      p.in_flight = false;  // refused after all: kept for the next chance
      p.waiting = true;
    }
  }

  void onSpace() {
    if (stop_reported_) return;
    for (size_t c = 0; c < positions_only_.size(); ++c) sendPositionsOnly(c);
    if (parked_) {
      if (!tryPut(*parked_, parked_positions_)) return;
      parked_.reset();
      parked_positions_.clear();
    }
    if (!waiting_ || stopped_) return;
    waiting_ = false;
    source_->resume();
  }

  uv_loop_t* loop_;
  SourceSpec spec_;
  SourcePtr source_;
  MetricSetPtr metrics_;
  std::vector<InterceptorPtr> interceptors_;
  Counter* received_;
  Counter* accepted_;
  Counter* refused_;
  Counter* filtered_;
  Counter* optional_full_;
  Counter* unrouted_;
  Counter* dropped_;
  std::vector<ChannelPtr> channels_;
  std::vector<uint64_t> listeners_;
  std::vector<bool> optional_;
  std::map<std::string, std::vector<size_t>> mapping_;
  std::vector<size_t> default_;
  std::unique_ptr<Batch> parked_;
  std::vector<std::pair<std::string, std::string>> parked_positions_;
  const std::vector<std::pair<std::string, std::string>>* positions_ = nullptr;  // of this put
  bool waiting_ = false;
  bool stopped_ = false;
  bool stop_reported_ = false;  // done of stop() called: nothing more may be put
  bool warned_unrouted_ = false;
  struct PositionsOnly {
    std::vector<std::pair<std::string, std::string>> latest;
    bool waiting = false;    // latest is still to be sent
    bool in_flight = false;  // a positions-only put is not durable yet
  };
  std::vector<PositionsOnly> positions_only_;  // per channel
  std::map<std::string, std::string> problems_;
  uint64_t positions_gen_ = 0;       // bumped when the channels change
  uint64_t undurable_ = 0;           // puts into channels that keep positions, not durable yet
  std::function<void()> stop_done_;  // a stop waiting for them
  uv_timer_t* stop_timer_ = nullptr;
  Millis stop_wait_{30000};
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace sluice

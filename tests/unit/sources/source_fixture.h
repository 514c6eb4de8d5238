#pragma once
// What the source unit tests share: a real uv loop whose every wait has a deadline, and a fake
// SourceContext that records what a source offers and can play the channel's part (refuse with
// Full, keep positions, lose what is not durable at a kill -9).

#include <doctest/doctest.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/source.h"

namespace sluice::test {

// A real uv loop with bounded runs: every wait has a deadline, so a broken source fails the test
// instead of hanging it.
class TestLoop {
 public:
  TestLoop() {
    uv_loop_init(&loop_);
    uv_prepare_init(&loop_, &check_);
    uv_timer_init(&loop_, &deadline_);
    check_.data = this;
    deadline_.data = this;
  }
  ~TestLoop() {
    uv_close(reinterpret_cast<uv_handle_t*>(&check_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&deadline_), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
    CHECK_MESSAGE(uv_loop_close(&loop_) == 0, "handles left open on the loop");
  }
  TestLoop(const TestLoop&) = delete;
  TestLoop& operator=(const TestLoop&) = delete;

  uv_loop_t* get() { return &loop_; }

  // Runs the loop until pred() holds (checked before the loop waits for I/O) or timeout_ms
  // passed. By default pred() must still hold when the loop has stopped; see held_once_is_enough.
  bool runUntil(std::function<bool()> pred, uint64_t timeout_ms = 10000) {
    if (pred()) return true;
    pred_ = std::move(pred);
    satisfied_ = false;
    uv_prepare_start(&check_, [](uv_prepare_t* c) {
      auto* self = static_cast<TestLoop*>(c->data);
      if (self->pred_()) {
        self->satisfied_ = true;  // the condition held (it may not hold any more at return)
        uv_stop(c->loop);
      }
    });
    uv_timer_start(
        &deadline_, [](uv_timer_t* t) { uv_stop(t->loop); }, timeout_ms, 0);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_prepare_stop(&check_);
    uv_timer_stop(&deadline_);
    bool ok = (held_once_is_enough && satisfied_) || pred_();
    pred_ = nullptr;
    return ok;
  }
  // Runs the loop for a fixed window (to show that something does NOT happen).
  void runFor(uint64_t ms) {
    runUntil([] { return false; }, ms);
  }

  // runUntil() succeeds once pred() held, even if the last loop iteration (I/O polled after
  // the stop) made it false again.
  bool held_once_is_enough = false;

 private:
  uv_loop_t loop_{};
  uv_prepare_t check_{};
  uv_timer_t deadline_{};
  std::function<bool()> pred_;
  bool satisfied_ = false;
};

// Stops the source and waits for done(); then runs the loop linger_ms more, so that a second
// done() call is counted too. Returns how often done() was called.
inline int stopAndWait(TestLoop& loop, Source& source, uint64_t linger_ms = 0) {
  int done_calls = 0;
  source.stop([&] { ++done_calls; });
  CHECK(loop.runUntil([&] { return done_calls > 0; }));
  if (linger_ms > 0) loop.runFor(linger_ms);
  return done_calls;
}

// One accepted event.
struct Received {
  std::string body;
  std::map<std::string, std::string> headers;
  std::string header_line;  // the headers as "k=v;" in the event's own order
  int64_t timestamp_ns = 0;
};

// A fake context that behaves like a channel for what the tests need of one:
// - every accepted event is recorded (bodies, events, batch_sizes), in offer order;
// - `refuse` answers Full to every offer (resume() is then the test's to call);
//   `refuse_every` = n answers Full to every n-th offer and resumes `source` 1 ms later, from
//   the loop, as a channel signals room;
// - like the file channel it stores positions with the batch that carries them (unless
//   !keep_positions: a memory channel), and only durable positions are visible. Accepted
//   batches are durable at once (auto_durable) or on makeDurable(); crash() loses what is not
//   durable yet, events and positions alike (kill -9);
// - `lose_offers` accepts and loses every offer, positions included (a kill -9 under way).
class FakeSourceContext final : public SourceContext {
 public:
  FakeSourceContext(uv_loop_t* loop, std::string name)
      : loop_(loop), name_(std::move(name)), metrics_("SOURCE", name_) {
    uv_timer_init(loop_, &resume_timer_);
    resume_timer_.data = this;
  }
  ~FakeSourceContext() override {
    uv_close(reinterpret_cast<uv_handle_t*>(&resume_timer_), nullptr);
    uv_run(loop_, UV_RUN_NOWAIT);
  }
  FakeSourceContext(const FakeSourceContext&) = delete;
  FakeSourceContext& operator=(const FakeSourceContext&) = delete;

  uv_loop_t* loop() override { return loop_; }
  MetricSet& metrics() override { return metrics_; }
  const std::string& name() const override { return name_; }

  OfferResult offer(Batch& batch) override { return offerWithPositions(batch, {}); }
  OfferResult offerWithPositions(
      Batch& batch, std::vector<std::pair<std::string, std::string>> positions) override {
    ++offers;
    bool flaky_refusal = refuse_every > 0 && offers % refuse_every == 0;
    if (refuse || flaky_refusal) {
      ++refused;
      if (!refuse && source != nullptr) {
        // Room comes back later, from the loop, as a channel would signal it.
        uv_timer_start(
            &resume_timer_,
            [](uv_timer_t* t) { static_cast<FakeSourceContext*>(t->data)->source->resume(); }, 1,
            0);
      }
      return OfferResult::Full;
    }
    if (!lose_offers) {
      batch_sizes.push_back(batch.size());
      for (size_t i = 0; i < batch.size(); ++i) {
        Received r{std::string(batch[i].body()), {}, {}, batch[i].timestampNs()};
        batch[i].forEachHeader([&](std::string_view k, std::string_view v) {
          r.headers[std::string(k)] = std::string(v);
          r.header_line += std::string(k) + "=" + std::string(v) + ";";
        });
        bodies.push_back(r.body);
        events.push_back(std::move(r));
      }
      if (keep_positions) {
        for (auto& p : positions) pending_positions_.push_back(std::move(p));
      }
      if (auto_durable) makeDurable();
    }
    batch.clear();
    return OfferResult::Accepted;
  }
  std::optional<bool> keepsPositions() override { return declared_keeps; }
  void reportProblem(const std::string& key, const std::string& text) override {
    problems[key] = text;
  }
  void clearProblem(const std::string& key) override { problems.erase(key); }
  std::vector<std::string> durablePositions(const std::string& key) override {
    if (!keep_positions) return {};
    auto it = durable_positions_.find(key);
    if (it == durable_positions_.end()) return {};
    return {it->second};
  }

  void makeDurable() {
    for (auto& [k, v] : pending_positions_) durable_positions_[k] = v;
    pending_positions_.clear();
    durable_events_ = events.size();
    durable_batches_ = batch_sizes.size();
  }
  void crash() {
    bodies.resize(durable_events_);
    events.resize(durable_events_);
    batch_sizes.resize(durable_batches_);
    pending_positions_.clear();
  }
  void setDurablePosition(const std::string& key, const std::string& value) {
    durable_positions_[key] = value;
  }
  // The header lines ("k=v;") of the durable events.
  std::vector<std::string> durableHeaderLines() const {
    std::vector<std::string> out;
    for (size_t i = 0; i < durable_events_; ++i) out.push_back(events[i].header_line);
    return out;
  }
  uint64_t count(const std::string& counter) { return metrics_.counter(counter).value(); }

  // Options.
  bool refuse = false;
  uint64_t refuse_every = 0;
  Source* source = nullptr;  // what refuse_every resumes
  bool keep_positions = true;
  // What keepsPositions() answers; nullopt (the default): "cannot tell", so the sources learn
  // it from durablePositions() as with an unknown context.
  std::optional<bool> declared_keeps;
  bool auto_durable = true;
  bool lose_offers = false;

  // What happened: every event the channel holds (durable ones, then pending ones).
  uint64_t offers = 0;
  uint64_t refused = 0;
  std::vector<std::string> bodies;
  std::vector<Received> events;
  std::vector<size_t> batch_sizes;
  std::map<std::string, std::string> problems;  // reported and not cleared, by key

 private:
  uv_loop_t* loop_;
  std::string name_;
  MetricSet metrics_;
  uv_timer_t resume_timer_{};
  std::vector<std::pair<std::string, std::string>> pending_positions_;
  std::map<std::string, std::string> durable_positions_;
  size_t durable_events_ = 0;
  size_t durable_batches_ = 0;
};

}  // namespace sluice::test

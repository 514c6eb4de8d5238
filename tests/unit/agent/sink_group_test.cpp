// Sink groups on a real loop with a real memory channel and scripted sinks.

#include "agent/sink_group.h"

#include <doctest/doctest.h>

#include <deque>

#include "../log_capture.h"
#include "channels/memory/memory_channel.h"

using namespace sluice;

namespace {

struct TestLoop {
  uv_loop_t loop{};
  TestLoop() { REQUIRE(uv_loop_init(&loop) == 0); }
  ~TestLoop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }
  // Runs the loop until pred holds; a timer bounds it so a broken group fails, not hangs.
  bool runUntil(const std::function<bool()>& pred, uint64_t timeout_ms = 5000) {
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    struct State {
      const std::function<bool()>* pred;
      bool timed_out = false;
    } st{&pred};
    guard.data = &st;
    uv_timer_t poll;
    uv_timer_init(&loop, &poll);
    poll.data = &st;
    uv_timer_start(
        &guard, [](uv_timer_t* t) { static_cast<State*>(t->data)->timed_out = true; }, timeout_ms,
        0);
    uv_timer_start(
        &poll, [](uv_timer_t*) {}, 1, 1);
    while (!pred() && !st.timed_out) uv_run(&loop, UV_RUN_ONCE);
    uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&poll), nullptr);
    uv_run(&loop, UV_RUN_NOWAIT);
    return pred();
  }
};

// A sink whose answers are scripted: it fails while `failing` is set, answers synchronously or
// from the loop, and records every event body it acknowledged.
struct ScriptedSink : Sink {
  struct Shared {
    bool failing = false;
    bool async = false;
    bool hold = false;  // deliveries answer only when cancelled (or by answerHeld)
    size_t cancels = 0;
    bool available = true;
    bool can_abandon = true;
    size_t abandons = 0;
    size_t max_in_flight = 1;
    std::vector<DeliveryDone> held;  // deliveries held (hold), oldest first
    SinkContext* ctx = nullptr;
    // Answers every held delivery with r (from the test, on the loop thread).
    void answerHeld(DeliveryResult r) {
      auto all = std::move(held);
      held.clear();
      for (auto& d : all) d(r);
    }
    void setAvailable(bool a) {
      available = a;
      if (ctx) ctx->wake();
    }
    std::vector<std::string> delivered;
    size_t attempts = 0;
  };
  explicit ScriptedSink(std::shared_ptr<Shared> s) : shared(std::move(s)) {}
  std::shared_ptr<Shared> shared;
  SinkContext* ctx = nullptr;
  uv_timer_t* timer = nullptr;
  DeliveryDone pending;

  void start(SinkContext& c) override {
    ctx = &c;
    shared->ctx = &c;
  }
  size_t maxInFlight() const override { return shared->max_in_flight; }
  bool available() const override { return shared->available; }
  bool abandon() override {
    ++shared->abandons;
    return shared->can_abandon;
  }
  void deliver(const Take& take, DeliveryDone done) override {
    ++shared->attempts;
    if (shared->failing) {
      done(DeliveryResult::retry("scripted failure"));
      return;
    }
    if (shared->hold) {
      shared->held.push_back(std::move(done));
      return;
    }
    take.forEach([&](const EventView& e) { shared->delivered.emplace_back(e.body()); });
    if (!shared->async) {
      done(DeliveryResult::ok());
      return;
    }
    pending = std::move(done);
    if (!timer) {
      timer = new uv_timer_t;
      uv_timer_init(ctx->loop(), timer);
      timer->data = this;
    }
    uv_timer_start(
        timer,
        [](uv_timer_t* t) {
          auto* self = static_cast<ScriptedSink*>(t->data);
          auto d = std::move(self->pending);
          d(DeliveryResult::ok());
        },
        1, 0);
  }
  void cancel() override {
    ++shared->cancels;
    if (shared->hold) shared->answerHeld(DeliveryResult::retry("cancelled"));
  }
  void stop(std::function<void()> done) override {
    if (timer) {
      uv_close(reinterpret_cast<uv_handle_t*>(timer),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      timer = nullptr;
    }
    done();
  }
};

struct Fixture {
  TestLoop tl;
  MetricsRegistry metrics;
  std::shared_ptr<MemoryChannel> channel;
  std::vector<std::shared_ptr<ScriptedSink::Shared>> sinks;
  std::unique_ptr<SinkGroup> group;

  explicit Fixture(size_t n_sinks, const std::string& processor = "failover",
                   const std::string& balance = "round_robin", int64_t penalty_min_ms = 20) {
    BuildContext ctx;
    ctx.name = "mem";
    ctx.loop = &tl.loop;
    ctx.metrics = metrics.set("CHANNEL", "mem");
    channel = makeMemoryChannel(MemoryChannelConfig{}, ctx);
    GroupSpec spec;
    spec.name = "g";
    spec.common.processor = processor;
    spec.common.balance = balance;
    spec.common.penalty_min = Millis(penalty_min_ms);
    spec.common.penalty_max = Millis(penalty_min_ms * 2);
    std::vector<SinkGroup::Member> members;
    for (size_t i = 0; i < n_sinks; ++i) {
      auto shared = std::make_shared<ScriptedSink::Shared>();
      sinks.push_back(shared);
      SinkSpec s;
      s.name = "s" + std::to_string(i);
      s.common.channel = "mem";
      s.common.batch_size = 10;
      s.common.batch_max_bytes = 1 << 20;
      members.push_back({s, std::make_unique<ScriptedSink>(shared), metrics.set("SINK", s.name)});
      spec.common.sinks.push_back(s.name);
    }
    group = std::make_unique<SinkGroup>(&tl.loop, spec, channel, std::move(members));
  }
  ~Fixture() { stopGroup(); }

  void stopGroup() {
    if (!group) return;
    bool stopped = false;
    group->stop([&] { stopped = true; });
    CHECK(tl.runUntil([&] { return stopped; }));
    group.reset();
  }

  void put(int from, int to) {
    Batch b;
    for (int i = from; i <= to; ++i) b.add(std::to_string(i), 0);
    REQUIRE(channel->put(std::make_shared<const Batch>(std::move(b))));
  }
  static std::vector<std::string> seq(int from, int to) {
    std::vector<std::string> out;
    for (int i = from; i <= to; ++i) out.push_back(std::to_string(i));
    return out;
  }
  uint64_t counter(const std::string& sink, const std::string& name) {
    return metrics.set("SINK", sink)->counter(name).value();
  }
  // Runs the loop for ms milliseconds of loop time.
  void runFor(uint64_t ms) {
    uv_update_time(&tl.loop);
    uint64_t start = uv_now(&tl.loop);
    REQUIRE(tl.runUntil([&] { return uv_now(&tl.loop) - start >= ms; }));
  }
  static std::vector<std::string> sorted(std::vector<std::string> v) {
    std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return std::stoi(a) < std::stoi(b); });
    return v;
  }
};

}  // namespace

TEST_CASE("a group of one delivers everything in order and commits it") {
  Fixture f(1);
  f.group->start();
  f.put(1, 95);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered == Fixture::seq(1, 95));
  CHECK(f.channel->stats().events == 0);
  CHECK(f.counter("s0", "EventDrainAttemptCount") == 95);
  CHECK(f.counter("s0", "EventDrainSuccessCount") == 95);
  CHECK(f.counter("s0", "BatchCompleteCount") == 9);
  CHECK(f.counter("s0", "BatchUnderflowCount") == 1);
}

TEST_CASE("a failed delivery is rolled back and retried after a penalty; nothing lost or doubled") {
  Fixture f(1);
  f.sinks[0]->failing = true;
  f.group->start();
  f.put(1, 30);
  REQUIRE(f.tl.runUntil([&] { return f.sinks[0]->attempts >= 3; }));
  CHECK(f.sinks[0]->delivered.empty());
  CHECK(f.group->lag() == 30);  // still held by the channel
  CHECK(f.counter("s0", "ConnectionFailedCount") >= 3);
  f.sinks[0]->failing = false;
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered == Fixture::seq(1, 30));
}

TEST_CASE("failover: the next sink takes over while the first is set aside, then traffic returns") {
  Fixture f(2);
  f.sinks[0]->failing = true;
  f.group->start();
  f.put(1, 50);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered.empty());
  CHECK(f.sinks[1]->delivered == Fixture::seq(1, 50));
  // The first sink recovers; after its penalty it is preferred again.
  f.sinks[0]->failing = false;
  uv_update_time(&f.tl.loop);
  uint64_t start = uv_now(&f.tl.loop);
  REQUIRE(f.tl.runUntil([&] { return uv_now(&f.tl.loop) - start > 60; }));
  f.put(51, 60);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered == Fixture::seq(51, 60));
  CHECK(f.sinks[1]->delivered.size() == 50);
}

TEST_CASE("load_balance: sinks take turns; the union is complete with no event twice") {
  Fixture f(2, "load_balance");
  f.sinks[0]->async = true;
  f.sinks[1]->async = true;
  f.group->start();
  f.put(1, 100);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered.size() == 50);
  CHECK(f.sinks[1]->delivered.size() == 50);
  std::vector<std::string> all = f.sinks[0]->delivered;
  all.insert(all.end(), f.sinks[1]->delivered.begin(), f.sinks[1]->delivered.end());
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return std::stoi(a) < std::stoi(b); });
  CHECK(all == Fixture::seq(1, 100));
}

TEST_CASE("stop waits for the delivery in flight, and a new group on the cursor continues") {
  Fixture f(1);
  f.sinks[0]->async = true;
  f.group->start();
  f.put(1, 40);
  REQUIRE(f.tl.runUntil([&] { return f.group->inFlight() == 1; }));
  f.stopGroup();
  auto delivered = f.sinks[0]->delivered.size();
  CHECK(delivered > 0);
  CHECK(delivered < 40);
  // A replacement group on the same cursor name picks up exactly where the old one stopped.
  auto shared = std::make_shared<ScriptedSink::Shared>();
  SinkSpec s;
  s.name = "s0";
  s.common.batch_size = 7;
  s.common.batch_max_bytes = 1 << 20;
  GroupSpec spec;
  spec.name = "g";
  spec.common.processor = "failover";
  spec.common.penalty_min = Millis(20);
  spec.common.penalty_max = Millis(40);
  std::vector<SinkGroup::Member> members;
  members.push_back({s, std::make_unique<ScriptedSink>(shared), f.metrics.set("SINK", "s0")});
  f.group = std::make_unique<SinkGroup>(&f.tl.loop, spec, f.channel, std::move(members));
  f.group->start();
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  auto all = f.sinks[0]->delivered;
  all.insert(all.end(), shared->delivered.begin(), shared->delivered.end());
  CHECK(all == Fixture::seq(1, 40));
}

TEST_CASE("cancel: a stopping group's unanswered delivery is rolled back, nothing committed") {
  Fixture f(1);
  f.sinks[0]->hold = true;
  f.group->start();
  f.put(1, 25);
  REQUIRE(f.tl.runUntil([&] { return f.group->inFlight() == 1; }));
  bool stopped = false;
  f.group->stop([&] { stopped = true; });
  f.tl.runUntil([&] { return stopped; }, 50);  // a held delivery keeps stop waiting
  CHECK_FALSE(stopped);
  f.group->cancel();
  CHECK(f.sinks[0]->cancels == 1);
  REQUIRE(f.tl.runUntil([&] { return stopped; }));
  CHECK(f.sinks[0]->attempts == 1);  // stopping: nothing more was taken
  f.group.reset();
  CHECK(f.channel->cursor("g").lag() == 25);  // all of it is still in the channel
}

TEST_CASE("load_balance random: every live sink gets some, a failing one none, nothing lost") {
  Fixture f(3, "load_balance", "random");
  f.sinks[2]->failing = true;
  f.group->start();
  for (int i = 0; i < 30; ++i) f.put(i * 10 + 1, i * 10 + 10);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered.size() > 0);
  CHECK(f.sinks[1]->delivered.size() > 0);
  CHECK(f.sinks[2]->delivered.empty());
  auto all = f.sinks[0]->delivered;
  all.insert(all.end(), f.sinks[1]->delivered.begin(), f.sinks[1]->delivered.end());
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return std::stoi(a) < std::stoi(b); });
  CHECK(all == Fixture::seq(1, 300));
  CHECK(f.metrics.set("SINK", "s2")->counter("PenaltyTimeMsCount").value() > 0);
}

TEST_CASE("failover: an unavailable sink's deliveries go to the next one; late answers ignored") {
  test::LogCapture log;
  Fixture f(2);
  f.sinks[0]->hold = true;
  f.sinks[0]->max_in_flight = 4;
  f.group->start();
  f.put(1, 40);
  REQUIRE(f.tl.runUntil([&] { return f.group->inFlight() == 4; }));
  CHECK(f.sinks[1]->delivered.empty());

  // The primary says its destination is gone: its four deliveries are taken back at once.
  f.sinks[0]->setAvailable(false);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->abandons == 1);
  CHECK(f.sinks[1]->delivered == Fixture::seq(1, 40));  // in order, none twice
  CHECK(f.counter("s0", "DeliveryTakenBackCount") == 4);
  CHECK(f.group->liveCount() == 1);
  auto status = f.group->memberStatus();
  REQUIRE(status.size() == 2);
  CHECK_FALSE(status[0].available);
  CHECK(status[0].in_flight == 4);  // the sink still holds them until it answers
  CHECK(status[1].available);
  CHECK(f.group->lastCommitMs() > 0);

  // The primary answers late, Ok: nothing is committed twice, nothing counted as its success.
  f.sinks[0]->answerHeld(DeliveryResult::ok());
  f.runFor(5);
  CHECK(f.counter("s0", "EventDrainSuccessCount") == 0);
  CHECK(f.counter("s1", "EventDrainSuccessCount") == 40);
  CHECK(f.group->memberStatus()[0].in_flight == 0);
  f.put(41, 50);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[1]->delivered == Fixture::seq(1, 50));
  CHECK(f.channel->stats().events == 0);
  CHECK(log.count("warning sink s0: destination unavailable; 4 deliveries taken back") == 1);
}

TEST_CASE("failover: a sink that cannot let go keeps its deliveries; the rest goes to the next") {
  Fixture f(2);
  f.sinks[0]->hold = true;
  f.sinks[0]->can_abandon = false;
  f.group->start();
  f.put(1, 30);
  REQUIRE(f.tl.runUntil([&] { return f.group->inFlight() == 1; }));
  f.sinks[0]->setAvailable(false);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 10; }));
  CHECK(f.sinks[1]->delivered == Fixture::seq(11, 30));
  f.sinks[0]->answerHeld(DeliveryResult::ok());  // its own answer still counts
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.counter("s0", "EventDrainSuccessCount") == 10);
}

TEST_CASE("load_balance: an unavailable sink is skipped and not counted live") {
  Fixture f(2, "load_balance");
  f.sinks[0]->available = false;
  f.group->start();
  f.runFor(60);  // past the penalty it got when it was found unavailable
  f.put(1, 50);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->attempts == 0);
  CHECK(f.sinks[1]->delivered == Fixture::seq(1, 50));
  CHECK(f.group->liveCount() == 1);
}

TEST_CASE("failover: traffic returns once the first sink is available and its penalty is over") {
  // Penalties of 150-300 ms, then 300-600 ms: long enough for a busy machine.
  Fixture f(2, "failover", "round_robin", 300);
  f.sinks[0]->available = false;
  f.group->start();
  f.put(1, 20);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[1]->delivered == Fixture::seq(1, 20));
  // Past its penalty but still unavailable: still skipped.
  f.runFor(350);
  f.put(21, 30);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->attempts == 0);
  CHECK(f.sinks[1]->delivered == Fixture::seq(1, 30));
  // Unavailable again (set aside anew), then at once available: the penalty still holds it.
  f.sinks[0]->setAvailable(true);
  f.sinks[0]->setAvailable(false);
  f.sinks[0]->setAvailable(true);
  f.put(31, 40);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[1]->delivered == Fixture::seq(1, 40));
  CHECK(f.group->memberStatus()[0].available);
  // Its penalty over, the first sink gets the traffic again.
  REQUIRE(f.tl.runUntil([&] { return f.group->liveCount() == 2; }));
  f.put(41, 50);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered == Fixture::seq(41, 50));
  CHECK(f.sinks[1]->delivered.size() == 40);
}

TEST_CASE("a group of one keeps using its sink while it is unavailable") {
  Fixture f(1);
  f.sinks[0]->available = false;
  f.group->start();
  f.put(1, 20);
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered == Fixture::seq(1, 20));
  CHECK(f.sinks[0]->abandons == 0);
  CHECK(f.group->liveCount() == 0);
}

TEST_CASE("failed deliveries in flight log one warning per state change, with a count") {
  test::LogCapture log;
  Fixture f(1);
  f.sinks[0]->hold = true;
  f.sinks[0]->max_in_flight = 8;
  f.group->start();
  f.put(1, 80);
  REQUIRE(f.tl.runUntil([&] { return f.group->inFlight() == 8; }));
  f.sinks[0]->answerHeld(DeliveryResult::retry("broker gone"));
  CHECK(log.count("warning sink s0: delivery failed (broker gone)") == 1);
  // The eight failures are one outage: the penalty is not doubled eight times.
  CHECK(f.counter("s0", "PenaltyTimeMsCount") <= 20);
  CHECK(f.counter("s0", "ConnectionFailedCount") == 8);
  f.sinks[0]->hold = false;
  REQUIRE(f.tl.runUntil([&] { return f.group->lag() == 0; }));
  CHECK(f.sinks[0]->delivered == Fixture::seq(1, 80));
  CHECK(log.count("sink s0: delivering again (8 deliveries failed meanwhile)") == 1);
  CHECK(log.count("warning") == 1);
}

// Sink groups on a real loop with a real memory channel and scripted sinks.

#include "agent/sink_group.h"

#include <doctest/doctest.h>

#include <deque>

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
    bool hold = false;  // deliveries answer only when cancelled
    size_t cancels = 0;
    std::vector<std::string> delivered;
    size_t attempts = 0;
  };
  explicit ScriptedSink(std::shared_ptr<Shared> s) : shared(std::move(s)) {}
  std::shared_ptr<Shared> shared;
  SinkContext* ctx = nullptr;
  uv_timer_t* timer = nullptr;
  DeliveryDone pending;

  void start(SinkContext& c) override { ctx = &c; }
  void deliver(const Take& take, DeliveryDone done) override {
    ++shared->attempts;
    if (shared->failing) {
      done(DeliveryResult::retry("scripted failure"));
      return;
    }
    if (shared->hold) {
      pending = std::move(done);
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
    if (shared->hold && pending) {
      auto d = std::move(pending);
      pending = nullptr;
      d(DeliveryResult::retry("cancelled"));
    }
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
                   const std::string& balance = "round_robin") {
    BuildContext ctx;
    ctx.name = "mem";
    ctx.loop = &tl.loop;
    ctx.metrics = metrics.set("CHANNEL", "mem");
    channel = makeMemoryChannel(MemoryChannelConfig{}, ctx);
    GroupSpec spec;
    spec.name = "g";
    spec.common.processor = processor;
    spec.common.balance = balance;
    spec.common.penalty_min = Millis(20);
    spec.common.penalty_max = Millis(40);
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

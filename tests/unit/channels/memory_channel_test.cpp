#include "channels/memory/memory_channel.h"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <uv.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "agent/diagnostics.h"
#include "agent/options.h"
#include "agent/registry.h"

namespace sluice {
namespace {

// A real loop. Declare it before the channel so the channel dies first; the destructor then
// runs the loop once more so the channel's handle close completes, and checks nothing leaked.
struct TestLoop {
  uv_loop_t loop{};
  TestLoop() { REQUIRE(uv_loop_init(&loop) == 0); }
  ~TestLoop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }
  // Runs until nothing is pending (the channel's idle handle is only active while a callback
  // waits).
  void run() { uv_run(&loop, UV_RUN_DEFAULT); }
  BuildContext context(MetricSetPtr metrics = nullptr) {
    BuildContext ctx;
    ctx.name = "mem";
    ctx.loop = &loop;
    ctx.metrics = std::move(metrics);
    return ctx;
  }
};

// Events named by number: "e<first>", "e<first+1>", ... each body padded to body_size bytes.
std::shared_ptr<const Batch> makeBatch(int first, int count, size_t body_size = 8) {
  auto b = std::make_shared<Batch>();
  for (int i = 0; i < count; ++i) {
    std::string body = fmt::format("e{}", first + i);
    if (body.size() < body_size) body.append(body_size - body.size(), '.');
    b->add(body, 1);
  }
  return b;
}

std::vector<std::string> names(const Take& t) {
  std::vector<std::string> out;
  t.forEach([&out](EventView ev) {
    std::string body(ev.body());
    out.push_back(body.substr(0, body.find('.')));
  });
  return out;
}

std::vector<std::string> expected(int first, int count) {
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) out.push_back(fmt::format("e{}", first + i));
  return out;
}

MemoryChannelConfig bounds(uint64_t events, uint64_t bytes) {
  MemoryChannelConfig c;
  c.max_events = events;
  c.max_bytes = bytes;
  return c;
}

constexpr size_t kAll = 1000000;

double sample(const MetricSet& m, const std::string& name) {
  for (const auto& s : m.samples()) {
    if (s.name == name) return s.value;
  }
  FAIL("no metric " << name);
  return -1;
}

TEST_CASE("memory channel: put, take, commit") {
  TestLoop l;
  MemoryChannel ch({}, l.context());
  Cursor& c = ch.cursor("sink");
  auto first = makeBatch(0, 3);
  REQUIRE(ch.put(first));
  REQUIRE(ch.put(makeBatch(3, 2)));
  CHECK(ch.stats().events == 5);
  CHECK(ch.stats().bytes == 40);
  CHECK(c.lag() == 5);

  Take t = c.take(kAll, kAll);
  REQUIRE(t);
  CHECK(t.events() == 5);
  CHECK(t.bytes() == 40);
  CHECK(names(t) == expected(0, 5));
  REQUIRE(t.slices().size() == 2);
  CHECK(t.slices()[0].batch == first);  // shared, not copied
  CHECK(c.lag() == 5);                  // taken is not committed

  t.commit();
  CHECK_FALSE(t);
  CHECK(ch.stats().events == 0);
  CHECK(ch.stats().bytes == 0);
  CHECK(c.lag() == 0);
  CHECK_FALSE(c.take(kAll, kAll));

  // An empty batch (or none) is a no-op.
  CHECK(ch.put(std::make_shared<Batch>()));
  CHECK(ch.put(nullptr));
  CHECK(ch.stats().events == 0);
}

TEST_CASE("memory channel: rollback hands the same events out again, first and in order") {
  TestLoop l;
  MemoryChannel ch({}, l.context());
  Cursor& c = ch.cursor("sink");
  REQUIRE(ch.put(makeBatch(0, 4)));
  REQUIRE(ch.put(makeBatch(4, 4)));

  SUBCASE("one take") {
    Take t = c.take(3, kAll);
    CHECK(names(t) == expected(0, 3));
    t.rollback();
    Take again = c.take(kAll, kAll);
    CHECK(names(again) == expected(0, 8));
    again.commit();
    CHECK(ch.stats().events == 0);
  }
  SUBCASE("two takes rolled back in reverse order, spanning a batch boundary") {
    Take a = c.take(3, kAll);  // e0..e2
    Take b = c.take(3, kAll);  // e3..e5, across the two batches
    CHECK(names(b) == expected(3, 3));
    b.rollback();
    a.rollback();
    Take first = c.take(2, kAll);
    CHECK(names(first) == expected(0, 2));
    Take rest = c.take(kAll, kAll);
    CHECK(names(rest) == expected(2, 6));
    rest.commit();
    CHECK(ch.stats().events == 8);  // e0, e1 still outstanding
    first.commit();
    CHECK(ch.stats().events == 0);
  }
  SUBCASE("a rolled-back take between outstanding ones comes back before new events") {
    Take a = c.take(2, kAll);  // e0 e1
    Take b = c.take(2, kAll);  // e2 e3
    Take d = c.take(2, kAll);  // e4 e5
    b.rollback();
    Take next = c.take(3, kAll);
    CHECK(names(next) == std::vector<std::string>{"e2", "e3", "e6"});
    a.commit();
    d.commit();
    next.commit();
    CHECK(c.lag() == 1);
    CHECK(ch.stats().events == 1);
  }
}

TEST_CASE("memory channel: two consumers read independently; data freed when both committed") {
  TestLoop l;
  MemoryChannel ch({}, l.context());
  Cursor& kafka = ch.cursor("kafka");
  Cursor& hdfs = ch.cursor("hdfs");
  REQUIRE(ch.put(makeBatch(0, 4)));

  Take a = kafka.take(kAll, kAll);
  CHECK(names(a) == expected(0, 4));
  a.commit();
  CHECK(kafka.lag() == 0);
  CHECK(hdfs.lag() == 4);
  CHECK(ch.stats().events == 4);

  Take h1 = hdfs.take(3, kAll);
  CHECK(names(h1) == expected(0, 3));
  h1.commit();
  CHECK(ch.stats().events == 1);  // partial batch freed in the accounting
  CHECK(ch.stats().bytes == 8);
  Take h2 = hdfs.take(kAll, kAll);
  CHECK(names(h2) == expected(3, 1));
  h2.commit();
  CHECK(ch.stats().events == 0);
  CHECK(ch.stats().bytes == 0);

  // A consumer that joins later starts at the oldest event still held.
  REQUIRE(ch.put(makeBatch(4, 2)));
  Take k2 = kafka.take(kAll, kAll);
  k2.commit();
  Cursor& late = ch.cursor("late");
  CHECK(late.lag() == 2);
  Take t = late.take(kAll, kAll);
  CHECK(names(t) == expected(4, 2));
}

TEST_CASE("memory channel: outstanding takes committed out of order") {
  TestLoop l;
  MemoryChannel ch({}, l.context());
  Cursor& c = ch.cursor("sink");
  REQUIRE(ch.put(makeBatch(0, 6)));
  Take t1 = c.take(2, kAll);
  Take t2 = c.take(2, kAll);
  Take t3 = c.take(2, kAll);
  CHECK(names(t3) == expected(4, 2));
  t3.commit();
  t2.commit();
  CHECK(ch.stats().events == 6);  // e0, e1 not committed: nothing can be freed
  CHECK(c.lag() == 2);
  t1.commit();
  CHECK(ch.stats().events == 0);
  CHECK(c.lag() == 0);
  CHECK_FALSE(c.take(kAll, kAll));
}

TEST_CASE("memory channel: take limits by events and bytes") {
  TestLoop l;
  MemoryChannel ch({}, l.context());
  Cursor& c = ch.cursor("sink");
  REQUIRE(ch.put(makeBatch(0, 10, 10)));  // 10 events of 10 bytes

  Take a = c.take(3, kAll);
  CHECK(a.events() == 3);
  CHECK(a.bytes() == 30);
  Take b = c.take(kAll, 25);
  CHECK(names(b) == expected(3, 2));
  CHECK(b.bytes() == 20);
  Take d = c.take(kAll, 30);  // exactly fits
  CHECK(names(d) == expected(5, 3));
  Take e = c.take(kAll, 5);  // below one event: one event anyway
  CHECK(names(e) == expected(8, 1));
  CHECK(e.bytes() == 10);

  // Header keys and values count as payload bytes.
  auto hb = std::make_shared<Batch>();
  auto i0 = hb->add("abc", 1);
  hb->setHeader(i0, "host", "pos1");  // 3 + 8 bytes
  hb->add("defgh", 2);                // 5 bytes
  REQUIRE(ch.put(hb));
  Take f = c.take(kAll, 11 + 10);  // e9 (10) + the 11-byte event; the 5-byte one exceeds
  CHECK(f.events() == 2);
  CHECK(f.bytes() == 21);
  Take g = c.take(kAll, kAll);
  CHECK(g.events() == 1);
  CHECK(g.bytes() == 5);
  CHECK(g.slices()[0].batch == hb);
  CHECK(g.slices()[0].begin == 1);
  CHECK(g.slices()[0].end == 2);

  // max_events 0 still hands out one event.
  REQUIRE(ch.put(makeBatch(10, 2)));
  Take z = c.take(0, kAll);
  CHECK(z.events() == 1);
}

TEST_CASE("memory channel: bounds refuse puts until commits free room") {
  TestLoop l;
  MemoryChannel ch(bounds(4, 1 << 20), l.context());
  Cursor& c = ch.cursor("sink");
  int fired = 0;
  ch.addSpaceListener([&fired] { ++fired; });

  REQUIRE(ch.put(makeBatch(0, 3)));
  CHECK(ch.hasRoom(1, 8));
  CHECK_FALSE(ch.hasRoom(2, 16));
  CHECK_FALSE(ch.put(makeBatch(3, 2)));
  CHECK(ch.stats().events == 3);  // the refused batch kept nothing

  Take t = c.take(2, kAll);
  t.commit();
  CHECK(fired == 0);  // deferred, never inside commit
  l.run();
  CHECK(fired == 1);
  REQUIRE(ch.put(makeBatch(3, 2)));
  CHECK(ch.stats().events == 3);

  // Room freed while nobody waits: no listener call.
  Take all = c.take(kAll, kAll);
  all.commit();
  l.run();
  CHECK(fired == 1);

  // Bytes bound too.
  MemoryChannel by_bytes(bounds(1000, 2048), l.context());
  Cursor& bc = by_bytes.cursor("sink");
  REQUIRE(by_bytes.put(makeBatch(0, 2, 1000)));
  CHECK_FALSE(by_bytes.hasRoom(1, 100));
  int byte_fired = 0;
  auto handle = by_bytes.addSpaceListener([&byte_fired] { ++byte_fired; });
  Take bt = bc.take(1, kAll);
  bt.commit();
  l.run();
  CHECK(byte_fired == 1);
  CHECK(by_bytes.hasRoom(1, 1000));
  by_bytes.removeSpaceListener(handle);
  CHECK_FALSE(by_bytes.put(makeBatch(2, 2, 1000)));
  Take bt2 = bc.take(1, kAll);
  bt2.commit();
  l.run();
  CHECK(byte_fired == 1);  // removed
}

TEST_CASE("memory channel: a batch larger than the bounds is accepted into an empty channel") {
  TestLoop l;
  MemoryChannel ch(bounds(2, 1024), l.context());
  Cursor& c = ch.cursor("sink");
  REQUIRE(ch.put(makeBatch(0, 5, 300)));  // 5 events, 1500 bytes
  CHECK(ch.stats().events == 5);
  CHECK_FALSE(ch.hasRoom(1, 1));
  CHECK_FALSE(ch.put(makeBatch(5, 1)));
  Take t = c.take(kAll, kAll);
  CHECK(t.events() == 5);
  t.commit();
  CHECK(ch.put(makeBatch(5, 1)));
}

TEST_CASE("memory channel: onReady fires, deferred, after an empty take and a later put") {
  TestLoop l;
  MemoryChannel ch({}, l.context());
  Cursor& c = ch.cursor("sink");
  int ready = 0;
  c.setOnReady([&ready] { ++ready; });

  REQUIRE(ch.put(makeBatch(0, 1)));
  l.run();
  CHECK(ready == 0);  // nobody asked

  Take t = c.take(kAll, kAll);
  t.commit();
  CHECK_FALSE(c.take(kAll, kAll));
  REQUIRE(ch.put(makeBatch(1, 1)));
  CHECK(ready == 0);  // not inside put
  l.run();
  CHECK(ready == 1);
  REQUIRE(ch.put(makeBatch(2, 1)));
  l.run();
  CHECK(ready == 1);  // once per empty take

  // A rollback also makes data available again.
  Take all = c.take(kAll, kAll);
  CHECK(all.events() == 2);
  CHECK_FALSE(c.take(kAll, kAll));
  all.rollback();
  CHECK(ready == 1);
  l.run();
  CHECK(ready == 2);

  // The callback may take and commit from inside; it runs on the loop.
  Take again = c.take(kAll, kAll);
  again.commit();
  CHECK_FALSE(c.take(kAll, kAll));
  c.setOnReady([&] {
    ++ready;
    Take inner = c.take(kAll, kAll);
    CHECK(inner.events() == 1);
    inner.commit();
  });
  REQUIRE(ch.put(makeBatch(3, 1)));
  l.run();
  CHECK(ready == 3);
  CHECK(ch.stats().events == 0);
}

TEST_CASE("memory channel: a Take destroyed without commit rolls back") {
  TestLoop l;
  auto metrics = std::make_shared<MetricSet>("CHANNEL", "mem");
  MemoryChannel ch({}, l.context(metrics));
  Cursor& c = ch.cursor("sink");
  REQUIRE(ch.put(makeBatch(0, 3)));
  {
    Take t = c.take(2, kAll);
    CHECK(t.events() == 2);
    Take moved = std::move(t);  // the moved-from take must not roll back
    CHECK_FALSE(t);
  }
  CHECK(metrics->counter("RollbackCount").value() == 1);
  Take again = c.take(kAll, kAll);
  CHECK(names(again) == expected(0, 3));
}

TEST_CASE("memory channel: registry options, and reconfigure keeps events") {
  TestLoop l;
  Registry registry;
  registerMemoryChannel(registry);
  const ComponentType* type = registry.find(Kind::Channel, "memory");
  REQUIRE(type);
  REQUIRE(type->options.size() == 2);
  CHECK(type->options[0].key == "max_events");
  CHECK(type->options[0].default_text == "100000");
  CHECK(type->options[0].bounds == "1..100000000");
  CHECK(type->options[1].key == "max_bytes");
  CHECK(type->options[1].type == "size");
  CHECK(type->options[1].default_text == "64MiB");

  Diagnostics diag;
  ConfigReader reader(diag, [](const std::string&) { return std::optional<std::string>(); });
  auto defaults = type->parse(YAML::Load("{}"), reader, "channels.mem");
  CHECK(std::any_cast<const MemoryChannelConfig&>(defaults).max_events == 100000);
  CHECK(std::any_cast<const MemoryChannelConfig&>(defaults).max_bytes == 64ull << 20);
  auto small = type->parse(YAML::Load("{max_events: 10, max_bytes: 4KiB}"), reader, "channels.mem");
  CHECK_FALSE(diag.hasErrors());
  CHECK(std::any_cast<const MemoryChannelConfig&>(small).max_bytes == 4096);
  CHECK_FALSE(type->equal(defaults, small));
  type->parse(YAML::Load("{max_events: 0, max_bytes: 100}"), reader, "channels.mem");
  CHECK(diag.all().size() == 2);

  ChannelPtr ch = type->make_channel(small, l.context());
  Cursor& c = ch->cursor("sink");
  REQUIRE(ch->put(makeBatch(0, 8)));
  Take t = c.take(3, kAll);
  t.commit();
  CHECK(ch->stats().capacity_events == 10);

  auto bigger = type->parse(YAML::Load("{max_events: 20}"), reader, "channels.mem");
  REQUIRE(type->reconfigure_channel);
  CHECK(type->reconfigure_channel(*ch, bigger));
  CHECK(ch->stats().capacity_events == 20);
  CHECK(ch->stats().capacity_bytes == 64ull << 20);
  CHECK(ch->stats().events == 5);
  CHECK(ch->hasRoom(15, 100));
  Take rest = c.take(kAll, kAll);
  CHECK(names(rest) == expected(3, 5));

  // Lowering the bound below what is held keeps everything; puts wait.
  CHECK(type->reconfigure_channel(*ch, small));
  auto tiny = bounds(2, 1024);
  auto& mem = dynamic_cast<MemoryChannel&>(*ch);
  int fired = 0;
  ch->addSpaceListener([&fired] { ++fired; });
  CHECK(mem.reconfigure(tiny));
  CHECK(ch->stats().events == 5);
  CHECK_FALSE(ch->put(makeBatch(8, 1)));
  CHECK(mem.reconfigure(bounds(100, 1 << 20)));  // raised: the waiting source hears of it
  l.run();
  CHECK(fired == 1);
}

TEST_CASE("memory channel: dropCursor frees only what that consumer held") {
  TestLoop l;
  MemoryChannel ch({}, l.context());
  Cursor& fast = ch.cursor("fast");
  Cursor& slow = ch.cursor("slow");
  REQUIRE(ch.put(makeBatch(0, 4)));
  Take f = fast.take(3, kAll);
  f.commit();
  Take s = slow.take(1, kAll);  // outstanding while its consumer is dropped
  CHECK(ch.stats().events == 4);

  ch.dropCursor("slow");
  CHECK(ch.stats().events == 1);  // e3 still held for "fast"
  s.commit();                     // harmless
  CHECK(ch.stats().events == 1);

  Take g = fast.take(kAll, kAll);
  CHECK(names(g) == expected(3, 1));
  ch.dropCursor("fast");          // with g outstanding
  CHECK(ch.stats().events == 1);  // no consumer left: data waits
  g.rollback();                   // harmless
  ch.dropCursor("nobody");

  Cursor& back = ch.cursor("fast");
  Take h = back.take(kAll, kAll);
  CHECK(names(h) == expected(3, 1));
  h.commit();
  CHECK(ch.stats().events == 0);
}

TEST_CASE("memory channel: takes may outlive the channel, callbacks may destroy it") {
  std::optional<Take> survivor;
  {
    TestLoop l;
    {
      MemoryChannel ch({}, l.context());
      Cursor& c = ch.cursor("sink");
      REQUIRE(ch.put(makeBatch(0, 2)));
      survivor = c.take(1, kAll);
    }
    CHECK(names(*survivor) == expected(0, 1));  // the batch is shared, still readable
  }
  survivor->commit();  // harmless, and frees the detached cursor
  survivor.reset();

  TestLoop l;
  auto ch = std::make_shared<MemoryChannel>(MemoryChannelConfig{}, l.context());
  Cursor& c = ch->cursor("sink");
  int ready = 0;
  c.setOnReady([&] {
    ++ready;
    ch.reset();  // e.g. a reload that replaces the channel
  });
  CHECK_FALSE(c.take(kAll, kAll));
  ch->cursor("other").setOnReady([&ready] { ready += 100; });
  CHECK_FALSE(ch->cursor("other").take(kAll, kAll));
  REQUIRE(ch->put(makeBatch(0, 1)));
  l.run();
  CHECK(ready % 100 == 1);  // the other cursor's callback may have run first, not after
  CHECK_FALSE(ch);
}

TEST_CASE("memory channel: metrics") {
  TestLoop l;
  auto metrics = std::make_shared<MetricSet>("CHANNEL", "mem");
  {
    MemoryChannel ch(bounds(10, 1 << 20), l.context(metrics));
    Cursor& c = ch.cursor("sink");
    REQUIRE(ch.put(makeBatch(0, 4)));
    CHECK_FALSE(ch.put(makeBatch(4, 7)));
    CHECK(c.take(kAll, kAll).events() == 4);  // destroyed at once: rolled back
    Take t = c.take(3, kAll);
    t.commit();

    CHECK(sample(*metrics, "EventPutAttemptCount") == 11);
    CHECK(sample(*metrics, "EventPutSuccessCount") == 4);
    CHECK(sample(*metrics, "PutRefusedCount") == 1);
    CHECK(sample(*metrics, "EventTakeAttemptCount") == 2);
    CHECK(sample(*metrics, "EventTakeSuccessCount") == 7);
    CHECK(sample(*metrics, "RollbackCount") == 1);
    CHECK(sample(*metrics, "CommitCount") == 1);
    CHECK(sample(*metrics, "ChannelSize") == 1);
    CHECK(sample(*metrics, "ChannelBytes") == 8);
    CHECK(sample(*metrics, "ChannelCapacity") == 10);
    CHECK(sample(*metrics, "ChannelFillPercentage") == doctest::Approx(10.0));
  }
  // Gauges cleared when the channel dies; counters stay.
  for (const auto& s : metrics->samples()) CHECK(s.is_counter);
  CHECK(metrics->samples().size() == 7);

  // Without a MetricSet the channel makes its own.
  MemoryChannel own(bounds(4, 1024), l.context());
  REQUIRE(own.metrics());
  REQUIRE(own.put(makeBatch(0, 1, 512)));
  CHECK(sample(*own.metrics(), "ChannelFillPercentage") == doctest::Approx(50.0));
}

// Random puts, takes, commits and rollbacks on two consumers, checked against a simple model:
// per consumer the set of committed positions and the positions of each outstanding take.
TEST_CASE("memory channel: random operations agree with a model") {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    CAPTURE(seed);
    std::mt19937 rng(seed);
    auto pick = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    TestLoop l;
    const uint64_t max_events = 30, max_bytes = 600;
    MemoryChannel ch(bounds(max_events, max_bytes), l.context());

    std::vector<size_t> sizes;  // payload bytes by position
    struct Model {
      Cursor* cursor;
      std::set<uint64_t> committed;
      std::set<uint64_t> rolled_back;
      uint64_t next = 0;
      std::vector<std::pair<Take, std::vector<uint64_t>>> outstanding;
      uint64_t lowWater(uint64_t tail) const {
        for (uint64_t p = 0; p < tail; ++p) {
          if (!committed.count(p)) return p;
        }
        return tail;
      }
    };
    std::vector<Model> models(2);
    models[0].cursor = &ch.cursor("a");
    models[1].cursor = &ch.cursor("b");
    uint64_t tail = 0;
    auto head = [&] { return std::min(models[0].lowWater(tail), models[1].lowWater(tail)); };
    auto heldBytes = [&] {
      size_t sum = 0;
      for (uint64_t p = head(); p < tail; ++p) sum += sizes[p];
      return sum;
    };

    for (int step = 0; step < 400; ++step) {
      int op = pick(0, 9);
      Model& m = models[static_cast<size_t>(pick(0, 1))];
      if (op <= 2) {  // put
        int n = pick(1, 6);
        auto b = std::make_shared<Batch>();
        size_t bytes = 0;
        for (int i = 0; i < n; ++i) {
          std::string body = std::to_string(tail + static_cast<uint64_t>(i)) + ":";
          body.append(static_cast<size_t>(pick(0, 40)), 'x');
          b->add(body, 0);
          bytes += body.size();
        }
        uint64_t held = tail - head();
        bool room = held == 0 || (held + static_cast<uint64_t>(n) <= max_events &&
                                  heldBytes() + bytes <= max_bytes);
        CHECK(ch.hasRoom(static_cast<size_t>(n), bytes) == room);
        CHECK(ch.put(b) == room);
        if (room) {
          for (int i = 0; i < n; ++i) sizes.push_back((*b)[static_cast<size_t>(i)].body().size());
          tail += static_cast<uint64_t>(n);
        }
      } else if (op <= 5) {  // take
        size_t lim_events = static_cast<size_t>(pick(1, 8));
        size_t lim_bytes = static_cast<size_t>(pick(1, 150));
        Take t = m.cursor->take(lim_events, lim_bytes);
        std::vector<uint64_t> order(m.rolled_back.begin(), m.rolled_back.end());
        for (uint64_t p = m.next; p < tail; ++p) order.push_back(p);
        std::vector<uint64_t> got;
        t.forEach([&got](EventView ev) {
          std::string body(ev.body());
          got.push_back(std::stoull(body.substr(0, body.find(':'))));
        });
        CHECK(got.size() == t.events());
        REQUIRE(got.size() <= order.size());
        CHECK(std::equal(got.begin(), got.end(), order.begin()));
        CHECK(got.empty() == order.empty());
        size_t bytes = 0;
        for (auto p : got) bytes += sizes[p];
        CHECK(bytes == t.bytes());
        CHECK(got.size() <= lim_events);
        if (got.size() > 1) CHECK(bytes <= lim_bytes);
        if (!got.empty() && got.size() < order.size() && got.size() < lim_events) {
          CHECK(bytes + sizes[order[got.size()]] > lim_bytes);  // stopped only at a limit
        }
        for (auto p : got) {
          if (!m.rolled_back.erase(p)) m.next = std::max(m.next, p + 1);
        }
        if (t) m.outstanding.emplace_back(std::move(t), got);
      } else if (!m.outstanding.empty()) {  // settle a random outstanding take
        size_t i = static_cast<size_t>(pick(0, static_cast<int>(m.outstanding.size()) - 1));
        auto [t, got] = std::move(m.outstanding[i]);
        m.outstanding.erase(m.outstanding.begin() + static_cast<ptrdiff_t>(i));
        if (op <= 7) {
          t.commit();
          m.committed.insert(got.begin(), got.end());
        } else {
          t.rollback();
          m.rolled_back.insert(got.begin(), got.end());
        }
      }
      REQUIRE(ch.stats().events == tail - head());
      REQUIRE(ch.stats().bytes == heldBytes());
      for (const auto& mm : models) {
        uint64_t uncommitted = 0;
        for (uint64_t p = 0; p < tail; ++p) uncommitted += mm.committed.count(p) ? 0 : 1;
        REQUIRE(mm.cursor->lag() == uncommitted);
      }
    }
    // Drain both consumers completely.
    for (auto& m : models) {
      for (auto& [t, got] : m.outstanding) t.commit();
      m.outstanding.clear();
      while (Take t = m.cursor->take(kAll, kAll)) t.commit();
      CHECK(m.cursor->lag() == 0);
    }
    CHECK(ch.stats().events == 0);
    CHECK(ch.stats().bytes == 0);
  }
}

}  // namespace
}  // namespace sluice

namespace sluice {
TEST_CASE("memory: on_durable runs from the loop after an accepted put, never for a refused one") {
  TestLoop tl;
  auto ch = makeMemoryChannel(MemoryChannelConfig{1, 1 << 20}, tl.context());
  int durable = 0;
  PutOptions first;
  first.on_durable = [&] { ++durable; };
  REQUIRE(ch->put(makeBatch(0, 1), std::move(first)));
  CHECK(durable == 0);  // not inside put()
  PutOptions second;
  second.on_durable = [&] { durable += 100; };
  CHECK(!ch->put(makeBatch(1, 1), std::move(second)));  // full: refused
  tl.run();
  CHECK(durable == 1);
  CHECK(ch->positions().empty());
}
}  // namespace sluice

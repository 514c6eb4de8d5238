// Interceptors and the source router (selector, all-or-nothing put), with the real registry.

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <filesystem>
#include <set>

#include "agent/config.h"
#include "agent/source_runner.h"
#include "channels/file/file_channel.h"
#include "channels/memory/memory_channel.h"
#include "interceptors/interceptors.h"

using namespace sluice;

namespace {

const Registry& registry() {
  static Registry r = [] {
    Registry reg;
    registerBuiltins(reg);
    return reg;
  }();
  return r;
}

EnvLookup noEnv() {
  return [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
}

// Loads a one-source configuration whose source has these interceptors and selector.
std::optional<Config> load(const std::string& source_extra, Diagnostics& diag,
                           const std::string& channels = "[a]") {
  std::string text =
      "sources:\n  src:\n    type: exec\n    command: 'true'\n    channels: " + channels + "\n" +
      source_extra +
      "channels:\n  a: {type: memory}\n  b: {type: memory}\n"
      "sinks:\n  sa: {type: null, channel: a}\n  sb: {type: null, channel: b}\n";
  return loadConfigText(text, "t.yaml", registry(), diag, noEnv());
}

std::vector<InterceptorPtr> build(const Config& cfg) {
  std::vector<InterceptorPtr> out;
  for (const auto& is : cfg.sources[0].interceptors) {
    out.push_back(is.type->make_interceptor(is.config, BuildContext{}));
  }
  return out;
}

Batch lines(const std::vector<std::string>& bodies) {
  Batch b;
  for (const auto& s : bodies) b.add(s, 1'700'000'000'123'000'000);
  return b;
}

std::string header(const Batch& b, size_t i, const std::string& k) {
  auto v = b[i].header(k);
  return v ? std::string(*v) : "<none>";
}

}  // namespace

TEST_CASE("interceptors run in order: filter, extract, static, host, timestamp, uuid, remove") {
  Diagnostics diag("t.yaml");
  auto cfg = load(R"(    interceptors:
      - {type: regex_filter, regex: 'level=DEBUG', exclude: true}
      - {type: regex_extractor, regex: 'level=(?P<level>[A-Z]+)( user=(?P<user>\w+))?'}
      - {type: static, headers: {dc: eu-1, level: never}, preserve_existing: true}
      - {type: host, header: hostname}
      - {type: timestamp}
      - {type: timestamp, header: ts, format: iso8601}
      - {type: uuid}
      - {type: remove_header, names: [dc], pattern: '^host.*'}
)",
                  diag);
  INFO(diag.format());
  REQUIRE(cfg);
  auto chain = build(*cfg);
  REQUIRE(chain.size() == 8);
  Batch b = lines({"level=INFO user=ann hi", "level=DEBUG noise", "level=ERROR boom", "plain"});
  size_t dropped = 0;
  for (auto& i : chain) dropped += i->apply(b);
  CHECK(dropped == 1);
  REQUIRE(b.size() == 3);
  CHECK(b[0].body() == "level=INFO user=ann hi");
  CHECK(header(b, 0, "level") == "INFO");
  CHECK(header(b, 0, "user") == "ann");
  CHECK(header(b, 1, "level") == "ERROR");
  CHECK(header(b, 1, "user") == "<none>");      // optional group did not take part
  CHECK(header(b, 2, "level") == "never");      // static fills only what is missing
  CHECK(header(b, 0, "dc") == "<none>");        // removed by name
  CHECK(header(b, 0, "hostname") == "<none>");  // removed by pattern
  CHECK(header(b, 0, "timestamp") == "1700000000123");
  CHECK(header(b, 0, "ts") == "2023-11-14T22:13:20.123Z");
  std::set<std::string> ids;
  for (size_t i = 0; i < b.size(); ++i) ids.insert(header(b, i, "id"));
  CHECK(ids.size() == 3);
  CHECK(ids.begin()->size() == 36);
  // Idempotent: a second run changes nothing (uuid keeps the existing id).
  auto before = header(b, 0, "id");
  for (auto& i : chain) i->apply(b);
  CHECK(header(b, 0, "id") == before);
  CHECK(b.size() == 3);
}

TEST_CASE("host keeps a host the event already has (a syslog sender's) unless told otherwise") {
  // Given events of which one names its sender, as the syslog source does in `host`
  Diagnostics diag("t.yaml");
  auto keep = load("    interceptors: [{type: host}]\n", diag);
  auto overwrite = load("    interceptors: [{type: host, preserve_existing: false}]\n", diag);
  INFO(diag.format());
  REQUIRE(keep);
  REQUIRE(overwrite);
  for (bool preserve : {true, false}) {
    Batch b = lines({"from the terminal", "from here"});
    b.setHeader(0, "host", "pos-terminal-17");
    build(preserve ? *keep : *overwrite)[0]->apply(b);
    // Then by default the sender's name stays and only the event without one gets ours
    CHECK((header(b, 0, "host") == "pos-terminal-17") == preserve);
    CHECK(header(b, 1, "host") != "<none>");
    CHECK(header(b, 1, "host") != "pos-terminal-17");
  }
}

TEST_CASE("regex_filter without exclude keeps only matching events") {
  Diagnostics diag("t.yaml");
  auto cfg = load("    interceptors: [{type: regex_filter, regex: '^GET '}]\n", diag);
  REQUIRE(cfg);
  Batch b = lines({"GET /a", "POST /b", "GET /c"});
  CHECK(build(*cfg)[0]->apply(b) == 1);
  REQUIRE(b.size() == 2);
  CHECK(b[1].body() == "GET /c");
}

TEST_CASE("a bad pattern is a config error at the pattern's line and column") {
  Diagnostics diag("t.yaml");
  auto cfg = load("    interceptors:\n      - type: regex_filter\n        regex: 'a(b'\n", diag);
  CHECK(!cfg);
  auto text = diag.format();
  INFO(text);
  CHECK(text.find("t.yaml:8:16: error: sources.src.interceptors[0].regex: bad regular "
                  "expression 'a(b': missing ): a(b") != std::string::npos);
  Diagnostics diag2("t.yaml");
  CHECK(!load("    interceptors: [{type: hots}]\n", diag2));
  CHECK(diag2.format().find("unknown interceptor type 'hots' (did you mean 'host'?)") !=
        std::string::npos);
  Diagnostics diag3("t.yaml");
  CHECK(!load("    interceptors: [{type: host, heder: h}]\n", diag3));
  CHECK(diag3.format().find("unknown key 'heder' (did you mean 'header'?)") != std::string::npos);
}

TEST_CASE("selector configuration errors") {
  Diagnostics diag("t.yaml");
  CHECK(!load("    selector: {type: multiplexing, mapping: {X: [c]}}\n", diag));
  auto text = diag.format();
  CHECK(text.find("multiplexing needs 'header'") != std::string::npos);
  CHECK(text.find("sources.src.selector.mapping.X: channel 'c' is not among the source's "
                  "channels") != std::string::npos);
  Diagnostics diag2("t.yaml");
  CHECK(!load("    selector: {header: level}\n", diag2));
  CHECK(diag2.format().find("this selector is replicating") != std::string::npos);
}

namespace {

struct RouterFixture {
  uv_loop_t loop{};
  MetricsRegistry metrics;
  std::shared_ptr<MemoryChannel> a, b;
  std::unique_ptr<SourceRunner> runner;

  RouterFixture(const std::string& selector, uint64_t a_events, uint64_t b_events) {
    uv_loop_init(&loop);
    Diagnostics diag("t.yaml");
    auto cfg = load(selector, diag, "[a, b]");
    INFO(diag.format());
    REQUIRE(cfg);
    BuildContext ctx;
    ctx.loop = &loop;
    ctx.metrics = metrics.set("CHANNEL", "a");
    a = makeMemoryChannel(MemoryChannelConfig{a_events, 1 << 20}, ctx);
    ctx.metrics = metrics.set("CHANNEL", "b");
    b = makeMemoryChannel(MemoryChannelConfig{b_events, 1 << 20}, ctx);
    a->cursor("sa");
    b->cursor("sb");
    runner = std::make_unique<SourceRunner>(&loop, cfg->sources[0], nullptr,
                                            metrics.set("SOURCE", "src"), build(*cfg));
    runner->setChannels({a, b});
  }
  ~RouterFixture() {
    runner.reset();
    a.reset();
    b.reset();
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
  uint64_t counter(const std::string& name) {
    return metrics.set("SOURCE", "src")->counter(name).value();
  }
};

}  // namespace

TEST_CASE("replicating: all or nothing into required channels; optional ones may refuse") {
  RouterFixture f("", 10, 3);
  Batch batch = lines({"1", "2", "3"});
  CHECK(f.runner->offer(batch) == OfferResult::Accepted);
  CHECK(f.a->stats().events == 3);
  CHECK(f.b->stats().events == 3);
  // b is full now: the next batch goes into neither channel (parked), and the one after is
  // refused untouched so the source pauses.
  Batch second = lines({"4"});
  CHECK(f.runner->offer(second) == OfferResult::Accepted);
  CHECK(f.a->stats().events == 3);
  Batch third = lines({"5"});
  CHECK(f.runner->offer(third) == OfferResult::Full);
  CHECK(third.size() == 1);
  CHECK(f.counter("EventAcceptedCount") == 3);

  RouterFixture g("    selector: {optional: [b]}\n", 10, 3);
  Batch x = lines({"1", "2", "3"});
  Batch y = lines({"4", "5"});
  CHECK(g.runner->offer(x) == OfferResult::Accepted);
  CHECK(g.runner->offer(y) == OfferResult::Accepted);
  CHECK(g.a->stats().events == 5);
  CHECK(g.b->stats().events == 3);
  CHECK(g.counter("OptionalChannelFullCount") == 2);
}

TEST_CASE("multiplexing: each event lands in exactly the channel its header maps to") {
  RouterFixture f(R"(    interceptors: [{type: regex_extractor, regex: 'level=(?P<level>\w+)'}]
    selector:
      type: multiplexing
      header: level
      mapping: {ERROR: [b], AUDIT: [a, b]}
      default: [a]
)",
                  100, 100);
  Batch batch = lines({"level=INFO 1", "level=ERROR 2", "level=AUDIT 3", "nolevel 4"});
  CHECK(f.runner->offer(batch) == OfferResult::Accepted);
  auto bodies = [](MemoryChannel& ch, const std::string& consumer) {
    std::vector<std::string> out;
    auto take = ch.cursor(consumer).take(100, 1 << 20);
    take.forEach([&](const EventView& e) { out.emplace_back(e.body()); });
    return out;
  };
  CHECK(bodies(*f.a, "sa") ==
        std::vector<std::string>{"level=INFO 1", "level=AUDIT 3", "nolevel 4"});
  CHECK(bodies(*f.b, "sb") == std::vector<std::string>{"level=ERROR 2", "level=AUDIT 3"});
  CHECK(f.counter("EventAcceptedCount") == 4);

  // A required channel without room: nothing goes anywhere.
  RouterFixture g(
      "    selector: {type: multiplexing, header: h, mapping: {x: [b]}, default: [a]}\n", 100, 1);
  Batch first;
  first.setHeader(first.add("0", 0), "h", "x");
  CHECK(g.runner->offer(first) == OfferResult::Accepted);
  CHECK(g.b->stats().events == 1);  // b is now full
  Batch two;
  two.setHeader(two.add("1", 0), "h", "x");
  two.setHeader(two.add("2", 0), "h", "x");
  two.add("3", 0);
  CHECK(g.runner->offer(two) == OfferResult::Accepted);  // parked
  CHECK(g.a->stats().events == 0);
  CHECK(g.b->stats().events == 1);
}

TEST_CASE("positions reach every file channel of a source, also one routed no event") {
  // A source waits for its positions to be durable in the channels that keep them (spooldir
  // completes a file then): a file channel the selector sends no event must get them too.
  char tmpl[] = "/tmp/sluice-router-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  {
    uv_loop_t loop{};
    uv_loop_init(&loop);
    {
      MetricsRegistry metrics;
      Diagnostics diag("t.yaml");
      auto cfg = load(
          "    selector: {type: multiplexing, header: h, mapping: {x: [b]}, "
          "default: [a]}\n",
          diag, "[a, b]");
      REQUIRE(cfg);
      BuildContext ctx;
      ctx.loop = &loop;
      ctx.metrics = metrics.set("CHANNEL", "a");
      auto a = makeMemoryChannel(MemoryChannelConfig{1000, 1 << 20}, ctx);
      ctx.metrics = metrics.set("CHANNEL", "b");
      FileChannelConfig fc;
      fc.dir = dir;
      fc.min_free_bytes = 0;
      auto b = makeFileChannel(fc, ctx);
      REQUIRE(b);
      SourceRunner runner(&loop, cfg->sources[0], nullptr, metrics.set("SOURCE", "src"),
                          build(*cfg));
      CHECK(runner.keepsPositions() == std::optional<bool>(false));
      runner.setChannels({a, b});
      CHECK(runner.keepsPositions() == std::optional<bool>(true));
      Batch batch = lines({"1", "2"});  // no header h: both to a
      CHECK(runner.offerWithPositions(batch, {{"k", "v1"}}) == OfferResult::Accepted);
      CHECK(a->stats().events == 2);
      for (int i = 0; i < 2000 && runner.durablePositions("k").empty(); ++i) {
        uv_run(&loop, UV_RUN_ONCE);
      }
      CHECK(runner.durablePositions("k") == std::vector<std::string>{"v1"});
      CHECK(b->stats().events == 0);
      // Positions-only puts are coalesced: a burst of batches routed elsewhere writes the first
      // and the latest positions, not one record per batch.
      uint64_t bytes_before = b->stats().bytes;
      for (int i = 2; i <= 200; ++i) {
        Batch more = lines({"x"});
        std::string v = fmt::format("v{}", i);
        CHECK(runner.offerWithPositions(more, {{"k", v}}) == OfferResult::Accepted);
      }
      for (int i = 0; i < 2000 && runner.durablePositions("k") != std::vector<std::string>{"v200"};
           ++i) {
        uv_run(&loop, UV_RUN_ONCE);
      }
      CHECK(runner.durablePositions("k") == std::vector<std::string>{"v200"});
      CHECK(b->stats().bytes - bytes_before < 4 * 64);  // two small records, not 199
      runner.setChannels({});
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

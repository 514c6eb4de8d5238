#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/event.h"
#include "agent/metrics.h"

using namespace sluice;

TEST_CASE("a batch owns bodies and headers; header edits keep byte accounting right") {
  Batch b;
  auto i = b.add("hello", 42);
  auto j = b.add(std::string(1000, 'x'), 43);
  CHECK(b.size() == 2);
  CHECK(b.bytes() == 1005);
  b.setHeader(i, "host", "pos-1");
  b.setHeader(i, "file", "/var/log/a");
  b.setHeader(i, "host", "pos-22");  // replaces
  CHECK(b[i].header("host") == "pos-22");
  CHECK(b.bytes() == 1005 + 4 + 6 + 4 + 10);
  CHECK(b.removeHeader(i, "host"));
  CHECK(!b.removeHeader(i, "host"));
  CHECK(!b[i].header("host"));
  CHECK(b.bytes() == 1005 + 4 + 10);
  std::vector<std::string> keys;
  b[i].forEachHeader([&](std::string_view k, std::string_view) { keys.emplace_back(k); });
  CHECK(keys == std::vector<std::string>{"file"});
  b.setHeader(i, "z", "1");
  keys.clear();
  b[i].forEachHeader([&](std::string_view k, std::string_view) { keys.emplace_back(k); });
  CHECK(keys == std::vector<std::string>{"file", "z"});
  CHECK(b[j].body().size() == 1000);
  CHECK(b[i].timestampNs() == 42);

  // Moving never copies bodies: the moved-to batch sees the same bytes.
  const char* before = b[j].body().data();
  Batch moved = std::move(b);
  CHECK(moved[j].body().data() == before);
  CHECK(std::string(moved[i].body()) == "hello");
}

TEST_CASE("binary bodies are bytes, NULs included") {
  Batch b;
  std::string bin("a\0b\xff", 4);
  b.add(bin, 0);
  CHECK(b[0].body() == bin);
}

TEST_CASE("metrics render as Prometheus text and Flume-style JSON") {
  MetricsRegistry reg;
  auto s = reg.set("SOURCE", "web");
  s->counter("EventReceivedCount").inc(5);
  auto c = reg.set("CHANNEL", "mem");
  c->gauge("ChannelFillPercentage", [] { return 12.5; });
  auto prom = reg.renderPrometheus();
  CHECK(prom.find("# TYPE sluice_source_event_received_total counter\n"
                  "sluice_source_event_received_total{name=\"web\"} 5\n") != std::string::npos);
  CHECK(prom.find("sluice_channel_channel_fill_percentage{name=\"mem\"} 12.500000") !=
        std::string::npos);
  auto json = reg.renderJson();
  CHECK(json.find("\"SOURCE.web\": {\n    \"EventReceivedCount\": 5") != std::string::npos);
  reg.retainOnly({{"SOURCE", "web"}});
  CHECK(reg.renderJson().find("CHANNEL.mem") == std::string::npos);
}

TEST_CASE("a header value taken from the event's own body survives the arena growing") {
  Batch b;
  auto i = b.add("level=ERROR something long enough", 0);
  for (int round = 0; round < 50; ++round) {
    auto body = b[i].body();
    b.setHeader(i, fmt::format("k{}", round), body.substr(6, 5));
  }
  CHECK(b[i].header("k0") == "ERROR");
  CHECK(b[i].header("k49") == "ERROR");
}

// The stdout sink, writing to a temporary file instead of fd 1, on a real uv loop.

#include "sinks/stdout/stdout_sink.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "../sources/source_fixture.h"
#include "channels/memory/memory_channel.h"

namespace sluice {
namespace {

struct Context : SinkContext {
  uv_loop_t* loop_ptr;
  MetricSet set{"SINK", "out"};
  std::string sink_name = "out";
  explicit Context(uv_loop_t* l) : loop_ptr(l) {}
  uv_loop_t* loop() override { return loop_ptr; }
  MetricSet& metrics() override { return set; }
  const std::string& name() const override { return sink_name; }
  void wake() override {}
};

// Delivers `batch` to a stdout sink writing to a temporary file; returns the lines written.
std::vector<std::string> deliver(const std::string& format, const Batch& batch,
                                 test::TestLoop& loop, Context& ctx) {
  char path[] = "/tmp/sluice-stdout-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  unlink(path);
  BuildContext cctx{"c", loop.get(), nullptr, std::make_shared<MetricSet>("CHANNEL", "c")};
  auto channel = makeMemoryChannel(MemoryChannelConfig{}, cctx);
  REQUIRE(channel->put(std::make_shared<Batch>(batch)));
  Take take = channel->cursor("out").take(batch.size(), 1ull << 30);
  StdoutConfig cfg;
  cfg.format = format;
  SinkPtr sink = makeStdoutSink(cfg, fd);
  sink->start(ctx);
  std::optional<DeliveryResult> result;
  sink->deliver(take, [&](DeliveryResult r) { result = std::move(r); });
  REQUIRE(loop.runUntil([&] { return result.has_value(); }));
  CHECK(result->status == DeliveryStatus::Ok);
  bool stopped = false;
  sink->stop([&] { stopped = true; });
  CHECK(stopped);
  std::string text(static_cast<size_t>(lseek(fd, 0, SEEK_END)), '\0');
  REQUIRE(pread(fd, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size()));
  close(fd);
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    lines.push_back(text.substr(start, nl - start));
  }
  return lines;
}

TEST_CASE("stdout sink: json output replaces invalid UTF-8 and counts the events") {
  test::TestLoop loop;
  Context ctx(loop.get());
  Batch b;
  b.add("valid h\xC3\xA9llo", 1000);
  uint32_t e1 = b.add("latin-1 caf\xE9", 2000);  // invalid body
  b.setHeader(e1, "host", "web1");
  uint32_t e2 = b.add("fine body", 3000);
  b.setHeader(e2, "app", "bad\xFF value");  // invalid header value
  uint32_t e3 = b.add("fine body", 4000);
  b.setHeader(e3, "k\xC0\x80", "v");  // invalid header name
  auto lines = deliver("json", b, loop, ctx);
  REQUIRE(lines.size() == 4);
  for (const auto& line : lines) {
    CAPTURE(line);
    auto j = nlohmann::json::parse(line);  // valid JSON, valid UTF-8
    CHECK(j.contains("body"));
  }
  CHECK(nlohmann::json::parse(lines[0])["body"] == "valid h\xC3\xA9llo");
  CHECK(nlohmann::json::parse(lines[1])["body"] == "latin-1 caf\xEF\xBF\xBD");  // U+FFFD
  CHECK(nlohmann::json::parse(lines[2])["headers"]["app"] == "bad\xEF\xBF\xBD value");
  CHECK(ctx.set.counter("InvalidUtf8EventCount").value() == 3);
  CHECK(ctx.set.counter("WriteErrorCount").value() == 0);
}

TEST_CASE("stdout sink: text output writes bodies as they are, nothing counted") {
  test::TestLoop loop;
  Context ctx(loop.get());
  Batch b;
  b.add("caf\xE9", 1000);
  b.add("two", 2000);
  auto lines = deliver("text", b, loop, ctx);
  CHECK(lines == std::vector<std::string>{"caf\xE9", "two"});
  CHECK(ctx.set.counter("InvalidUtf8EventCount").value() == 0);
}

}  // namespace
}  // namespace sluice

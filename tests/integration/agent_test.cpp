// Integration tests: the real sluice binary, real child processes, real signals and HTTP.

#include <doctest/doctest.h>
#include <signal.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "harness.h"

using namespace sluice::test;
using namespace std::chrono_literals;

namespace {

std::string pipelineConfig(const std::string& command, const std::string& extra_source = "",
                           const std::string& sink_extra = "",
                           const std::string& agent_extra = "") {
  return "agent:\n  name: it\n  status: 127.0.0.1:0\n  drain_timeout: 20s\n" + agent_extra +
         "sources:\n  cmd:\n    type: exec\n    command: '" + command +
         "'\n    restart: false\n    batch_timeout: 20ms\n" + extra_source +
         "    channels: [mem]\n"
         "channels:\n  mem:\n    type: memory\n    max_events: 50000\n"
         "sinks:\n  out:\n    type: stdout\n    channel: mem\n" +
         sink_extra;
}

std::string expectedSeq(int from, int to) {
  std::string s;
  for (int i = from; i <= to; ++i) s += std::to_string(i) + "\n";
  return s;
}

uint64_t metric(const nlohmann::json& doc, const std::string& component, const std::string& name) {
  if (!doc.contains(component) || !doc[component].contains(name)) return 0;
  return doc[component][name].get<uint64_t>();
}

}  // namespace

TEST_CASE("1,000,000 lines through exec -> memory -> stdout arrive complete and in order") {
  TempDir dir;
  writeFile(dir.file("a.yaml"), pipelineConfig("seq 1 1000000"));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  const std::string expected = expectedSeq(1, 1000000);
  bool complete =
      waitFor([&] { return std::filesystem::file_size(agent.outPath()) >= expected.size(); }, 120s);
  INFO(agent.err());
  REQUIRE(complete);
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  CHECK(agent.out() == expected);  // every line, once, in order, nothing else
}

TEST_CASE("SIGTERM stops the source, drains the channel and exits 0") {
  TempDir dir;
  // A source that never ends by itself: numbers as fast as the pipe takes them.
  writeFile(dir.file("a.yaml"), pipelineConfig("seq 1 100000000"));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  REQUIRE(waitFor([&] { return std::filesystem::file_size(agent.outPath()) > 100000; }, 30s));
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  auto lines = splitLines(agent.out());
  REQUIRE(lines.size() > 1000);
  // Contiguous from 1: nothing accepted into the channel was lost or repeated at shutdown.
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i] != std::to_string(i + 1)) {
      FAIL("line " << i << " is '" << lines[i] << "'");
    }
  }
  CHECK(agent.err().find("drain timeout") == std::string::npos);
  CHECK(agent.err().find("stopped") != std::string::npos);
}

TEST_CASE("a configuration with errors is refused with file:line:col, by check and by run") {
  TempDir dir;
  writeFile(dir.file("bad.yaml"), R"(sources:
  cmd:
    type: exec
    command: "seq 1 3"
    channels: [mem]
    batch_sise: 10
channels:
  mem: {type: memory, max_bytes: lots}
sinks:
  out: {type: stdout, channel: memory}
)");
  for (const char* verb : {"check", "run"}) {
    auto r = runSluice({verb, "-c", dir.file("bad.yaml")}, dir);
    INFO(verb << ": " << r.err);
    CHECK(r.code == 1);
    CHECK(r.err.find(dir.file("bad.yaml") +
                     ":6:5: error: sources.cmd.batch_sise: unknown key 'batch_sise' (did you "
                     "mean 'batch_size'?)") != std::string::npos);
    CHECK(r.err.find(dir.file("bad.yaml") + ":8:34: error: channels.mem.max_bytes:") !=
          std::string::npos);
    CHECK(r.err.find(":10:3: error: sinks.out.channel: channel 'memory' is not defined") !=
          std::string::npos);
    CHECK(r.err.find("4 errors") != std::string::npos);
  }
  auto missing = runSluice({"check", "-c", dir.file("nope.yaml")}, dir);
  CHECK(missing.code == 1);
  CHECK(missing.err.find("cannot read the configuration file") != std::string::npos);
}

TEST_CASE("check refuses what run would: unreadable Kafka files, a data_dir it cannot use") {
  // Given a Kafka sink whose CA file is missing and a data_dir that is a regular file
  TempDir dir;
  writeFile(dir.file("plain"), "x");
  std::string kafka =
      "sinks:\n  k:\n    type: kafka\n    channel: mem\n"
      "    brokers: [127.0.0.1:9]\n    topic: t\n    tls: true\n"
      "    tls_ca_file: ca.pem\n";
  std::string rest =
      "sources:\n  cmd: {type: exec, command: 'true', channels: [mem]}\n"
      "channels:\n  mem: {type: memory}\n";
  writeFile(dir.file("bad.yaml"), "agent:\n  data_dir: " + dir.file("plain") + "\n" + rest + kafka);
  // Then check and run both refuse, each problem at its key
  for (const char* verb : {"check", "run"}) {
    auto r = runSluice({verb, "-c", dir.file("bad.yaml")}, dir);
    INFO(verb << ": " << r.err);
    CHECK(r.code == 1);
    CHECK(r.err.find(dir.file("bad.yaml") + ":14:18: error: sinks.k.tls_ca_file: cannot read '" +
                     dir.file("ca.pem") + "': No such file or directory") != std::string::npos);
    CHECK(r.err.find(dir.file("bad.yaml") + ":2:13: error: agent.data_dir: '" + dir.file("plain") +
                     "' is not a directory") != std::string::npos);
  }
  // And once the CA file exists next to the configuration (the working directory is elsewhere)
  // and data_dir is usable, check accepts it
  writeFile(dir.file("ca.pem"), "not really a certificate\n");
  writeFile(dir.file("good.yaml"), "agent:\n  data_dir: state\n" + rest + kafka);
  auto ok = runSluice({"check", "-c", dir.file("good.yaml")}, dir);
  INFO(ok.err);
  CHECK(ok.code == 0);
}

TEST_CASE("check accepts a good file; schema, version and usage errors") {
  TempDir dir;
  writeFile(dir.file("a.yaml"), pipelineConfig("true"));
  CHECK(runSluice({"check", "-c", dir.file("a.yaml")}, dir).code == 0);
  CHECK(runSluice({"check", "-c", SLUICE_SOURCE_DIR "/conf/demo.yaml"}, dir).code == 0);
  CHECK(runSluice({"check", "-c", SLUICE_SOURCE_DIR "/conf/sluice.yaml"}, dir).code == 0);
  auto schema = runSluice({"schema"}, dir);
  CHECK(schema.code == 0);
  for (const char* t : {"(type: exec)", "(type: memory)", "(type: stdout)", "(type: null)"}) {
    CHECK(schema.out.find(t) != std::string::npos);
  }
  for (const char* how : {"version", "--version"}) {
    auto version = runSluice({how}, dir);
    INFO(how << ": " << version.out);
    CHECK(version.code == 0);
    CHECK(version.out.rfind("sluice ", 0) == 0);
    CHECK(version.out.find(" (commit ") != std::string::npos);
    CHECK(version.out.find("\nlibrdkafka ") != std::string::npos);
    CHECK(version.out.find("\nlibuv ") != std::string::npos);
    CHECK(version.out.find("\nOpenSSL ") != std::string::npos);
  }
  auto top = runSluice({"top"}, dir);
  CHECK(top.code == 2);
  CHECK(top.err.find("sluice: unknown command 'top'") == 0);
  CHECK(top.err.find("commands: run, check, schema, version, channel") != std::string::npos);
  auto typo = runSluice({"--log-level", "debug", "chek"}, dir);
  CHECK(typo.err.find("unknown command 'chek' (did you mean 'check'?)") != std::string::npos);
  auto kafka = runSluice({"schema", "kafka"}, dir);
  CHECK(kafka.code == 0);
  CHECK(kafka.out.find("sinks.<name> (type: kafka)") == 0);
  CHECK(kafka.out.find("(type: exec)") == std::string::npos);
  auto nothing = runSluice({"schema", "kafak"}, dir);
  CHECK(nothing.code == 2);
  CHECK(nothing.err.find("no component type or section 'kafak' (did you mean 'kafka'?)") !=
        std::string::npos);
  auto directory = runSluice({"check", "-c", dir.path()}, dir);
  CHECK(directory.code == 1);
  CHECK(directory.err.find(dir.path() + ": error: cannot read the configuration file: it is a "
                                        "directory") != std::string::npos);
  CHECK(runSluice({"run", "--log-level", "loud"}, dir).code != 0);
}

TEST_CASE("/metrics, /metrics.json and /health show the counters moving") {
  TempDir dir;
  writeFile(dir.file("a.yaml"),
            pipelineConfig("while true; do echo tick; sleep 0.01; done", "", ""));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  int port = 0;
  REQUIRE(waitFor([&] { return (port = loggedStatusPort(agent)) != 0; }, 10s));
  std::string base = "http://127.0.0.1:" + std::to_string(port);
  uint64_t first = 0;
  REQUIRE(waitFor(
      [&] {
        auto r = httpGet(base + "/metrics.json");
        if (r.status != 200) return false;
        first = metric(nlohmann::json::parse(r.body), "SOURCE.cmd", "EventAcceptedCount");
        return first > 0;
      },
      10s));
  REQUIRE(waitFor(
      [&] {
        auto doc = nlohmann::json::parse(httpGet(base + "/metrics.json").body);
        return metric(doc, "SOURCE.cmd", "EventAcceptedCount") > first &&
               metric(doc, "SINK.out", "EventDrainSuccessCount") > first &&
               metric(doc, "CHANNEL.mem", "EventPutSuccessCount") > first &&
               metric(doc, "CHANNEL.mem", "EventTakeSuccessCount") > first &&
               doc["CHANNEL.mem"].contains("ChannelFillPercentage") &&
               doc["CHANNEL.mem"].contains("ChannelCapacity") &&
               doc["SOURCE.cmd"].contains("EventReceivedCount") &&
               doc["SINK.out"].contains("ConnectionFailedCount");
      },
      10s));
  auto prom = httpGet(base + "/metrics");
  CHECK(prom.status == 200);
  CHECK(prom.content_type.find("text/plain") == 0);
  CHECK(prom.body.find("# TYPE sluice_source_event_accepted_total counter") != std::string::npos);
  CHECK(prom.body.find("sluice_sink_event_drain_success_total{name=\"out\"}") != std::string::npos);
  auto health = httpGet(base + "/health");
  CHECK(health.status == 200);
  CHECK(nlohmann::json::parse(health.body)["status"] == "ok");
  CHECK(httpGet(base + "/nope").status == 404);
  agent.signal(SIGTERM);
  CHECK(agent.wait(30s) == 0);
}

TEST_CASE("SIGHUP: a broken file is refused and the agent keeps running; a fixed one applies") {
  TempDir dir;
  auto config = [](const std::string& word) {
    return pipelineConfig("while true; do echo " + word + "; sleep 0.01; done");
  };
  writeFile(dir.file("a.yaml"), config("alpha"));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  REQUIRE(waitFor([&] { return agent.out().find("alpha") != std::string::npos; }, 10s));

  // Given a broken file, when the agent is told to reload,
  writeFile(dir.file("a.yaml"), "sources:\n  cmd: {type: exec, command: x, channels: [nowhere]}\n");
  agent.signal(SIGHUP);
  // then it names the errors and keeps the running pipeline.
  REQUIRE(waitFor([&] { return agent.err().find("reload refused") != std::string::npos; }, 10s));
  CHECK(agent.err().find("a.yaml:2:3: error: sources.cmd.channels: channel 'nowhere'") !=
        std::string::npos);
  auto size_before = agent.out().size();
  CHECK(waitFor([&] { return agent.out().size() > size_before + 100; }, 10s));
  CHECK(agent.running());

  // Given a valid new file, the change applies.
  writeFile(dir.file("a.yaml"), config("bravo"));
  agent.signal(SIGHUP);
  REQUIRE(waitFor([&] { return agent.err().find("configuration reloaded") != std::string::npos; },
                  10s));
  CHECK(waitFor([&] { return agent.out().find("bravo") != std::string::npos; }, 10s));
  agent.signal(SIGTERM);
  CHECK(agent.wait(30s) == 0);
}

TEST_CASE("SIGHUP applied mid-stream loses and repeats nothing that was buffered") {
  TempDir dir;
  // Given a stream of numbers through a memory channel with a deliberately slow sink output,
  auto config = [](const std::string& format, const std::string& max_events) {
    std::string c = pipelineConfig("seq 1 400000", "", "    format: " + format + "\n");
    c.replace(c.find("max_events: 50000"), 17, "max_events: " + max_events);
    return c;
  };
  writeFile(dir.file("a.yaml"), config("text", "50000"));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path(), {}, 1024);
  REQUIRE(waitFor([&] { return std::filesystem::file_size(agent.outPath()) > 10000; }, 30s));
  // when the sink (new format) and the channel (new bound) change while events are buffered,
  writeFile(dir.file("a.yaml"), config("json", "60000"));
  agent.signal(SIGHUP);
  REQUIRE(waitFor([&] { return agent.err().find("configuration reloaded") != std::string::npos; },
                  10s));
  // then every number arrives exactly once, in order, part as text and the rest as JSON.
  auto numbers = [&] {
    std::vector<long> out;
    for (const auto& line : splitLines(agent.out())) {
      if (!line.empty() && line[0] == '{') {
        out.push_back(std::stol(nlohmann::json::parse(line)["body"].get<std::string>()));
      } else if (!line.empty()) {
        out.push_back(std::stol(line));
      }
    }
    return out;
  };
  REQUIRE(
      waitFor([&] { return agent.out().find("\"body\":\"400000\"") != std::string::npos; }, 60s));
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  auto got = numbers();
  REQUIRE(got.size() == 400000);
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != static_cast<long>(i + 1)) FAIL("position " << i << " holds " << got[i]);
  }
  CHECK(agent.out().find("{\"timestamp\"") != std::string::npos);
}

TEST_CASE("reloads in quick succession while deliveries are in flight lose and repeat nothing") {
  TempDir dir;
  auto config = [](const std::string& format, const std::string& batch) {
    return pipelineConfig("seq 1 200000", "",
                          "    format: " + format + "\n    batch_size: " + batch + "\n");
  };
  writeFile(dir.file("a.yaml"), config("text", "100"));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path(), {}, 1024);
  REQUIRE(waitFor([&] { return std::filesystem::file_size(agent.outPath()) > 10000; }, 30s));
  // Each reload replaces the sink group while the previous replacement may still be waiting
  // for its predecessor's write to finish.
  for (int i = 0; i < 4; ++i) {
    writeFile(dir.file("a.yaml"), config(i % 2 ? "text" : "json", std::to_string(101 + i)));
    agent.signal(SIGHUP);
    REQUIRE(waitFor(
        [&] {
          size_t n = 0, pos = 0;
          auto err = agent.err();
          while ((pos = err.find("configuration reloaded", pos)) != std::string::npos) ++n, ++pos;
          return n == static_cast<size_t>(i + 1);
        },
        10s));
  }
  REQUIRE(waitFor(
      [&] {
        auto out = agent.out();
        return out.find("\n200000\n") != std::string::npos ||
               out.find("\"body\":\"200000\"") != std::string::npos;
      },
      90s));
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  std::vector<long> got;
  for (const auto& line : splitLines(agent.out())) {
    if (line.empty()) continue;
    got.push_back(line[0] == '{' ? std::stol(nlohmann::json::parse(line)["body"].get<std::string>())
                                 : std::stol(line));
  }
  REQUIRE(got.size() == 200000);
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != static_cast<long>(i + 1)) FAIL("position " << i << " holds " << got[i]);
  }
  CHECK(agent.err().find("runtime error") == std::string::npos);
}

TEST_CASE("a reload that changes agent.status moves the status server") {
  TempDir dir;
  std::string base = pipelineConfig("while true; do echo x; sleep 0.05; done");
  writeFile(dir.file("a.yaml"), base);
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  int first = 0;
  REQUIRE(waitFor([&] { return (first = loggedStatusPort(agent)) != 0; }, 10s));
  CHECK(httpGet("http://127.0.0.1:" + std::to_string(first) + "/health").status == 200);
  std::string moved = base;
  moved.replace(moved.find("status: 127.0.0.1:0"), 19, "status: :0");
  writeFile(dir.file("a.yaml"), moved);
  agent.signal(SIGHUP);
  REQUIRE(waitFor([&] { return agent.err().find("configuration reloaded") != std::string::npos; },
                  10s));
  int second = 0;
  REQUIRE(waitFor(
      [&] {
        auto err = agent.err();
        auto pos = err.rfind("status server listening on :0 (port ");
        if (pos == std::string::npos) return false;
        second = std::stoi(err.substr(err.find("(port ", pos) + 6));
        return second != 0;
      },
      10s));
  CHECK(httpGet("http://127.0.0.1:" + std::to_string(second) + "/health").status == 200);
  CHECK(httpGet("http://127.0.0.1:" + std::to_string(first) + "/health").status == 0);
  agent.signal(SIGTERM);
  CHECK(agent.wait(30s) == 0);
}

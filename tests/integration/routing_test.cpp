// conf/routing.yaml end to end: interceptors, a multiplexing selector, a failover group and a
// load_balance group in one agent, through the real binary.

#include <doctest/doctest.h>
#include <signal.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "harness.h"

using namespace sluice::test;
using namespace std::chrono_literals;

TEST_CASE("conf/routing.yaml: every kept event is tagged and lands in exactly its channel") {
  TempDir dir;
  const int lines = 2000;  // levels cycle INFO, WARN, DEBUG, ERROR
  Process agent({sluiceBinary(), "run", "-c", SLUICE_SOURCE_DIR "/conf/routing.yaml"}, dir.path(),
                {{"ROUTING_LINES", std::to_string(lines)}, {"SLUICE_STATUS", "127.0.0.1:0"}});
  int port = 0;
  REQUIRE(waitFor([&] { return (port = loggedStatusPort(agent)) != 0; }, 10s));
  auto metrics = [&] {
    auto r = httpGet("http://127.0.0.1:" + std::to_string(port) + "/metrics.json");
    return r.status == 200 ? nlohmann::json::parse(r.body) : nlohmann::json::object();
  };
  auto value = [](const nlohmann::json& doc, const std::string& c, const std::string& n) {
    return doc.contains(c) && doc[c].contains(n) ? doc[c][n].get<uint64_t>() : 0;
  };
  nlohmann::json doc;
  REQUIRE(waitFor(
      [&] {
        doc = metrics();
        return value(doc, "SINK.main_a", "EventDrainSuccessCount") +
                       value(doc, "SINK.main_b", "EventDrainSuccessCount") ==
                   lines / 2 &&
               value(doc, "SINK.errors_console", "EventDrainSuccessCount") == lines / 4;
      },
      30s));
  // Intentional drops are counted, not lost.
  CHECK(value(doc, "SOURCE.app", "EventReceivedCount") == lines);
  CHECK(value(doc, "SOURCE.app", "EventFilteredCount") == lines / 4);
  CHECK(value(doc, "SOURCE.app", "EventAcceptedCount") == lines * 3 / 4);
  CHECK(value(doc, "CHANNEL.errors", "EventPutSuccessCount") == lines / 4);
  CHECK(value(doc, "CHANNEL.main", "EventPutSuccessCount") == lines / 2);
  // load_balance: both sinks of main got a share; the union is the whole (counted above).
  CHECK(value(doc, "SINK.main_a", "EventDrainSuccessCount") > 0);
  CHECK(value(doc, "SINK.main_b", "EventDrainSuccessCount") > 0);
  // failover: the healthy first sink took everything, the spare nothing.
  CHECK(value(doc, "SINK.errors_spare", "EventDrainSuccessCount") == 0);
  CHECK(doc.contains("SINKGROUP.main_out"));
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);

  // Every kept line was printed exactly once (ERROR by the failover group, INFO and WARN by
  // either sink of the load_balance group), each tagged, each with its own id.
  std::set<std::string> ids;
  std::map<int, int> seen;
  for (const auto& line : splitLines(agent.out())) {
    auto j = nlohmann::json::parse(line);
    const auto& h = j["headers"];
    int request = std::stoi(h["request"].get<std::string>());
    const char* expected[] = {"ERROR", "INFO", "WARN", "DEBUG"};
    CHECK(h["level"] == expected[request % 4]);
    CHECK(h.contains("host"));
    CHECK(h.contains("timestamp"));
    CHECK(h["datacenter"] == "eu-1");
    CHECK(!h.contains("service"));  // removed by remove_header
    CHECK(j["body"].get<std::string>().find("request=" + std::to_string(request) + " ") !=
          std::string::npos);
    ids.insert(h["id"].get<std::string>());
    ++seen[request];
  }
  CHECK(seen.size() == lines * 3 / 4);
  for (int r = 1; r <= lines; ++r) {
    int want = r % 4 == 3 ? 0 : 1;  // DEBUG lines were filtered out
    if (seen[r] != want) FAIL("request " << r << " printed " << seen[r] << " times");
  }
  CHECK(ids.size() == lines * 3 / 4);
}

// /health and the start and stop messages of the real binary: a syslog port in use fails the
// start, a sink that cannot deliver turns /health 503 naming it (and 200 again once it
// delivers), a channel below min_free_bytes is named and logged once, and a drain that times out
// says per channel what is kept and what is lost.

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "harness.h"
#include "kafka_harness.h"

using namespace sluice::test;
using namespace std::chrono_literals;

namespace {

// A listening TCP socket on a free loopback port, held until closed.
int holdTcpPort(int& port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  REQUIRE(listen(fd, 1) == 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

struct Health {
  long status = 0;
  nlohmann::json doc;
  // Whether a problem names this component.
  bool names(const std::string& component, const std::string& name) const {
    if (!doc.is_object() || !doc.contains("problems")) return false;
    for (const auto& p : doc["problems"]) {
      if (p["component"] == component && p["name"] == name) return true;
    }
    return false;
  }
};

Health health(const Process& agent) {
  Health h;
  int port = loggedStatusPort(agent);
  if (port == 0) return h;
  auto r = httpGet("http://127.0.0.1:" + std::to_string(port) + "/health");
  h.status = r.status;
  h.doc = nlohmann::json::parse(r.body, nullptr, false);
  return h;
}

size_t occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("health: a syslog port in use fails the start, naming the listener and the reason") {
  TempDir dir;
  int port = 0;
  int holder = holdTcpPort(port);
  writeFile(dir.file("a.yaml"),
            "sources:\n  sys:\n    type: syslog\n    listeners: [tcp://127.0.0.1:" +
                std::to_string(port) +
                "]\n    channels: [mem]\n"
                "channels:\n  mem:\n    type: memory\n"
                "sinks:\n  out:\n    type: stdout\n    channel: mem\n");
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  auto code = agent.wait(30s);
  INFO(agent.err());
  REQUIRE(code.has_value());
  CHECK(*code == 1);
  CHECK(agent.err().find("start failed: source sys: cannot listen on tcp://127.0.0.1:" +
                         std::to_string(port) + ": address already in use") != std::string::npos);
  close(holder);
}

TEST_CASE("health: after a reload a syslog port in use is retried and named, not fatal") {
  TempDir dir;
  int first = 0, second = 0;
  close(holdTcpPort(first));  // free a moment ago
  int holder = holdTcpPort(second);
  auto config = [&](int port) {
    return "agent:\n  status: 127.0.0.1:0\n"
           "sources:\n  sys:\n    type: syslog\n    listeners: [tcp://127.0.0.1:" +
           std::to_string(port) +
           "]\n    channels: [mem]\n"
           "channels:\n  mem:\n    type: memory\n"
           "sinks:\n  out:\n    type: stdout\n    channel: mem\n";
  };
  writeFile(dir.file("a.yaml"), config(first));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent.err());
  REQUIRE(waitFor([&] { return health(agent).status == 200; }, 20s));

  // The reload moves the listener to a port in use: the agent runs on and names the source.
  writeFile(dir.file("a.yaml"), config(second));
  agent.signal(SIGHUP);
  REQUIRE(waitFor(
      [&] {
        auto h = health(agent);
        return h.status == 503 && h.names("source", "sys");
      },
      20s));
  std::string reason;
  auto failing = health(agent);
  INFO(failing.doc.dump());
  for (const auto& p : failing.doc["problems"]) {
    if (p["component"] == "source") reason = p["reason"].get<std::string>();
  }
  CHECK(reason.find("address already in use") != std::string::npos);
  CHECK(agent.running());

  // Once the port is free the listener binds it and /health is 200 again.
  close(holder);
  REQUIRE(waitFor([&] { return health(agent).status == 200; }, 60s));
  CHECK(agent.err().find("listening again on tcp://127.0.0.1:" + std::to_string(second)) !=
        std::string::npos);
  agent.signal(SIGTERM);
  CHECK(agent.wait(30s) == 0);
}

TEST_CASE("health: a channel below min_free_bytes is named in /health and logged once") {
  TempDir dir;
  writeFile(dir.file("a.yaml"),
            "agent:\n  status: 127.0.0.1:0\n  data_dir: " + dir.file("data") +
                "\nsources:\n  numbers:\n    type: seq\n    count: 10\n    channels: [disk]\n"
                "channels:\n  disk:\n    type: file\n    min_free_bytes: 1000TiB\n"
                "sinks:\n  out:\n    type: stdout\n    channel: disk\n");
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent.err());
  REQUIRE(waitFor(
      [&] {
        auto h = health(agent);
        return h.status == 503 && h.names("channel", "disk");
      },
      20s));
  auto h = health(agent);
  CHECK(h.doc["status"] == "failing");
  CHECK(occurrences(agent.err(), "below min_free_bytes (1000.0 TiB)") == 1);
  agent.signal(SIGTERM);
  CHECK(agent.wait(30s).has_value());
}

TEST_CASE("health: a sink that cannot deliver while events wait is named; 200 once it delivers") {
  KafkaBroker broker;  // not started yet: its port refuses connections
  TempDir dir;
  writeFile(dir.file("a.yaml"),
            "agent:\n  status: 127.0.0.1:0\n  stall_after: 5s\n  drain_timeout: 5s\n"
            "sources:\n  numbers:\n    type: seq\n    count: 500\n    channels: [mem]\n"
            "channels:\n  mem:\n    type: memory\n"
            "sinks:\n  k:\n    type: kafka\n    channel: mem\n    brokers: [" +
                broker.bootstrap() +
                "]\n    topic: health\n    message_timeout: 3s\n    linger: 5ms\n");
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent.err());
  // Healthy at first: the events wait, but not yet for stall_after.
  REQUIRE(waitFor([&] { return health(agent).status == 200; }, 20s));
  REQUIRE(waitFor(
      [&] {
        auto h = health(agent);
        return h.status == 503 && h.names("sink", "k");
      },
      30s));
  CHECK(health(agent).doc["status"] == "failing");
  CHECK(agent.err().find("sink group k: 500 events wait and nothing was delivered") !=
        std::string::npos);

  REQUIRE_MESSAGE(broker.start(), broker.error());
  REQUIRE(waitFor([&] { return health(agent).status == 200; }, 120s));
  CHECK(health(agent).doc["problems"].empty());
  agent.signal(SIGTERM);
  CHECK(agent.wait(30s) == 0);
}

TEST_CASE("health: a drain that times out says what a file channel keeps and a memory one loses") {
  KafkaBroker broker;  // never started: nothing is delivered
  TempDir dir;
  std::string sink = "    type: kafka\n    brokers: [" + broker.bootstrap() +
                     "]\n    topic: t\n    message_timeout: 60s\n";
  writeFile(dir.file("a.yaml"),
            "agent:\n  status: 127.0.0.1:0\n  drain_timeout: 1s\n  data_dir: " + dir.file("data") +
                "\nsources:\n  numbers:\n    type: seq\n    count: 100\n"
                "    channels: [disk, mem]\n"
                "channels:\n  disk:\n    type: file\n    min_free_bytes: 1MiB\n"
                "  mem:\n    type: memory\n"
                "sinks:\n  a:\n" +
                sink + "    channel: disk\n  b:\n" + sink + "    channel: mem\n");
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent.err());
  REQUIRE(waitFor([&] { return agent.err().find("finished at 100") != std::string::npos; }, 20s));
  agent.signal(SIGTERM);
  CHECK(agent.wait(60s).has_value());
  CHECK(agent.err().find("100 stay in file channel 'disk' (" + dir.file("data")) !=
        std::string::npos);
  CHECK(agent.err().find("100 in memory channel 'mem' are lost") != std::string::npos);
  CHECK(agent.err().find("those in memory channels are lost") == std::string::npos);
}

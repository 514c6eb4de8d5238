// The main job of the product in one test: a growing file (tail) and syslog over TCP go through a
// file channel into a real Kafka broker; along the way the broker is stopped, the agent is killed
// with SIGKILL while the broker is down, the agent comes back before the broker does, and at the
// end a real consumer counts every line. (Named kafka* so that ctest runs it with the broker
// tests.)

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>

#include "harness.h"
#include "kafka_harness.h"

using namespace sluice::test;
using namespace std::chrono_literals;

namespace {

int freeTcpPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

// Sends RFC 5424 messages with bodies s-<first>..s-<last> over one TCP connection (connecting
// until the listener answers), then closes it. False when it could not connect or write.
bool sendSyslog(int port, int first, int last) {
  int fd = -1;
  bool connected = waitFor(
      [&] {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return true;
        ::close(fd);
        return false;
      },
      30s);
  if (!connected) return false;
  std::string out;
  for (int i = first; i <= last; ++i) {
    out += "<134>1 2026-11-25T10:00:00.000Z pos-17 till - - - s-" + std::to_string(i) + "\n";
  }
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::send(fd, out.data() + done, out.size() - done, MSG_NOSIGNAL);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return done == out.size();
}

nlohmann::json metrics(const Process& p) {
  int port = loggedStatusPort(p);
  if (port == 0) return nlohmann::json::object();
  auto r = httpGet("http://127.0.0.1:" + std::to_string(port) + "/metrics.json");
  auto doc = nlohmann::json::parse(r.body, nullptr, false);
  return r.status == 200 && !doc.is_discarded() ? doc : nlohmann::json::object();
}

uint64_t metric(const Process& p, const std::string& component, const std::string& name) {
  auto doc = metrics(p);
  if (!doc.contains(component) || !doc[component].contains(name)) return 0;
  return doc[component][name].is_number() ? doc[component][name].get<uint64_t>() : 0;
}

// Unique bodies of a topic and how many records repeated one.
struct Count {
  std::set<std::string> unique;
  size_t duplicates = 0;
};

Count countTopic(const std::string& bootstrap, const std::string& topic, size_t expect) {
  Count c;
  waitFor(
      [&] {
        auto got = consumeAll(bootstrap, topic, expect, 20s);
        c = {};
        for (const auto& r : got.records) {
          if (!c.unique.insert(r.body).second) ++c.duplicates;
        }
        return c.unique.size() >= expect;
      },
      240s);
  return c;
}

}  // namespace

TEST_CASE("kafka end to end: tail + syslog/TCP -> file channel -> Kafka, kill -9 and broker down") {
  KafkaBroker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  TempDir dir;
  const int port = freeTcpPort();
  REQUIRE(port > 0);
  const std::string tag = std::to_string(::getpid());
  const std::string tail_topic = "e2e-tail-" + tag, syslog_topic = "e2e-syslog-" + tag;
  const int tail_lines = 20000, syslog_each = 3000;
  writeFile(dir.file("app.log"), "");
  writeFile(dir.file("a.yaml"),
            "agent:\n  name: e2e\n  status: 127.0.0.1:0\n  drain_timeout: 10s\n  data_dir: " +
                dir.file("data") +
                "\n"
                "sources:\n"
                "  app:\n    type: tail\n    paths: [" +
                dir.file("app.log") +
                "]\n    poll_interval: 100ms\n    channels: [ch]\n"
                "    interceptors:\n      - type: static\n        headers: {kind: tail}\n"
                "  sys:\n    type: syslog\n    listeners: [tcp://127.0.0.1:" +
                std::to_string(port) +
                "]\n    channels: [ch]\n"
                "    interceptors:\n      - type: static\n        headers: {kind: syslog}\n"
                "channels:\n  ch:\n    type: file\n    segment_bytes: 1MiB\n"
                "    min_free_bytes: 1MiB\n"
                "sinks:\n  k:\n    type: kafka\n    channel: ch\n    brokers: [" +
                broker.bootstrap() + "]\n    topic: e2e-%{kind}-" + tag +
                "\n    acks: all\n    message_timeout: 3s\n    linger: 5ms\n"
                "    flush_timeout: 2s\n");

  auto agent = std::make_unique<Process>(
      std::vector<std::string>{sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  REQUIRE(waitFor([&] { return loggedStatusPort(*agent) != 0; }, 30s));

  // The application writes its log the whole time, whatever happens to the agent and the broker.
  std::atomic<bool> writer_done{false};
  std::thread writer([&] {
    std::ofstream log(dir.file("app.log"), std::ios::app);
    for (int i = 1; i <= tail_lines; ++i) {
      log << "t-" << i << "\n";
      if (i % 40 == 0) {
        log.flush();
        std::this_thread::sleep_for(10ms);  // the writer's pace, not a wait for the agent
      }
    }
    log.flush();
    writer_done = true;
  });

  // Phase 1: syslog messages, delivered while everything is up.
  REQUIRE(sendSyslog(port, 1, syslog_each));
  CHECK(countTopic(broker.bootstrap(), syslog_topic, syslog_each).unique.size() ==
        static_cast<size_t>(syslog_each));

  // The broker goes away; the agent keeps accepting into the file channel; then it is killed.
  REQUIRE_MESSAGE(broker.stop(), broker.error());
  REQUIRE(waitFor([&] { return metric(*agent, "CHANNEL.ch", "ChannelSize") > 0; }, 60s));
  agent->signal(SIGKILL);
  REQUIRE(agent->wait(10s) == 128 + SIGKILL);
  std::string first_err = agent->err();
  INFO(first_err);

  // The agent comes back before the broker does; syslog phase 2 goes to the new agent.
  agent = std::make_unique<Process>(
      std::vector<std::string>{sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent->err());
  REQUIRE(waitFor([&] { return loggedStatusPort(*agent) != 0; }, 30s));
  REQUIRE(sendSyslog(port, syslog_each + 1, 2 * syslog_each));
  REQUIRE_MESSAGE(broker.start(), broker.error());
  writer.join();
  REQUIRE(writer_done);

  Count tail = countTopic(broker.bootstrap(), tail_topic, tail_lines);
  Count sys = countTopic(broker.bootstrap(), syslog_topic, 2 * syslog_each);
  MESSAGE("end to end: tail " << tail.unique.size() << " unique of " << tail_lines << " ("
                              << tail.duplicates << " duplicates), syslog " << sys.unique.size()
                              << " unique of " << 2 * syslog_each << " (" << sys.duplicates
                              << " duplicates)");
  CHECK(tail.unique.size() == static_cast<size_t>(tail_lines));
  CHECK(sys.unique.size() == static_cast<size_t>(2 * syslog_each));
  for (int i = 1; i <= tail_lines; i += 997) CHECK(tail.unique.count("t-" + std::to_string(i)));
  CHECK(tail.unique.count("t-" + std::to_string(tail_lines)));
  CHECK(sys.unique.count("s-" + std::to_string(2 * syslog_each)));

  agent->signal(SIGTERM);
  CHECK(agent->wait(30s) == 0);
}

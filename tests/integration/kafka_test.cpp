// The kafka sink against a real Apache Kafka broker (scripts/kafka-broker.sh), checked by a real
// librdkafka consumer: every event arrives as sent (body, key, headers, topic from templates),
// a broker down for longer than the message timeout loses nothing with a file channel, and
// neither does kill -9 of the agent while the broker is down.

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "harness.h"
#include "kafka_harness.h"

using namespace sluice::test;
using namespace std::chrono_literals;

namespace {

// Every test gets topics of its own on the shared broker.
std::string uniqueName(const std::string& prefix) {
  static int counter = 0;
  return prefix + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

KafkaBroker& sharedBroker() {
  KafkaBroker* b = KafkaBroker::shared();
  REQUIRE_MESSAGE(b != nullptr, "the shared Kafka broker did not start (see stderr)");
  return *b;
}

std::string utcYear() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  return std::to_string(1900 + tm.tm_year);
}

nlohmann::json metricsOf(const Process& p) {
  int port = loggedStatusPort(p);
  if (port == 0) return nlohmann::json::object();
  auto r = httpGet("http://127.0.0.1:" + std::to_string(port) + "/metrics.json");
  if (r.status != 200) return nlohmann::json::object();
  auto doc = nlohmann::json::parse(r.body, nullptr, false);
  return doc.is_discarded() ? nlohmann::json::object() : doc;
}

uint64_t value(const nlohmann::json& doc, const std::string& c, const std::string& n) {
  if (!doc.contains(c) || !doc[c].contains(n) || !doc[c][n].is_number()) return 0;
  return doc[c][n].get<uint64_t>();
}

std::string channelYaml(const std::string& kind, const std::string& data_dir) {
  if (kind == "memory") return "  ch:\n    type: memory\n    max_events: 100000\n";
  (void)data_dir;
  return "  ch:\n    type: file\n    segment_bytes: 1MiB\n    min_free_bytes: 1MiB\n"
         "    checkpoint_interval: 100ms\n";
}

std::string agentYaml(const std::string& data_dir) {
  return "agent:\n  name: it\n  status: 127.0.0.1:0\n  drain_timeout: 10s\n  data_dir: " +
         data_dir + "\n";
}

// The numbers of the records' bodies; counts duplicates and records that are not numbers.
struct Tally {
  std::map<long, int> seen;
  size_t duplicates = 0;
  size_t foreign = 0;
  void add(const std::vector<KafkaRecord>& records) {
    for (const auto& r : records) {
      char* end = nullptr;
      long v = std::strtol(r.body.c_str(), &end, 10);
      if (r.body.empty() || *end != '\0') {
        ++foreign;
        continue;
      }
      if (++seen[v] > 1) ++duplicates;
    }
  }
  size_t missingOf(long n) const {
    size_t missing = 0;
    for (long v = 1; v <= n; ++v) missing += seen.count(v) == 0;
    return missing;
  }
};

}  // namespace

TEST_CASE("kafka harness: what kcat and librdkafka produce is read back exactly") {
  KafkaBroker& broker = sharedBroker();
  TempDir dir;
  const std::string topic = uniqueName("harness-");

  // An independent producer (kcat, acks=all) with keys and a header on every record.
  std::string lines;
  for (int i = 1; i <= 200; ++i) lines += fmt::format("k{}:v{}\n", i % 5, i);
  writeFile(dir.file("in.txt"), lines);
  Process kcat({"/usr/bin/kcat", "-P", "-b", broker.bootstrap(), "-t", topic, "-K:", "-H",
                "origin=kcat", "-X", "acks=all", "-l", dir.file("in.txt")},
               dir.path());
  REQUIRE(kcat.wait(60s) == 0);

  // And ours, with several headers and one record without a key.
  std::vector<KafkaProduceRecord> mine;
  for (int i = 201; i <= 300; ++i) {
    KafkaProduceRecord r;
    if (i != 300) r.key = fmt::format("k{}", i % 5);
    r.body = fmt::format("v{}", i);
    r.headers = {{"origin", "rdkafka"}, {"n", std::to_string(i)}, {"empty", ""}};
    mine.push_back(r);
  }
  REQUIRE(produceAll(broker.bootstrap(), topic, mine, 30s) == mine.size());

  auto got = consumeAll(broker.bootstrap(), topic, 300, 60s, 500ms);
  REQUIRE(got.error.empty());
  REQUIRE(got.records.size() == 300);
  std::set<std::string> bodies;
  std::set<int32_t> partitions;
  for (const auto& r : got.records) {
    INFO(r.body);
    bodies.insert(r.body);
    partitions.insert(r.partition);
    CHECK(r.topic == topic);
    CHECK(r.offset >= 0);
    int i = std::stoi(r.body.substr(1));
    if (i <= 200) {
      CHECK(r.key == fmt::format("k{}", i % 5));
      CHECK(r.headers == std::vector<std::pair<std::string, std::string>>{{"origin", "kcat"}});
    } else {
      CHECK(r.key == (i == 300 ? std::nullopt : std::optional(fmt::format("k{}", i % 5))));
      CHECK(r.header("origin") == "rdkafka");
      CHECK(r.header("n") == std::to_string(i));
      CHECK(r.header("empty") == "");
      CHECK(r.headers.size() == 3);
    }
  }
  CHECK(bodies.size() == 300);
  CHECK(partitions.size() == 3);  // the broker's num.partitions; keys spread over all of them
  CHECK(topicEndOffsetSum(broker.bootstrap(), topic, 10s) == 300);
}

TEST_CASE("kafka harness: the broker keeps its data across stop, kill -9 and start") {
  KafkaBroker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  const std::string topic = uniqueName("restart-");
  std::vector<KafkaProduceRecord> batch(500);
  for (size_t i = 0; i < batch.size(); ++i) batch[i].body = std::to_string(i + 1);
  REQUIRE(produceAll(broker.bootstrap(), topic, batch, 30s) == 500);

  REQUIRE_MESSAGE(broker.stop(), broker.error());
  CHECK_FALSE(broker.running());
  REQUIRE_MESSAGE(broker.start(), broker.error());
  CHECK(consumeAll(broker.bootstrap(), topic, 500, 60s).records.size() == 500);

  REQUIRE_MESSAGE(broker.kill(), broker.error());
  CHECK_FALSE(broker.running());
  REQUIRE_MESSAGE(broker.start(), broker.error());
  for (size_t i = 0; i < batch.size(); ++i) batch[i].body = std::to_string(i + 501);
  REQUIRE(produceAll(broker.bootstrap(), topic, batch, 30s) == 500);
  auto got = consumeAll(broker.bootstrap(), topic, 1000, 60s, 300ms);
  Tally t;
  t.add(got.records);
  CHECK(got.records.size() == 1000);
  CHECK(t.missingOf(1000) == 0);
  CHECK(t.duplicates == 0);
}

TEST_CASE("kafka sink: every event arrives as sent, through a memory and a file channel") {
  KafkaBroker& broker = sharedBroker();
  const std::string year = utcYear();
  const int n = 20000;
  for (std::string kind : {"memory", "file"}) {
    CAPTURE(kind);
    TempDir dir;
    const std::string env = uniqueName(kind == "memory" ? "mem" : "file");
    // Bodies "n=<i> user=u<i%7>"; the extractor makes headers n and user from them.
    writeFile(dir.file("gen.sh"), "awk 'BEGIN { for (i = 1; i <= " + std::to_string(n) +
                                      "; i++) printf \"n=%d user=u%d\\n\", i, i % 7 }'\n");
    std::string yaml = agentYaml(dir.file("data")) +
                       "sources:\n  gen:\n    type: exec\n    command: sh " + dir.file("gen.sh") +
                       "\n    restart: false\n    batch_timeout: 20ms\n    channels: [ch]\n"
                       "    interceptors:\n"
                       "      - type: static\n        headers: {env: " +
                       env +
                       ", origin: sluice}\n"
                       "      - type: regex_extractor\n"
                       "        regex: '^n=(?P<n>[0-9]+) user=(?P<user>u[0-9])$'\n"
                       "channels:\n" +
                       channelYaml(kind, dir.file("data")) +
                       "sinks:\n  k:\n    type: kafka\n    channel: ch\n    brokers: [" +
                       broker.bootstrap() +
                       "]\n    topic: 'it-%{env}-%Y'\n    key: '%{user}'\n"
                       "    record_headers: all\n    acks: all\n    linger: 5ms\n"
                       "    batch_size: 500\n    producer_batch_size: 2000\n";
    writeFile(dir.file("a.yaml"), yaml);
    auto check = runSluice({"check", "-c", dir.file("a.yaml")}, dir);
    REQUIRE_MESSAGE(check.code == 0, check.out << check.err);

    Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
    const std::string topic = "it-" + env + "-" + year;
    auto got = consumeAll(broker.bootstrap(), topic, n, 120s, 500ms);
    INFO(agent.err());
    REQUIRE(got.error.empty());
    agent.signal(SIGTERM);
    REQUIRE(agent.wait(30s) == 0);

    CHECK(got.records.size() == static_cast<size_t>(n));  // nothing lost, nothing twice
    std::vector<int> seen(n + 1, 0);
    size_t bad = 0;
    for (const auto& r : got.records) {
      int i = 0;
      char user[16] = {0};
      if (std::sscanf(r.body.c_str(), "n=%d user=%15s", &i, user) != 2 || i < 1 || i > n) {
        FAIL_CHECK("unexpected body '" << r.body << "'");
        continue;
      }
      ++seen[i];
      std::string u = fmt::format("u{}", i % 7);
      bool ok = r.body == "n=" + std::to_string(i) + " " + "user=" + u && r.topic == topic &&
                r.key == u && r.header("n") == std::to_string(i) && r.header("user") == u &&
                r.header("env") == env && r.header("origin") == "sluice";
      if (!ok && bad++ < 5) {
        std::string hs;
        for (const auto& [k, v] : r.headers) hs += k + "=" + v + " ";
        FAIL_CHECK("record " << r.partition << "/" << r.offset << " body '" << r.body << "' key '"
                             << r.key.value_or("<none>") << "' headers " << hs);
      }
    }
    CHECK(bad == 0);
    int missing = 0;
    for (int i = 1; i <= n; ++i) missing += seen[i] == 0;
    CHECK(missing == 0);
    // One key per user: each user's records all went to one partition.
    std::map<std::string, std::set<int32_t>> partitions_of_key;
    for (const auto& r : got.records) partitions_of_key[r.key.value_or("")].insert(r.partition);
    CHECK(partitions_of_key.size() == 7);
    for (const auto& [k, parts] : partitions_of_key) CHECK(parts.size() == 1);
  }
}

namespace {

// A seq source into a file channel and a kafka sink with a short message timeout.
std::string faultConfig(const TempDir& dir, const KafkaBroker& broker, const std::string& topic,
                        int n, int interval_ms) {
  return agentYaml(dir.file("data")) +
         "sources:\n  numbers:\n    type: seq\n    count: " + std::to_string(n) +
         "\n    batch_size: 100\n    interval: " + std::to_string(interval_ms) +
         "ms\n    channels: [ch]\n"
         "channels:\n" +
         channelYaml("file", dir.file("data")) +
         "sinks:\n  k:\n    type: kafka\n    channel: ch\n    brokers: [" + broker.bootstrap() +
         "]\n    topic: " + topic +
         "\n    acks: all\n    message_timeout: 3s\n    linger: 5ms\n    flush_timeout: 2s\n";
}

// Waits until the source has produced all `n` and the file channel holds nothing undelivered,
// stops the agent, then reads everything the topic has.
Tally drainAndCount(Process& agent, const KafkaBroker& broker, const std::string& topic, int n) {
  bool drained = waitFor(
      [&] {
        if (agent.err().find("finished at " + std::to_string(n)) == std::string::npos) {
          return false;
        }
        auto m = metricsOf(agent);
        return m.contains("CHANNEL.ch") && value(m, "CHANNEL.ch", "ChannelSize") == 0 &&
               value(m, "SINK.k", "EventsInFlight") == 0;
      },
      180s);
  Tally t;
  auto m = metricsOf(agent);
  INFO("metrics " << m.dump());
  REQUIRE(drained);
  CHECK(value(m, "SINK.k", "DeadLetterCount") == 0);  // timeouts are retried, not dead-lettered
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  int64_t stored = topicEndOffsetSum(broker.bootstrap(), topic, 30s);
  REQUIRE(stored >= n);
  auto got = consumeAll(broker.bootstrap(), topic, static_cast<size_t>(stored), 120s);
  REQUIRE(got.error.empty());
  CHECK(got.records.size() == static_cast<size_t>(stored));
  t.add(got.records);
  return t;
}

}  // namespace

TEST_CASE("kafka sink: a broker down longer than message_timeout loses nothing (file channel)") {
  KafkaBroker broker;  // this test stops it: not the shared one
  REQUIRE_MESSAGE(broker.start(), broker.error());
  TempDir dir;
  const std::string topic = uniqueName("fault-");
  const int n = 50000;  // 100 every 20 ms: about 10 s of stream
  writeFile(dir.file("a.yaml"), faultConfig(dir, broker, topic, n, 20));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent.err());

  // Mid-stream: some events are in Kafka, most are still to come.
  REQUIRE(waitFor([&] { return topicEndOffsetSum(broker.bootstrap(), topic, 2s) >= 1000; }, 60s));
  REQUIRE_MESSAGE(broker.stop(), broker.error());
  // Down for longer than message_timeout: the sink sees its produce requests time out.
  REQUIRE(waitFor([&] { return value(metricsOf(agent), "SINK.k", "ErrorTimeoutCount") > 0; }, 60s));
  CHECK(value(metricsOf(agent), "CHANNEL.ch", "ChannelSize") > 0);  // the outage is real
  REQUIRE_MESSAGE(broker.start(), broker.error());

  Tally t = drainAndCount(agent, broker, topic, n);
  MESSAGE("broker down "
          << "for longer than message_timeout: " << t.seen.size() << " unique of " << n << ", "
          << t.duplicates << " duplicates");
  CHECK(t.foreign == 0);
  CHECK(t.missingOf(n) == 0);
  CHECK(t.seen.size() == static_cast<size_t>(n));
}

TEST_CASE("kafka sink: kill -9 of the agent while the broker is down; all arrives after both") {
  KafkaBroker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  TempDir dir;
  const std::string topic = uniqueName("crash-");
  const int n = 50000;
  writeFile(dir.file("a.yaml"), faultConfig(dir, broker, topic, n, 20));

  std::string first_err;
  {
    Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
    REQUIRE(waitFor([&] { return topicEndOffsetSum(broker.bootstrap(), topic, 2s) >= 1000; }, 60s));
    REQUIRE_MESSAGE(broker.stop(), broker.error());
    // The source goes on into the file channel while nothing can be delivered.
    REQUIRE(waitFor(
        [&] { return agent.err().find("finished at " + std::to_string(n)) != std::string::npos; },
        60s));
    REQUIRE(
        waitFor([&] { return value(metricsOf(agent), "SINK.k", "ErrorTimeoutCount") > 0; }, 60s));
    CHECK(value(metricsOf(agent), "CHANNEL.ch", "ChannelSize") > 0);  // undelivered at the kill
    agent.signal(SIGKILL);
    REQUIRE(agent.wait(10s) == 128 + SIGKILL);
    first_err = agent.err();
  }
  INFO(first_err);

  // The agent comes back first, with the broker still down, then the broker.
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent.err());
  REQUIRE(waitFor([&] { return loggedStatusPort(agent) != 0; }, 30s));
  REQUIRE_MESSAGE(broker.start(), broker.error());
  Tally t = drainAndCount(agent, broker, topic, n);
  MESSAGE("kill -9 while the broker was down: " << t.seen.size() << " unique of " << n << ", "
                                                << t.duplicates << " duplicates");
  CHECK(t.foreign == 0);
  CHECK(t.missingOf(n) == 0);
  CHECK(t.seen.size() == static_cast<size_t>(n));
}

namespace {

// A seq source into a memory channel and a failover group of two kafka sinks: k1 (primary, at
// `primary`) and k2 (spare, at `spare`), both producing `topic`.
std::string failoverConfig(const TempDir& dir, const std::string& primary, const std::string& spare,
                           const std::string& topic, int n, int interval_ms) {
  auto sink = [&](const std::string& name, const std::string& brokers) {
    return "  " + name + ":\n    type: kafka\n    channel: ch\n    brokers: [" + brokers +
           "]\n    topic: " + topic +
           "\n    linger: 5ms\n    batch_size: 100\n"
           "    flush_timeout: 2s\n";
  };
  return agentYaml(dir.file("data")) +
         "sources:\n  numbers:\n    type: seq\n    count: " + std::to_string(n) +
         "\n    batch_size: 100\n    interval: " + std::to_string(interval_ms) +
         "ms\n    channels: [ch]\n" + "channels:\n" + channelYaml("memory", dir.file("data")) +
         "sinks:\n" + sink("k1", primary) + sink("k2", spare) +
         "sink_groups:\n  out:\n    processor: failover\n    sinks: [k1, k2]\n";
}

// Milliseconds since `start`.
long long msSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               start)
      .count();
}

Tally readAll(const std::string& bootstrap, const std::string& topic) {
  Tally t;
  int64_t stored = topicEndOffsetSum(bootstrap, topic, 30s);
  if (stored <= 0) return t;
  auto got = consumeAll(bootstrap, topic, static_cast<size_t>(stored), 120s);
  REQUIRE(got.error.empty());
  CHECK(got.records.size() == static_cast<size_t>(stored));
  t.add(got.records);
  return t;
}

}  // namespace

TEST_CASE("kafka failover: a primary dead from the start; the spare has everything within 5 s") {
  KafkaBroker& spare = sharedBroker();
  KafkaBroker dead;  // never started: a loopback port nothing listens on
  TempDir dir;
  const std::string topic = uniqueName("failover-dead-");
  const int n = 5000;
  writeFile(dir.file("a.yaml"),
            failoverConfig(dir, dead.bootstrap(), spare.bootstrap(), topic, n, 10));
  auto started = std::chrono::steady_clock::now();
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent.err());
  REQUIRE(waitFor([&] { return value(metricsOf(agent), "SINK.k2", "EventDrainSuccessCount") > 0; },
                  30s));
  auto first = msSince(started);
  MESSAGE("first events committed on the spare " << first << " ms after the agent started");
  CHECK(first < 5000);
  REQUIRE(waitFor(
      [&] {
        return value(metricsOf(agent), "SINK.k2", "EventDrainSuccessCount") ==
               static_cast<uint64_t>(n);
      },
      60s));
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  Tally t = readAll(spare.bootstrap(), topic);
  CHECK(t.foreign == 0);
  CHECK(t.duplicates == 0);
  CHECK(t.missingOf(n) == 0);
  CHECK(t.seen.size() == static_cast<size_t>(n));
}

TEST_CASE(
    "kafka failover: the primary killed mid-stream, then back; none lost, none twice on one") {
  KafkaBroker& spare = sharedBroker();
  KafkaBroker primary;  // this test kills it: not the shared one
  REQUIRE_MESSAGE(primary.start(), primary.error());
  TempDir dir;
  const std::string topic = uniqueName("failover-kill-");
  // 100 every 20 ms with no end: the stream goes on across the kill and the return.
  writeFile(dir.file("a.yaml"),
            failoverConfig(dir, primary.bootstrap(), spare.bootstrap(), topic, 0, 20));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  INFO(agent.err());
  auto committed = [&](const char* sink) {
    return value(metricsOf(agent), std::string("SINK.") + sink, "EventDrainSuccessCount");
  };
  REQUIRE(waitFor([&] { return committed("k1") >= 2000; }, 60s));
  CHECK(committed("k2") == 0);
  REQUIRE_MESSAGE(primary.kill(), primary.error());
  auto killed = std::chrono::steady_clock::now();
  REQUIRE(waitFor([&] { return committed("k2") > 0; }, 30s));
  auto took = msSince(killed);
  MESSAGE("first events committed on the spare " << took << " ms after the primary was killed");
  CHECK(took < 5000);

  // The primary is back (its data survives the kill): traffic returns to it.
  REQUIRE(waitFor([&] { return committed("k2") >= 2000; }, 60s));
  uint64_t k1_before = committed("k1");
  REQUIRE_MESSAGE(primary.start(), primary.error());
  auto back = std::chrono::steady_clock::now();
  REQUIRE(waitFor([&] { return committed("k1") > k1_before; }, 60s));
  MESSAGE("traffic back on the primary " << msSince(back) << " ms after its broker started");
  uint64_t k2_then = committed("k2");
  REQUIRE(waitFor([&] { return committed("k1") >= k1_before + 2000; }, 60s));
  CHECK(committed("k2") - k2_then < 2000);  // only what was in flight when it switched
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);

  Tally on_primary = readAll(primary.bootstrap(), topic);
  Tally on_spare = readAll(spare.bootstrap(), topic);
  long last = 0;
  for (const Tally* t : {&on_primary, &on_spare}) {
    if (!t->seen.empty()) last = std::max(last, t->seen.rbegin()->first);
  }
  MESSAGE("primary " << on_primary.seen.size() << ", spare " << on_spare.seen.size() << " of "
                     << last);
  CHECK(on_primary.duplicates == 0);
  CHECK(on_spare.duplicates == 0);
  CHECK(on_primary.foreign + on_spare.foreign == 0);
  size_t missing = 0;
  for (long v = 1; v <= last; ++v) {
    missing += on_primary.seen.count(v) == 0 && on_spare.seen.count(v) == 0;
  }
  CHECK(missing == 0);  // the source's every number up to the last, on one or both
}

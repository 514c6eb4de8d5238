// The kafka sink against librdkafka's mock cluster (rdkafka_mock.h), on a real uv loop.
// Every wait is bounded by a loop timer or a consumer poll timeout; nothing sleeps.

#include "sinks/kafka/kafka_sink.h"

#include <doctest/doctest.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "agent/config.h"
#include "channels/memory/memory_channel.h"
#include "sinks/kafka/template.h"

using namespace sluice;

namespace {

struct TestLoop {
  uv_loop_t loop{};
  TestLoop() { REQUIRE(uv_loop_init(&loop) == 0); }
  ~TestLoop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }
  // Runs the loop until pred holds; a timer bounds it so a broken sink fails, not hangs.
  bool runUntil(const std::function<bool()>& pred, uint64_t timeout_ms = 15000) {
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    bool timed_out = false;
    guard.data = &timed_out;
    uv_timer_start(
        &guard, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, timeout_ms, 0);
    while (!pred() && !timed_out) uv_run(&loop, UV_RUN_ONCE);
    uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
    uv_run(&loop, UV_RUN_NOWAIT);
    return pred();
  }
};

struct TestContext : SinkContext {
  uv_loop_t* loop_ptr;
  MetricSet set{"SINK", "k"};
  std::string sink_name = "k";
  int wakes = 0;
  explicit TestContext(uv_loop_t* l) : loop_ptr(l) {}
  uv_loop_t* loop() override { return loop_ptr; }
  MetricSet& metrics() override { return set; }
  const std::string& name() const override { return sink_name; }
  void wake() override { ++wakes; }
  uint64_t counter(const std::string& n) { return set.counter(n).value(); }
  double gauge(const std::string& n) {
    for (const auto& s : set.samples()) {
      if (s.name == n) return s.value;
    }
    return -1;
  }
};

// A mock cluster of `brokers` brokers, owned by a throwaway producer handle.
struct MockCluster {
  rd_kafka_t* owner = nullptr;
  rd_kafka_mock_cluster_t* mc = nullptr;
  explicit MockCluster(int brokers) {
    char errstr[256];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr);
    owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    REQUIRE(owner);
    mc = rd_kafka_mock_cluster_new(owner, brokers);
    REQUIRE(mc);
  }
  ~MockCluster() {
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(owner);
  }
  std::string bootstraps() const { return rd_kafka_mock_cluster_bootstraps(mc); }
  void topic(const std::string& name, int partitions, int replicas) {
    REQUIRE(rd_kafka_mock_topic_create(mc, name.c_str(), partitions, replicas) ==
            RD_KAFKA_RESP_ERR_NO_ERROR);
  }
};

struct Record {
  std::string topic, key, body;
  bool has_key = false;
  int32_t partition = 0;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Reads up to `want` records of `topic` (all partitions, from the beginning) within timeout_ms.
std::vector<Record> consume(const std::string& bootstraps, const std::string& topic, int partitions,
                            size_t want, int timeout_ms = 10000) {
  char errstr[256];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps.c_str(), errstr, sizeof errstr);
  rd_kafka_conf_set(conf, "group.id", "test", errstr, sizeof errstr);
  rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
  REQUIRE(rk);
  rd_kafka_poll_set_consumer(rk);
  auto* parts = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(parts, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  std::vector<Record> out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (out.size() < want && std::chrono::steady_clock::now() < deadline) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 100);
    if (!m) continue;
    if (!m->err) {
      Record r;
      r.topic = rd_kafka_topic_name(m->rkt);
      r.partition = m->partition;
      r.body.assign(static_cast<const char*>(m->payload), m->len);
      if (m->key) {
        r.has_key = true;
        r.key.assign(static_cast<const char*>(m->key), m->key_len);
      }
      rd_kafka_headers_t* hdrs = nullptr;
      if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char* name;
        const void* val;
        size_t size;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == 0; ++i) {
          r.headers.emplace_back(name, std::string(static_cast<const char*>(val), size));
        }
      }
      out.push_back(std::move(r));
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return out;
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("sluice-kafka-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

KafkaConfig parseConfig(const std::string& yaml) {
  Diagnostics diag("test.yaml");
  ConfigReader reader(diag, [](const std::string&) { return std::nullopt; });
  KafkaConfig cfg;
  kafkaOptionTable().fill(YAML::Load(yaml), cfg, reader, "sinks.k");
  INFO(diag.format());
  REQUIRE(!diag.hasErrors());
  return cfg;
}

constexpr int64_t kTime = 1795615705'000'000'000;  // 2026-11-25T14:08:25Z

// One sink on a loop, with a memory channel to take batches from.
struct Fixture {
  TestLoop tl;
  TestContext ctx{&tl.loop};
  TempDir dir;
  std::shared_ptr<MemoryChannel> channel;
  SinkPtr sink;
  std::vector<Take> takes;
  std::vector<std::optional<DeliveryResult>> results;

  // before_start_ms: the loop runs that long between creating the sink (its producer starts
  // connecting) and starting it, so librdkafka can queue errors before the sink listens.
  explicit Fixture(const std::string& yaml, uint64_t before_start_ms = 0) {
    MemoryChannelConfig mcfg;
    BuildContext cctx{"c", &tl.loop, nullptr, std::make_shared<MetricSet>("CHANNEL", "c")};
    channel = makeMemoryChannel(mcfg, cctx);
    AgentSettings agent;
    agent.data_dir = dir.path.string();
    // The sink's metrics go to the context's set (not owned by the shared_ptr).
    BuildContext sctx{"k", &tl.loop, &agent,
                      std::shared_ptr<MetricSet>(&ctx.set, [](MetricSet*) {})};
    sink = makeKafkaSink(parseConfig(yaml), sctx);
    REQUIRE(sink);
    if (before_start_ms > 0) tl.runUntil([] { return false; }, before_start_ms);
    sink->start(ctx);
  }
  ~Fixture() {
    bool stopped = false;
    sink->stop([&] { stopped = true; });
    CHECK(tl.runUntil([&] { return stopped; }));
    sink.reset();
    takes.clear();
    channel.reset();
  }

  // Puts `n` events (body "<prefix><i>", headers host and seq) and delivers them as one take.
  size_t deliver(size_t n, const std::string& prefix = "event-",
                 const std::function<void(Batch&, uint32_t)>& decorate = {}) {
    auto batch = std::make_shared<Batch>();
    for (size_t i = 0; i < n; ++i) {
      uint32_t e = batch->add(prefix + std::to_string(i), kTime);
      batch->setHeader(e, "host", "web1");
      batch->setHeader(e, "seq", std::to_string(i));
      if (decorate) decorate(*batch, e);
    }
    REQUIRE(channel->put(batch));
    takes.push_back(channel->cursor("k").take(n, 1ull << 30));
    REQUIRE(takes.back().events() == n);
    size_t slot = results.size();
    results.emplace_back();
    sink->deliver(takes.back(), [this, slot](DeliveryResult r) { results[slot] = std::move(r); });
    return slot;
  }
  bool waitFor(size_t slot, uint64_t timeout_ms = 15000) {
    return tl.runUntil([&] { return results[slot].has_value(); }, timeout_ms);
  }
  std::vector<nlohmann::json> deadLetters() {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir.path / "dead_letter" / "k.jsonl");
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
  }
};

std::string baseYaml(const MockCluster& mc, const std::string& extra = "") {
  return "brokers: " + mc.bootstraps() + "\n" + "linger: 1ms\nstats_interval: 100ms\n" + extra;
}

}  // namespace

TEST_CASE("kafka template: headers and UTC event time") {
  std::string error;
  auto t = EventTemplate::compile("logs-%{host}-%Y-%m-%d.%H%M%S-%%", error);
  REQUIRE(t);
  CHECK_FALSE(t->isLiteral());
  Batch b;
  uint32_t e = b.add("x", kTime + 999'000'000);
  b.setHeader(e, "host", "web1");
  std::string out;
  t->render(b[e], out);
  CHECK(out == "logs-web1-2026-11-25.140825-%");
  uint32_t e2 = b.add("y", kTime);
  t->render(b[e2], out);
  CHECK(out == "logs--2026-11-25.140825-%");  // a missing header renders empty

  auto lit = EventTemplate::compile("plain", error);
  REQUIRE(lit);
  CHECK(lit->isLiteral());

  CHECK_FALSE(EventTemplate::compile("a-%q", error));
  CHECK(error.find("%q") != std::string::npos);
  CHECK_FALSE(EventTemplate::compile("a-%{host", error));
  CHECK_FALSE(EventTemplate::compile("a-%", error));
  CHECK_FALSE(EventTemplate::compile("a-%{}", error));

  CHECK(isValidTopicName("logs-web1_2026.11"));
  CHECK_FALSE(isValidTopicName(""));
  CHECK_FALSE(isValidTopicName(".."));
  CHECK_FALSE(isValidTopicName("has space"));
  CHECK_FALSE(isValidTopicName(std::string(250, 'a')));
}

TEST_CASE("kafka options: contradictions and bad values are refused at config load") {
  Registry reg;
  registerMemoryChannel(reg);
  registerKafkaSink(reg);
  auto env = [](const std::string& n) -> std::optional<std::string> {
    if (n == "KAFKA_PW") return std::string("hunter2-secret");
    return std::nullopt;
  };
  auto load = [&](const std::string& sink_body, Diagnostics& diag) {
    std::string text =
        "channels:\n  c: {type: memory}\nsinks:\n  k:\n    type: kafka\n    channel: c\n" +
        sink_body;
    return loadConfigText(text, "test.yaml", reg, diag, env);
  };

  SUBCASE("a valid config loads") {
    Diagnostics diag("test.yaml");
    auto cfg = load(
        "    brokers: [a:9092, 'b:9092,c:9092']\n    topic: logs-%{host}\n"
        "    properties: {client.id: x, socket.keepalive.enable: 'true'}\n",
        diag);
    INFO(diag.format());
    CHECK_FALSE(diag.hasErrors());
    REQUIRE(cfg);
    const auto& k = std::any_cast<const KafkaConfig&>(cfg->sinks[0].config);
    CHECK(k.acks == "all");
    CHECK(k.idempotence);
    CHECK(k.producer_batch_size == 10000);
    CHECK(k.max_in_flight == 128);
    CHECK(k.linger == Millis(5));
    CHECK(k.message_timeout == Millis(300000));
    CHECK(k.queue_max_events == 100000);
  }
  SUBCASE("a property that a first-class option owns") {
    Diagnostics diag("test.yaml");
    load(
        "    brokers: [a:9092]\n    topic: t\n    properties:\n      acks: '1'\n"
        "      linger.ms: '3'\n",
        diag);
    REQUIRE(diag.hasErrors());
    auto text = diag.format();
    CHECK(text.find("sinks.k.properties.acks") != std::string::npos);
    CHECK(text.find("use that instead") != std::string::npos);
    CHECK(text.find("test.yaml:10:") != std::string::npos);  // points at the property
    CHECK(text.find("test.yaml:11:") != std::string::npos);
    CHECK(text.find("'linger.ms' is set by the option 'linger'") != std::string::npos);
  }
  SUBCASE("batch_size (events per take) and producer_batch_size (batch.num.messages) differ") {
    Diagnostics diag("test.yaml");
    auto cfg = load(
        "    brokers: [a:9092]\n    topic: t\n    batch_size: 250\n"
        "    producer_batch_size: 777\n",
        diag);
    INFO(diag.format());
    REQUIRE_FALSE(diag.hasErrors());
    REQUIRE(cfg);
    CHECK(cfg->sinks[0].common.batch_size == 250);
    CHECK(std::any_cast<const KafkaConfig&>(cfg->sinks[0].config).producer_batch_size == 777);

    Diagnostics diag2("test.yaml");
    auto cfg2 = load("    brokers: [a:9092]\n    topic: t\n    batch_size: 250\n", diag2);
    REQUIRE(cfg2);
    CHECK(cfg2->sinks[0].common.batch_size == 250);
    CHECK(std::any_cast<const KafkaConfig&>(cfg2->sinks[0].config).producer_batch_size == 10000);

    Diagnostics diag3("test.yaml");
    load("    brokers: [a:9092]\n    topic: t\n    properties: {batch.num.messages: '5'}\n", diag3);
    CHECK(diag3.format().find("'batch.num.messages' is set by the option 'producer_batch_size'") !=
          std::string::npos);
  }
  SUBCASE("the cross-key checks run through the registry's validation hook") {
    const ComponentType* type = reg.find(Kind::Sink, "kafka");
    REQUIRE(type);
    REQUIRE(type->validate);
    KafkaConfig bad;
    bad.topic = "t";
    bad.acks = "1";
    bad.idempotence = true;
    bool idempotence_refused = false;
    for (const auto& [key, msg] : type->validate(std::any(bad))) {
      idempotence_refused = idempotence_refused || key == "idempotence";
    }
    CHECK(idempotence_refused);
  }
  SUBCASE("every owned key is refused") {
    for (const char* key : {"enable.idempotence", "compression.codec", "bootstrap.servers",
                            "message.timeout.ms", "linger.ms", "batch.num.messages",
                            "queue.buffering.max.messages", "security.protocol", "sasl.password"}) {
      Diagnostics diag("test.yaml");
      load(std::string("    brokers: [a:9092]\n    topic: t\n    properties: {'") + key +
               "': '1'}\n",
           diag);
      INFO(key);
      CHECK(diag.hasErrors());
    }
  }
  SUBCASE("an unknown property, a bad template, a bad topic, idempotence without acks all") {
    Diagnostics diag("test.yaml");
    load(
        "    brokers: [a:9092]\n    topic: 'bad topic'\n    key: '%{k'\n    acks: '1'\n"
        "    properties: {no.such.thing: x}\n",
        diag);
    auto text = diag.format();
    CHECK(text.find("no property 'no.such.thing'") != std::string::npos);
    CHECK(text.find("sinks.k.topic") != std::string::npos);
    CHECK(text.find("sinks.k.key") != std::string::npos);
    CHECK(text.find("sinks.k.idempotence") != std::string::npos);
  }
  SUBCASE("secrets: both password and file refused; the value is never echoed") {
    Diagnostics diag("test.yaml");
    load(
        "    brokers: [a:9092]\n    topic: t\n    sasl_mechanism: PLAIN\n"
        "    sasl_username: u\n    sasl_password: ${KAFKA_PW}\n"
        "    sasl_password_file: /etc/pw\n    properties: {ssl.keystore.password: '${KAFKA_PW}'}\n",
        diag);
    auto text = diag.format();
    INFO(text);
    CHECK(text.find("sasl_password_file") != std::string::npos);
    CHECK(text.find("hunter2") == std::string::npos);
  }
  SUBCASE("SASL without credentials") {
    Diagnostics diag("test.yaml");
    load("    brokers: [a:9092]\n    topic: t\n    sasl_mechanism: SCRAM-SHA-512\n", diag);
    auto text = diag.format();
    CHECK(text.find("sinks.k.sasl_username") != std::string::npos);
    CHECK(text.find("sinks.k.sasl_password") != std::string::npos);
  }
}

TEST_CASE("kafka sink: a batch is Ok once the mock cluster acknowledged it; key/headers/body") {
  MockCluster mc(3);
  mc.topic("logs-web1-2026-11-25", 3, 3);
  Fixture f(baseYaml(mc, "topic: logs-%{host}-%Y-%m-%d\nkey: '%{seq}'\nrecord_headers: [seq]\n"));
  size_t a = f.deliver(50);
  size_t b = f.deliver(50, "second-");
  REQUIRE(f.waitFor(a));
  REQUIRE(f.waitFor(b));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  CHECK(f.results[b]->status == DeliveryStatus::Ok);
  CHECK(f.ctx.gauge("EventsInFlight") == 0);
  CHECK(f.ctx.gauge("DeliveryLatencyMs") > 0);
  CHECK(f.ctx.counter("DeadLetterCount") == 0);

  auto records = consume(mc.bootstraps(), "logs-web1-2026-11-25", 3, 100);
  REQUIRE(records.size() == 100);
  std::set<std::string> bodies;
  for (const auto& r : records) {
    bodies.insert(r.body);
    REQUIRE(r.has_key);
    REQUIRE(r.headers.size() == 1);  // only the listed header
    CHECK(r.headers[0].first == "seq");
    CHECK(r.headers[0].second == r.key);
    CHECK(r.body.substr(r.body.find('-') + 1) == r.key);
  }
  CHECK(bodies.size() == 100);
  CHECK(bodies.count("event-0") == 1);
  CHECK(bodies.count("second-49") == 1);

  // Per-broker connection state from librdkafka's statistics.
  CHECK(f.tl.runUntil([&] { return f.ctx.gauge("BrokersConnected") >= 1; }));
}

TEST_CASE("kafka sink: a topic template rendering several topics; no headers to copy") {
  // One topic handle per rendered name; events with none of the listed headers carry none.
  MockCluster mc(1);
  for (const char* t : {"g-0", "g-1", "g-2"}) mc.topic(t, 1, 1);
  Fixture f(baseYaml(mc, "topic: 'g-%{grp}'\nrecord_headers: [absent]\n"));
  auto grp = [](Batch& b, uint32_t e) { b.setHeader(e, "grp", std::to_string(e % 3)); };
  size_t a = f.deliver(30, "event-", grp);
  size_t b = f.deliver(30, "second-", grp);
  REQUIRE(f.waitFor(a));
  REQUIRE(f.waitFor(b));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  CHECK(f.results[b]->status == DeliveryStatus::Ok);
  for (int g = 0; g < 3; ++g) {
    auto records = consume(mc.bootstraps(), "g-" + std::to_string(g), 1, 20);
    REQUIRE(records.size() == 20);
    for (const auto& r : records) {
      CHECK(r.headers.empty());
      auto n = std::stoi(r.body.substr(r.body.find('-') + 1));
      CHECK(n % 3 == g);
    }
  }
}

TEST_CASE("kafka sink: JSON envelope and all headers") {
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  Fixture f(baseYaml(mc, "topic: t\nformat: json\n"));
  size_t a = f.deliver(3);
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  auto records = consume(mc.bootstraps(), "t", 1, 3);
  REQUIRE(records.size() == 3);
  auto j = nlohmann::json::parse(records[0].body);
  CHECK(j["body"] == "event-0");
  CHECK(j["headers"]["host"] == "web1");
  CHECK(j["timestamp"] == "2026-11-25T14:08:25.000Z");
  CHECK_FALSE(records[0].has_key);
  CHECK(records[0].headers.size() == 2);
  CHECK(f.ctx.counter("InvalidUtf8EventCount") == 0);

  // Bytes that are not UTF-8 (an overlong '/', a lone surrogate) become U+FFFD, counted.
  size_t b = f.deliver(2, "bad-\xC0\xAF-", [](Batch& batch, uint32_t e) {
    if (e == 1) batch.setHeader(e, "note", "\xED\xA0\x80");
  });
  REQUIRE(f.waitFor(b));
  CHECK(f.results[b]->status == DeliveryStatus::Ok);
  CHECK(f.ctx.counter("InvalidUtf8EventCount") == 2);
}

TEST_CASE("kafka sink: retriable produce errors are retried by librdkafka, then Ok") {
  MockCluster mc(3);
  mc.topic("t", 1, 3);
  Fixture f(baseYaml(mc, "topic: t\n"));
  rd_kafka_mock_push_request_errors(
      mc.mc, 0 /* Produce */, 3, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
      RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT);
  size_t a = f.deliver(20);
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  CHECK(consume(mc.bootstraps(), "t", 1, 20).size() == 20);
}

TEST_CASE("kafka sink: an unreachable cluster past message_timeout answers Retry") {
  MockCluster mc(3);
  mc.topic("t", 1, 3);
  for (int b = 1; b <= 3; ++b) rd_kafka_mock_broker_set_down(mc.mc, b);
  Fixture f(baseYaml(mc, "topic: t\nmessage_timeout: 700ms\n"));
  size_t a = f.deliver(10);
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Retry);
  CHECK(f.results[a]->error.find("timed out") != std::string::npos);
  CHECK(f.ctx.counter("RetryCount") == 1);
  CHECK(f.ctx.counter("ErrorTimeoutCount") == 10);
  CHECK(f.ctx.gauge("EventsInFlight") == 0);
  CHECK(f.ctx.counter("DeadLetterCount") == 0);
}

TEST_CASE("kafka sink: leader change and a broker down among three") {
  MockCluster mc(3);
  mc.topic("t", 3, 3);
  Fixture f(baseYaml(mc, "topic: t\n"));
  for (int p = 0; p < 3; ++p) rd_kafka_mock_partition_set_leader(mc.mc, "t", p, 1);
  size_t a = f.deliver(30);
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);

  // Leaders move to broker 2, then broker 1 goes down: deliveries continue through 2 and 3.
  for (int p = 0; p < 3; ++p) rd_kafka_mock_partition_set_leader(mc.mc, "t", p, 2);
  size_t b = f.deliver(30, "moved-");
  rd_kafka_mock_broker_set_down(mc.mc, 1);
  for (int p = 0; p < 3; ++p) rd_kafka_mock_partition_set_leader(mc.mc, "t", p, p == 0 ? 3 : 2);
  size_t c = f.deliver(30, "down-");
  REQUIRE(f.waitFor(b));
  REQUIRE(f.waitFor(c));
  CHECK(f.results[b]->status == DeliveryStatus::Ok);
  CHECK(f.results[c]->status == DeliveryStatus::Ok);
  CHECK(consume(mc.bootstraps(), "t", 3, 90).size() == 90);
}

TEST_CASE("kafka sink: a too-large event is dead-lettered and the rest commits") {
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  Fixture f(baseYaml(mc, "topic: t\nkey: '%{seq}'\nproperties: {message.max.bytes: '2000'}\n"));
  // An event whose body is larger than message.max.bytes, between two that fit.
  auto batch = std::make_shared<Batch>();
  batch->add("small-0", kTime);
  uint32_t big = batch->add(std::string(5000, 'x'), kTime);
  batch->setHeader(big, "seq", "big");
  batch->add("small-2", kTime);
  REQUIRE(f.channel->put(batch));
  f.takes.push_back(f.channel->cursor("k").take(100, 1ull << 30));
  REQUIRE(f.takes.back().events() == 3);
  f.results.emplace_back();
  size_t slot = f.results.size() - 1;
  f.sink->deliver(f.takes.back(), [&f, slot](DeliveryResult r) { f.results[slot] = r; });
  REQUIRE(f.waitFor(slot));
  CHECK(f.results[slot]->status == DeliveryStatus::Ok);
  CHECK(f.ctx.counter("DeadLetterCount") == 1);
  CHECK(f.ctx.counter("ErrorTooLargeCount") == 1);
  auto dl = f.deadLetters();
  REQUIRE(dl.size() == 1);
  CHECK(dl[0]["topic"] == "t");
  CHECK(dl[0]["key"] == "big");
  CHECK(dl[0]["body"] == std::string(5000, 'x'));
  CHECK(dl[0]["headers"]["seq"] == "big");
  CHECK(dl[0]["error"] == "MSG_SIZE_TOO_LARGE");
  CHECK_FALSE(dl[0]["reason"].get<std::string>().empty());
  auto records = consume(mc.bootstraps(), "t", 1, 2);
  REQUIRE(records.size() == 2);
  CHECK(records[0].body == "small-0");
  CHECK(records[1].body == "small-2");
}

TEST_CASE("kafka sink: the broker refusing a record as too large dead-letters it") {
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  Fixture f(baseYaml(mc, "topic: t\n"));
  rd_kafka_mock_push_request_errors(mc.mc, 0 /* Produce */, 1,
                                    RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
  size_t a = f.deliver(1);
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  CHECK(f.ctx.counter("DeadLetterCount") == 1);
  auto dl = f.deadLetters();
  REQUIRE(dl.size() == 1);
  CHECK(dl[0]["body"] == "event-0");
}

TEST_CASE("kafka sink: an invalid topic from the template is dead-lettered") {
  MockCluster mc(1);
  mc.topic("logs-web1", 1, 1);
  Fixture f(baseYaml(mc, "topic: logs-%{host}\n"));
  size_t a = f.deliver(4, "event-", [](Batch& b, uint32_t e) {
    if (e == 1) b.setHeader(e, "host", "bad host!");
  });
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  CHECK(f.ctx.counter("DeadLetterCount") == 1);
  CHECK(f.ctx.counter("ErrorInvalidTopicCount") == 1);
  auto dl = f.deadLetters();
  REQUIRE(dl.size() == 1);
  CHECK(dl[0]["topic"] == "logs-bad host!");
  CHECK(dl[0]["body"] == "event-1");
  CHECK(consume(mc.bootstraps(), "logs-web1", 1, 3).size() == 3);
}

TEST_CASE("kafka sink: a full local queue makes it not ready, then wakes the group") {
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  Fixture f(baseYaml(mc, "topic: t\nqueue_max_events: 5\n"));
  CHECK(f.sink->ready());
  CHECK(f.sink->maxInFlight() == 128);
  size_t a = f.deliver(40);
  CHECK_FALSE(f.sink->ready());  // 5 produced, 35 waiting for room
  CHECK(f.ctx.counter("QueueFullCount") == 1);
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  CHECK(f.sink->ready());
  CHECK(f.ctx.wakes == 1);
  auto records = consume(mc.bootstraps(), "t", 1, 40);
  REQUIRE(records.size() == 40);
  CHECK(records.front().body == "event-0");
  CHECK(records.back().body == "event-39");  // order kept across the pause
}

TEST_CASE("kafka sink: cancel answers unconfirmed deliveries Retry at once (shutdown)") {
  MockCluster mc(3);
  mc.topic("t", 1, 3);
  for (int b = 1; b <= 3; ++b) rd_kafka_mock_broker_set_down(mc.mc, b);
  Fixture f(baseYaml(mc, "topic: t\nmessage_timeout: 10min\n"));
  size_t a = f.deliver(10);
  size_t b = f.deliver(5);
  CHECK_FALSE(f.waitFor(a, 300));  // nothing can confirm them
  f.sink->cancel();
  REQUIRE(f.waitFor(a));
  REQUIRE(f.waitFor(b));
  CHECK(f.results[a]->status == DeliveryStatus::Retry);
  CHECK(f.results[b]->status == DeliveryStatus::Retry);
  CHECK(f.ctx.gauge("EventsInFlight") == 0);
  CHECK(f.ctx.counter("DeadLetterCount") == 0);
}

TEST_CASE("kafka sink: stop flushes and calls done; an empty take is Ok at once") {
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  auto f = std::make_unique<Fixture>(baseYaml(mc, "topic: t\n"));
  Take empty;
  bool answered = false;
  f->sink->deliver(empty, [&](DeliveryResult r) {
    answered = true;
    CHECK(r.status == DeliveryStatus::Ok);
  });
  CHECK(answered);
  size_t a = f->deliver(10);
  REQUIRE(f->waitFor(a));
  f.reset();  // stop() (the writer thread destroys the producer), then destruction; must not
              // hang or leak
}

TEST_CASE("kafka sink: stop with deliveries open waits flush_timeout, then answers them Retry") {
  // The group stops a sink only once nothing is outstanding; called directly with deliveries
  // open, the sink still loses none: acknowledged in time → Ok, past the deadline → Retry.
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  SUBCASE("acknowledged within the deadline") {
    Fixture f(baseYaml(mc, "topic: t\nflush_timeout: 10s\n"));
    size_t a = f.deliver(20);
    bool stopped = false;
    f.sink->stop([&] {
      stopped = true;
      CHECK(f.results[a].has_value());  // answered before the stop completes
    });
    REQUIRE(f.tl.runUntil([&] { return stopped; }));
    REQUIRE(f.results[a].has_value());
    CHECK(f.results[a]->status == DeliveryStatus::Ok);
    CHECK(consume(mc.bootstraps(), "t", 1, 20).size() == 20);
  }
  SUBCASE("the broker is down: purged at the deadline") {
    rd_kafka_mock_broker_set_down(mc.mc, 1);
    Fixture f(baseYaml(mc, "topic: t\nflush_timeout: 300ms\nmessage_timeout: 60s\n"));
    size_t a = f.deliver(20);
    bool stopped = false;
    auto t0 = std::chrono::steady_clock::now();
    f.sink->stop([&] { stopped = true; });
    REQUIRE(f.tl.runUntil([&] { return stopped; }));
    auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(waited >= std::chrono::milliseconds(250));
    CHECK(waited < std::chrono::seconds(10));
    REQUIRE(f.results[a].has_value());
    CHECK(f.results[a]->status == DeliveryStatus::Retry);
    CHECK(f.ctx.counter("RetryCount") == 1);
  }
}

TEST_CASE("kafka sink: a fatal producer error recreates the producer; nothing is lost") {
  // librdkafka refuses every message after a fatal error (an idempotent producer that lost its
  // sequence) until the producer is replaced; the sink replaces it and delivers again.
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  Fixture f(baseYaml(mc, "topic: t\n"));
  size_t a = f.deliver(10, "before-");
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  auto recreated = [&] { return f.ctx.counter("ProducerRecreateCount") == 1 && f.sink->ready(); };
  SUBCASE("between deliveries") {
    REQUIRE(raiseKafkaFatalErrorForTest(*f.sink));
    REQUIRE(f.tl.runUntil(recreated));
    CHECK(f.ctx.wakes >= 1);  // the group is told the sink takes batches again
  }
  SUBCASE("a delivery open at the fatal error is answered Retry, not lost") {
    rd_kafka_mock_broker_set_down(mc.mc, 1);
    size_t b = f.deliver(10, "open-");
    CHECK_FALSE(f.waitFor(b, 300));
    REQUIRE(raiseKafkaFatalErrorForTest(*f.sink));
    REQUIRE(f.waitFor(b));
    CHECK(f.results[b]->status == DeliveryStatus::Retry);
    REQUIRE(f.tl.runUntil(recreated));
    rd_kafka_mock_broker_set_up(mc.mc, 1);
  }
  CHECK(f.ctx.counter("ErrorFatalCount") >= 1);
  CHECK(f.ctx.gauge("EventsInFlight") == 0);
  size_t c = f.deliver(10, "after-");
  REQUIRE(f.waitFor(c));
  CHECK(f.results[c]->status == DeliveryStatus::Ok);
  auto records = consume(mc.bootstraps(), "t", 1, 20);
  REQUIRE(records.size() == 20);
  CHECK(records.front().body == "before-0");
  CHECK(records.back().body == "after-9");
}

TEST_CASE("kafka sink: errors queued before start do not keep reports from being served") {
  // librdkafka signals its queue only when it goes from empty to not empty: errors queued while
  // the sink was not started yet must be served at start, or no signal would ever come again
  // (a safety poll every second backs this up).
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  rd_kafka_mock_broker_set_down(mc.mc, 1);
  Fixture f(baseYaml(mc, "topic: t\n"), 500);
  rd_kafka_mock_broker_set_up(mc.mc, 1);
  size_t a = f.deliver(10);
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  CHECK(f.ctx.counter("ErrorTransportCount") > 0);  // the early errors were served
}

TEST_CASE("kafka sink: a producer that cannot be recreated does not hold deliveries or the stop") {
  // After a fatal error the old producer is destroyed and its deliveries answered Retry at once,
  // even when no new producer can be made (here: its password file is gone); a stop then
  // completes instead of waiting for the replacement.
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  TempDir secrets;
  auto pw = secrets.path / "pw";
  std::ofstream(pw) << "secret\n";
  auto f = std::make_unique<Fixture>(baseYaml(mc,
                                              "topic: t\nsasl_mechanism: PLAIN\n"
                                              "sasl_username: u\nsasl_password_file: " +
                                                  pw.string() + "\n"));
  size_t a = f->deliver(10);  // the mock cluster does not speak SASL: it stays open
  CHECK_FALSE(f->waitFor(a, 300));
  std::filesystem::remove(pw);
  REQUIRE(raiseKafkaFatalErrorForTest(*f->sink));
  REQUIRE(f->waitFor(a, 5000));
  CHECK(f->results[a]->status == DeliveryStatus::Retry);
  CHECK_FALSE(f->sink->ready());
  bool stopped = false;
  auto t0 = std::chrono::steady_clock::now();
  f->sink->stop([&] { stopped = true; });
  REQUIRE(f->tl.runUntil([&] { return stopped; }, 4000));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(4));
  CHECK(f->ctx.counter("ProducerRecreateCount") == 0);
}

TEST_CASE("kafka sink: unavailable within unready_after of losing its broker, then back") {
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  Fixture f(baseYaml(mc, "topic: t\nunready_after: 500ms\nmessage_timeout: 10min\n"));
  size_t a = f.deliver(5);
  REQUIRE(f.waitFor(a));
  CHECK(f.results[a]->status == DeliveryStatus::Ok);
  CHECK(f.sink->available());

  // Given the broker goes down: the sink says unavailable after unready_after (plus at most a
  // check interval and the time librdkafka takes to notice), and wakes the group.
  int wakes = f.ctx.wakes;
  rd_kafka_mock_broker_set_down(mc.mc, 1);
  uv_update_time(&f.tl.loop);
  uint64_t down_at = uv_now(&f.tl.loop);
  REQUIRE(f.tl.runUntil([&] { return !f.sink->available(); }, 10000));
  uint64_t took = uv_now(&f.tl.loop) - down_at;
  MESSAGE("unavailable " << took << " ms after the broker went down");
  CHECK(took >= 450);
  CHECK(took < 3000);
  CHECK(f.ctx.wakes > wakes);

  // A delivery it holds is let go: answered Retry at once, not after message_timeout.
  size_t b = f.deliver(5);
  CHECK(f.sink->abandon());
  REQUIRE(f.waitFor(b, 2000));
  CHECK(f.results[b]->status == DeliveryStatus::Retry);
  CHECK(f.ctx.gauge("EventsInFlight") == 0);

  // The broker is back: available again, and deliveries go through.
  wakes = f.ctx.wakes;
  rd_kafka_mock_broker_set_up(mc.mc, 1);
  REQUIRE(f.tl.runUntil([&] { return f.sink->available(); }, 15000));
  CHECK(f.ctx.wakes > wakes);
  size_t c = f.deliver(5);
  REQUIRE(f.waitFor(c));
  CHECK(f.results[c]->status == DeliveryStatus::Ok);
}

TEST_CASE("kafka sink: a broker dead from the start makes it unavailable after unready_after") {
  MockCluster mc(1);
  mc.topic("t", 1, 1);
  rd_kafka_mock_broker_set_down(mc.mc, 1);
  Fixture f(baseYaml(mc, "topic: t\nunready_after: 300ms\nmessage_timeout: 10min\n"));
  uv_update_time(&f.tl.loop);
  uint64_t start = uv_now(&f.tl.loop);
  CHECK(f.sink->available());  // it has unready_after to connect
  REQUIRE(f.tl.runUntil([&] { return !f.sink->available(); }, 10000));
  uint64_t took = uv_now(&f.tl.loop) - start;
  CHECK(took >= 250);
  CHECK(took < 3000);
}

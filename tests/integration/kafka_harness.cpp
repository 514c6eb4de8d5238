#include "kafka_harness.h"

#include <arpa/inet.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <thread>

namespace sluice::test {

namespace {

std::string scriptPath() { return std::string(SLUICE_SOURCE_DIR) + "/scripts/kafka-broker.sh"; }

int freeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

std::string tail(const std::string& text, size_t max_lines) {
  size_t pos = text.size();
  for (size_t lines = 0; pos > 0 && lines <= max_lines; --pos) {
    if (text[pos - 1] == '\n') ++lines;
  }
  return text.substr(pos);
}

// The broker of `dir` when it runs (its pid file names a live kafka.Kafka process), else 0.
pid_t livePid(const std::string& dir) {
  std::string pid_text = readFile(dir + "/pid");
  if (pid_text.empty()) return 0;
  pid_t pid = static_cast<pid_t>(std::atol(pid_text.c_str()));
  if (pid <= 0) return 0;
  std::string proc = "/proc/" + std::to_string(pid);
  std::string cmdline = readFile(proc + "/cmdline");
  if (cmdline.find("kafka.Kafka") == std::string::npos) return 0;
  std::string status = readFile(proc + "/status");
  auto state = status.find("State:");
  if (state != std::string::npos && status.find('Z', state) < status.find('\n', state)) return 0;
  return pid;
}

void noLog(const rd_kafka_t*, int, const char*, const char*) {}
void noError(rd_kafka_t*, int, const char*, void*) {}

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaDeleter>;

// A client with quiet logs; `settings` are librdkafka properties. Sets `error` on failure.
KafkaPtr makeClient(rd_kafka_type_t type,
                    const std::vector<std::pair<std::string, std::string>>& settings,
                    std::string& error,
                    void (*dr_msg_cb)(rd_kafka_t*, const rd_kafka_message_t*, void*) = nullptr,
                    void* opaque = nullptr) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  for (const auto& [k, v] : settings) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      error = k + ": " + err;
      rd_kafka_conf_destroy(conf);
      return nullptr;
    }
  }
  rd_kafka_conf_set_log_cb(conf, noLog);
  rd_kafka_conf_set_error_cb(conf, noError);
  if (dr_msg_cb) rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
  if (opaque) rd_kafka_conf_set_opaque(conf, opaque);
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof(err));
  if (!rk) {
    error = std::string("rd_kafka_new: ") + err;
    rd_kafka_conf_destroy(conf);
    return nullptr;
  }
  return KafkaPtr(rk);
}

// The partition ids of `topic` once it exists with a leader for each, or empty at `deadline`.
std::vector<int32_t> waitForPartitions(rd_kafka_t* rk, const std::string& topic,
                                       std::chrono::steady_clock::time_point deadline) {
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  std::vector<int32_t> ids;
  while (std::chrono::steady_clock::now() < deadline) {
    const rd_kafka_metadata_t* md = nullptr;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR && md) {
      bool ready = false;
      for (int t = 0; t < md->topic_cnt; ++t) {
        const auto& mt = md->topics[t];
        if (topic != mt.topic || mt.err != RD_KAFKA_RESP_ERR_NO_ERROR || mt.partition_cnt == 0) {
          continue;
        }
        ready = true;
        ids.clear();
        for (int p = 0; p < mt.partition_cnt; ++p) {
          if (mt.partitions[p].leader < 0) ready = false;
          ids.push_back(mt.partitions[p].id);
        }
      }
      rd_kafka_metadata_destroy(md);
      if (ready) break;
    }
    ids.clear();
    // Not a busy loop: the metadata request above waits for the broker; this only paces a
    // broker that answers "unknown topic" at once.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  rd_kafka_topic_destroy(rkt);
  return ids;
}

}  // namespace

KafkaBroker::KafkaBroker() : port_(freeLoopbackPort()) {}

KafkaBroker::~KafkaBroker() {
  // Direct SIGKILL rather than the script: this also runs at exit for the shared broker.
  pid_t pid = livePid(dir_.path());
  if (pid > 0) {
    ::kill(pid, SIGKILL);
    waitFor([&] { return livePid(dir_.path()) == 0; }, std::chrono::seconds(10));
  }
}

bool KafkaBroker::run(const std::vector<std::string>& args, std::chrono::seconds timeout) {
  std::vector<std::string> argv{"/bin/bash", scriptPath()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::map<std::string, std::string> env{{"KAFKA_OWNER_PID", std::to_string(::getpid())}};
  // C1 only: the broker starts about three times faster on a loaded machine, and a test's
  // load is small. The benchmark runs the broker with the full JIT.
  if (!std::getenv("KAFKA_JVM_OPTS")) env["KAFKA_JVM_OPTS"] = "-XX:TieredStopAtLevel=1";
  Process p(argv, dir_.path(), env);
  auto code = p.wait(timeout);
  if (code == 0) {
    error_.clear();
    return true;
  }
  if (!code) p.signal(SIGKILL);
  error_ = "kafka-broker.sh " + args.front() + " " +
           (code ? "exited " + std::to_string(*code) : std::string("timed out")) + ":\n" + p.err() +
           "\nbroker.log (tail):\n" + tail(readFile(logPath()), 30);
  return false;
}

bool KafkaBroker::start() {
  if (port_ == 0) {
    error_ = "no free loopback port";
    return false;
  }
  return run({"start", dir_.path(), std::to_string(port_)}, std::chrono::seconds(150));
}

bool KafkaBroker::stop() { return run({"stop", dir_.path()}, std::chrono::seconds(60)); }

bool KafkaBroker::kill() { return run({"kill", dir_.path()}, std::chrono::seconds(30)); }

bool KafkaBroker::running() const { return livePid(dir_.path()) != 0; }

KafkaBroker* KafkaBroker::shared() {
  static std::unique_ptr<KafkaBroker> broker;
  static bool tried = false;
  if (!tried) {
    tried = true;
    auto b = std::make_unique<KafkaBroker>();
    if (b->start()) {
      broker = std::move(b);
    } else {
      std::cerr << "shared Kafka broker did not start: " << b->error() << "\n";
    }
  }
  return broker.get();
}

std::optional<std::string> KafkaRecord::header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return std::nullopt;
}

ConsumeResult consumeAll(const std::string& bootstrap, const std::string& topic, size_t count,
                         std::chrono::milliseconds timeout, std::chrono::milliseconds settle) {
  ConsumeResult result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::random_device rd;
  KafkaPtr rk = makeClient(RD_KAFKA_CONSUMER,
                           {{"bootstrap.servers", bootstrap},
                            {"group.id", "sluice-test-" + std::to_string(rd())},
                            {"enable.auto.commit", "false"},
                            {"enable.auto.offset.store", "false"},
                            {"auto.offset.reset", "earliest"},
                            {"allow.auto.create.topics", "false"},
                            {"reconnect.backoff.max.ms", "500"},
                            {"topic.metadata.refresh.interval.ms", "1000"}},
                           result.error);
  if (!rk) return result;
  rd_kafka_poll_set_consumer(rk.get());
  auto partitions = waitForPartitions(rk.get(), topic, deadline);
  if (partitions.empty()) {
    result.error = "topic " + topic + " did not appear with leaders for its partitions";
    return result;
  }
  rd_kafka_topic_partition_list_t* list =
      rd_kafka_topic_partition_list_new(static_cast<int>(partitions.size()));
  for (int32_t id : partitions) {
    rd_kafka_topic_partition_list_add(list, topic.c_str(), id)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_resp_err_t err = rd_kafka_assign(rk.get(), list);
  rd_kafka_topic_partition_list_destroy(list);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    result.error = std::string("assign: ") + rd_kafka_err2str(err);
    return result;
  }
  std::optional<std::chrono::steady_clock::time_point> settle_until;
  while (true) {
    auto now = std::chrono::steady_clock::now();
    if (!settle_until && result.records.size() >= count) settle_until = now + settle;
    if (settle_until && now >= *settle_until) break;
    if (now >= deadline) break;
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk.get(), 100);
    if (!m) continue;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      KafkaRecord r;
      r.topic = rd_kafka_topic_name(m->rkt);
      r.partition = m->partition;
      r.offset = m->offset;
      if (m->key) r.key = std::string(static_cast<const char*>(m->key), m->key_len);
      if (m->payload) r.body.assign(static_cast<const char*>(m->payload), m->len);
      rd_kafka_headers_t* hdrs = nullptr;
      if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs) {
        const char* name = nullptr;
        const void* value = nullptr;
        size_t size = 0;
        for (size_t i = 0;
             rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
             ++i) {
          r.headers.emplace_back(
              name, value ? std::string(static_cast<const char*>(value), size) : std::string());
        }
      }
      result.records.push_back(std::move(r));
    }
    // Errors (a broker restarting, end of partition) are transient for this reader.
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk.get());
  return result;
}

int64_t topicEndOffsetSum(const std::string& bootstrap, const std::string& topic,
                          std::chrono::milliseconds timeout) {
  std::string error;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  KafkaPtr rk = makeClient(RD_KAFKA_CONSUMER,
                           {{"bootstrap.servers", bootstrap},
                            {"group.id", "sluice-test-watermarks"},
                            {"allow.auto.create.topics", "false"}},
                           error);
  if (!rk) return -1;
  auto partitions = waitForPartitions(rk.get(), topic, deadline);
  if (partitions.empty()) return -1;
  int64_t sum = 0;
  for (int32_t id : partitions) {
    int64_t low = 0, high = 0;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return -1;
    if (rd_kafka_query_watermark_offsets(rk.get(), topic.c_str(), id, &low, &high,
                                         static_cast<int>(left.count())) !=
        RD_KAFKA_RESP_ERR_NO_ERROR) {
      return -1;
    }
    sum += high;
  }
  return sum;
}

namespace {
void countDelivered(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
  if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) ++*static_cast<std::atomic<size_t>*>(opaque);
}
}  // namespace

size_t produceAll(const std::string& bootstrap, const std::string& topic,
                  const std::vector<KafkaProduceRecord>& records,
                  std::chrono::milliseconds timeout) {
  std::string error;
  std::atomic<size_t> delivered{0};
  KafkaPtr rk = makeClient(RD_KAFKA_PRODUCER,
                           {{"bootstrap.servers", bootstrap},
                            {"acks", "all"},
                            {"enable.idempotence", "true"},
                            {"linger.ms", "5"},
                            {"message.timeout.ms", std::to_string(timeout.count())}},
                           error, countDelivered, &delivered);
  if (!rk) return 0;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const auto& r : records) {
    rd_kafka_headers_t* hdrs = rd_kafka_headers_new(r.headers.size());
    for (const auto& [k, v] : r.headers) {
      rd_kafka_header_add(hdrs, k.data(), static_cast<ssize_t>(k.size()), v.data(),
                          static_cast<ssize_t>(v.size()));
    }
    const char* key = r.key ? r.key->data() : nullptr;
    size_t key_len = r.key ? r.key->size() : 0;
    while (true) {
      rd_kafka_resp_err_t err =
          rd_kafka_producev(rk.get(), RD_KAFKA_V_TOPIC(topic.c_str()),
                            RD_KAFKA_V_VALUE(const_cast<char*>(r.body.data()), r.body.size()),
                            RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_HEADERS(hdrs),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) break;  // librdkafka owns the headers now
      if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || std::chrono::steady_clock::now() >= deadline) {
        rd_kafka_headers_destroy(hdrs);
        return delivered;
      }
      rd_kafka_poll(rk.get(), 50);  // serves delivery reports, freeing queue space
    }
    rd_kafka_poll(rk.get(), 0);
  }
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  rd_kafka_flush(rk.get(), static_cast<int>(std::max<int64_t>(left.count(), 0)));
  return delivered;
}

}  // namespace sluice::test

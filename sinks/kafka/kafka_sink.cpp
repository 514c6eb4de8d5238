#include "sinks/kafka/kafka_sink.h"

#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "agent/utf8.h"
#include "sinks/kafka/template.h"

namespace sluice {

namespace {

// ---------------------------------------------------------------------------------------------
// Configuration helpers

std::vector<std::string> splitBrokers(const std::vector<std::string>& in) {
  std::vector<std::string> out;
  for (const auto& item : in) {
    std::string cur;
    for (char c : item + ",") {
      if (c == ',') {
        size_t b = cur.find_first_not_of(" \t");
        size_t e = cur.find_last_not_of(" \t");
        if (b != std::string::npos) out.push_back(cur.substr(b, e - b + 1));
        cur.clear();
      } else {
        cur += c;
      }
    }
  }
  return out;
}

// librdkafka properties a first-class option owns, and which option that is.
const std::map<std::string, std::string>& ownedProperties() {
  static const std::map<std::string, std::string> owned = {
      {"bootstrap.servers", "brokers"},
      {"metadata.broker.list", "brokers"},
      {"acks", "acks"},
      {"request.required.acks", "acks"},
      {"enable.idempotence", "idempotence"},
      {"compression.codec", "compression"},
      {"compression.type", "compression"},
      {"batch.num.messages", "producer_batch_size"},
      {"linger.ms", "linger"},
      {"queue.buffering.max.ms", "linger"},
      {"message.timeout.ms", "message_timeout"},
      {"delivery.timeout.ms", "message_timeout"},
      {"queue.buffering.max.messages", "queue_max_events"},
      {"statistics.interval.ms", "stats_interval"},
      {"security.protocol", "tls / sasl_mechanism"},
      {"sasl.mechanism", "sasl_mechanism"},
      {"sasl.mechanisms", "sasl_mechanism"},
      {"sasl.username", "sasl_username"},
      {"sasl.password", "sasl_password"},
      {"ssl.ca.location", "tls_ca_file"},
      {"ssl.certificate.location", "tls_cert_file"},
      {"ssl.key.location", "tls_key_file"},
      {"ssl.key.password", "tls_key_password"},
  };
  return owned;
}

std::optional<std::string> readSecretFile(const std::string& path, std::string& error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = "cannot read " + path + ": " + std::strerror(errno);
    return std::nullopt;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

struct ConfDeleter {
  void operator()(rd_kafka_conf_t* c) const { rd_kafka_conf_destroy(c); }
};
using ConfPtr = std::unique_ptr<rd_kafka_conf_t, ConfDeleter>;

// Fills a librdkafka configuration from ours. Secrets from files are read here. Returns false
// with `error` set (never containing a secret value).
// How often the sink looks at its broker connections (librdkafka statistics and its own check)
// to tell whether it is available: a third of unready_after, between 100 ms and 1 s.
uint64_t availabilityCheckMs(const KafkaConfig& cfg) {
  return std::clamp<uint64_t>(static_cast<uint64_t>(cfg.unready_after.count()) / 3, 100, 1000);
}

// librdkafka's statistics interval: stats_interval, or more often when unready_after needs the
// connection state sooner.
uint64_t statsIntervalMs(const KafkaConfig& cfg) {
  auto ms = static_cast<uint64_t>(cfg.stats_interval.count());
  if (cfg.unready_after.count() == 0) return ms;
  return ms == 0 ? availabilityCheckMs(cfg) : std::min(ms, availabilityCheckMs(cfg));
}

bool buildConf(const KafkaConfig& cfg, const std::string& sink_name, rd_kafka_conf_t* conf,
               std::string& error) {
  char errstr[512];
  auto set = [&](const std::string& k, const std::string& v, bool secret = false) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), errstr, sizeof errstr) == RD_KAFKA_CONF_OK) {
      return true;
    }
    error = "librdkafka refuses " + k + (secret ? "" : std::string(": ") + errstr);
    return false;
  };
  std::string servers;
  for (const auto& b : splitBrokers(cfg.brokers)) servers += (servers.empty() ? "" : ",") + b;
  bool sasl = cfg.sasl_mechanism != "none";
  std::string protocol =
      cfg.tls ? (sasl ? "SASL_SSL" : "SSL") : (sasl ? "SASL_PLAINTEXT" : "PLAINTEXT");
  bool ok = set("client.id", "sluice-" + sink_name) && set("bootstrap.servers", servers) &&
            set("acks", cfg.acks == "all" ? "all" : cfg.acks) &&
            set("enable.idempotence", cfg.idempotence ? "true" : "false") &&
            set("compression.codec", cfg.compression) &&
            set("batch.num.messages", std::to_string(cfg.producer_batch_size)) &&
            set("linger.ms", std::to_string(cfg.linger.count())) &&
            set("message.timeout.ms", std::to_string(cfg.message_timeout.count())) &&
            set("queue.buffering.max.messages", std::to_string(cfg.queue_max_events)) &&
            set("statistics.interval.ms", std::to_string(statsIntervalMs(cfg))) &&
            set("security.protocol", protocol);
  if (!ok) return false;
  if (sasl) {
    std::string password = cfg.sasl_password;
    if (!cfg.sasl_password_file.empty()) {
      auto p = readSecretFile(cfg.sasl_password_file, error);
      if (!p) return false;
      password = *p;
    }
    if (!set("sasl.mechanisms", cfg.sasl_mechanism) || !set("sasl.username", cfg.sasl_username) ||
        !set("sasl.password", password, true)) {
      return false;
    }
  }
  if (cfg.tls) {
    if (!cfg.tls_ca_file.empty() && !set("ssl.ca.location", cfg.tls_ca_file)) return false;
    if (!cfg.tls_cert_file.empty() && !set("ssl.certificate.location", cfg.tls_cert_file)) {
      return false;
    }
    if (!cfg.tls_key_file.empty() && !set("ssl.key.location", cfg.tls_key_file)) return false;
    std::string key_password = cfg.tls_key_password;
    if (!cfg.tls_key_password_file.empty()) {
      auto p = readSecretFile(cfg.tls_key_password_file, error);
      if (!p) return false;
      key_password = *p;
    }
    if (!key_password.empty() && !set("ssl.key.password", key_password, true)) return false;
  }
  for (const auto& [k, v] : cfg.properties) {
    if (!set(k, v, looksSecret(k))) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Error classification

enum class ErrorKind {
  Timeout,
  Transport,
  Auth,
  Broker,
  TooLarge,
  InvalidTopic,
  BadPartition,
  DeadLetterWrite,
  Fatal,
  Other,
  Count
};
const char* const kErrorMetric[] = {"ErrorTimeoutCount",      "ErrorTransportCount",
                                    "ErrorAuthCount",         "ErrorBrokerCount",
                                    "ErrorTooLargeCount",     "ErrorInvalidTopicCount",
                                    "ErrorBadPartitionCount", "ErrorDeadLetterWriteCount",
                                    "ErrorFatalCount",        "ErrorOtherCount"};

// Permanent: the same event would be refused again however often it is sent, so it goes to the
// dead-letter file and the rest of the batch commits. Everything else rolls the batch back.
bool isPermanent(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
      return true;
    default:
      return false;
  }
}

ErrorKind kindOf(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
      return ErrorKind::Timeout;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR__SSL:
      return ErrorKind::Transport;
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
      return ErrorKind::Auth;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
      return ErrorKind::TooLarge;
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
      return ErrorKind::InvalidTopic;
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
      return ErrorKind::BadPartition;
    case RD_KAFKA_RESP_ERR__FATAL:
      return ErrorKind::Fatal;
    case RD_KAFKA_RESP_ERR__FS:
      return ErrorKind::DeadLetterWrite;
    default:
      return err > 0 ? ErrorKind::Broker : ErrorKind::Other;
  }
}

// ---------------------------------------------------------------------------------------------
// Records

std::string base64(std::string_view in) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (static_cast<unsigned char>(in[i]) << 16) |
                 (static_cast<unsigned char>(in[i + 1]) << 8) |
                 static_cast<unsigned char>(in[i + 2]);
    out += tbl[v >> 18];
    out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];
    out += tbl[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += tbl[v >> 18];
    out += tbl[(v >> 12) & 63];
    out += i + 1 < in.size() ? tbl[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string dump(const nlohmann::ordered_json& j) {
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

// One line of the dead-letter file. The body is kept byte-exact: as a string when it is UTF-8,
// as body_base64 otherwise.
std::string deadLetterLine(const std::string& sink, const std::string& reason,
                           rd_kafka_resp_err_t err, std::string_view topic,
                           std::optional<std::string_view> key, const EventView& event) {
  nlohmann::ordered_json j;
  j["time"] = formatIsoTime(nowNs());
  j["sink"] = sink;
  j["reason"] = reason;
  j["error"] = rd_kafka_err2name(err);
  j["topic"] = topic;
  if (key) {
    j["key"] = *key;
  } else {
    j["key"] = nullptr;
  }
  auto& headers = j["headers"] = nlohmann::ordered_json::object();
  event.forEachHeader([&](std::string_view k, std::string_view v) { headers[std::string(k)] = v; });
  j["timestamp"] = formatIsoTime(event.timestampNs());
  if (isValidUtf8(event.body())) {
    j["body"] = event.body();
  } else {
    j["body_base64"] = base64(event.body());
  }
  return dump(j) + "\n";
}

// ---------------------------------------------------------------------------------------------
// The sink

enum class Outcome : uint8_t { Delivered, DeadLettered, Retriable };

struct Delivery;

// The opaque of one produced message: which delivery, which event.
struct MsgRef {
  Delivery* delivery = nullptr;
  const Batch* batch = nullptr;
  uint32_t index = 0;
  uint64_t produced_ns = 0;  // uv_hrtime at produce
};

// One deliver() call. Holds its own copy of the take's slices, so the batches stay alive until
// every event is reported whatever happens to the Take: librdkafka reads the bodies from them
// (they are not copied), and a dead letter is written from them.
struct Delivery {
  std::vector<Slice> slices;
  size_t total = 0;
  size_t slice_pos = 0;
  uint32_t event_pos = 0;
  size_t submitted = 0;  // events handed to librdkafka or to the dead-letter writer
  size_t resolved = 0;   // events with a final report
  size_t dead_lettered = 0;
  bool retry = false;
  bool queued = false;  // waiting for queue space
  std::string retry_reason;
  DeliveryDone done;
  std::vector<MsgRef> refs;  // one slot per event, never reallocated

  bool allProduced() const { return slice_pos >= slices.size(); }
  bool finished() const { return !queued && (allProduced() || retry) && resolved == submitted; }
};

struct Report {
  MsgRef* ref;
  Outcome outcome;
  rd_kafka_resp_err_t err;
  bool from_kafka;
};

// A dead letter for the writer thread; `line` is built on the loop, where the event lives.
struct DeadLetterJob {
  MsgRef* ref;
  std::string line;
  rd_kafka_resp_err_t err;
  bool from_kafka;
};

class KafkaSink : public Sink {
 public:
  KafkaSink(KafkaConfig cfg, std::string name, std::string dead_letter_path, EventTemplate topic,
            EventTemplate key, rd_kafka_t* rk, MetricSetPtr metrics)
      : cfg_(std::move(cfg)),
        name_(std::move(name)),
        dead_letter_path_(std::move(dead_letter_path)),
        topic_(std::move(topic)),
        key_(std::move(key)),
        rk_(rk),
        metrics_(std::move(metrics)) {
    json_ = cfg_.format == "json";
    if (topic_.isLiteral()) {
      Batch none;  // a literal reads nothing of the event
      none.add("", 0);
      topic_.render(none[0], literal_topic_);
      literal_topic_valid_ = isValidTopicName(literal_topic_);
    }
    if (cfg_.record_headers.empty() ||
        (cfg_.record_headers.size() == 1 && cfg_.record_headers[0] == "all")) {
      all_headers_ = true;
    } else if (cfg_.record_headers.size() == 1 && cfg_.record_headers[0] == "none") {
      all_headers_ = false;
    } else {
      all_headers_ = false;
      header_names_ = cfg_.record_headers;
    }
    auto& m = *metrics_;
    for (size_t i = 0; i < static_cast<size_t>(ErrorKind::Count); ++i) {
      errors_[i] = &m.counter(kErrorMetric[i]);
    }
    retries_ = &m.counter("RetryCount");
    dead_letters_ = &m.counter("DeadLetterCount");
    queue_full_ = &m.counter("QueueFullCount");
    producer_recreated_ = &m.counter("ProducerRecreateCount");
    invalid_utf8_ = &m.counter("InvalidUtf8EventCount");
    m.gauge(
        "EventsInFlight", [this] { return static_cast<double>(in_flight_); }, this);
    m.gauge(
        "DeliveryLatencyMs", [this] { return latency_last_ms_; }, this);
    m.gauge(
        "DeliveryLatencyAvgMs", [this] { return latency_avg_ms_; }, this);
    m.gauge(
        "ProducerRetries",
        [this] {
          std::lock_guard lock(mutex_);
          return static_cast<double>(producer_retries_);
        },
        this);
    m.gauge(
        "BrokersConnected",
        [this] {
          std::lock_guard lock(mutex_);
          double up = 0;
          for (const auto& [id, st] : brokers_) up += st ? 1 : 0;
          return up;
        },
        this);
  }

  ~KafkaSink() override {
    metrics_->clearGauges(this);
    if (thread_.joinable()) {
      polling_ = false;
      requestStop();
      thread_.join();
    } else {
      destroyProducer();  // never started: no queue event was enabled
    }
    rk_ = nullptr;
    if (dl_fd_ >= 0) ::close(dl_fd_);
    closeHandles();
  }

  void start(SinkContext& ctx) override {
    ctx_ = &ctx;
    async_ = new uv_async_t;
    uv_async_init(ctx.loop(), async_, &KafkaSink::onAsync);
    async_->data = this;
    // librdkafka calls onQueueEvent (from its own threads) when something is put on the main
    // queue (delivery reports, errors, statistics) while it is empty; the loop then serves the
    // queue. What came before this (a refused connection, say) is served by a first drain
    // now: left there, it would keep the queue from ever being empty again, and no event
    // would come. A slow timer serves the queue too, should a signal ever be missed.
    attachQueue();
    polling_ = true;
    // Nothing is connected yet: unready_after counts from here (the loop's cached time may be
    // old when the sink is built and started in one turn).
    uv_update_time(ctx.loop());
    down_since_ms_ = uv_now(ctx.loop());
    poll_timer_ = new uv_timer_t;
    uv_timer_init(ctx.loop(), poll_timer_);
    poll_timer_->data = this;
    uv_timer_start(
        poll_timer_, [](uv_timer_t* t) { static_cast<KafkaSink*>(t->data)->drainReports(); },
        pollMs(), pollMs());
    uv_unref(reinterpret_cast<uv_handle_t*>(poll_timer_));
    thread_ = std::thread([this] { writerThread(); });
    uv_async_send(async_);
  }

  // Builds a producer for this sink (configuration, callbacks, opaque); null with `error` set.
  // Used at creation and, on the writer thread, to replace a producer after a fatal error.
  using ProducerFactory = std::function<rd_kafka_t*(std::string& error)>;
  void setProducer(rd_kafka_t* rk, ProducerFactory factory) {
    rk_ = rk;
    factory_ = std::move(factory);
  }

  bool raiseFatalErrorForTest() {
    return !recovering_ && !shut_down_ && rk_ &&
           rd_kafka_test_fatal_error(rk_, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                     "raised by a test") == RD_KAFKA_RESP_ERR_NO_ERROR;
  }

  size_t maxInFlight() const override { return cfg_.max_in_flight; }
  bool ready() const override { return blocked_.empty() && !stopping_ && !recovering_; }
  // False once no broker has been connected for unready_after (from the start, or since the last
  // connection was lost); true again as soon as one is (see updateAvailability).
  bool available() const override { return available_; }

  // The group gives this sink's deliveries to another sink (it is unavailable): what waits for
  // queue room is answered Retry now, what librdkafka holds is purged (answered Retry through
  // its reports), so as little as possible still reaches the broker later. The sink reads no
  // take after deliver() (a delivery holds its own slices), so it can always let go.
  bool abandon() override {
    giveUpAll("taken back by the sink group");
    return true;
  }

  void deliver(const Take& take, DeliveryDone done) override {
    if (take.events() == 0) {
      done(DeliveryResult::ok());
      return;
    }
    // rk_ is the writer thread's while recovering or once shut down: checked last.
    if (stopping_ || recovering_ || !rk_) {
      done(DeliveryResult::retry(recovering_ ? "the kafka producer is being recreated"
                                             : "kafka sink is stopping"));
      return;
    }
    auto owned = std::make_unique<Delivery>();
    Delivery* d = owned.get();
    d->slices = take.slices();
    d->total = take.events();
    d->event_pos = d->slices.empty() ? 0 : d->slices[0].begin;
    d->refs.resize(d->total);
    d->done = std::move(done);
    deliveries_.emplace(d, std::move(owned));
    if (!blocked_.empty() || !produce(d)) {
      if (blocked_.empty()) queue_full_->inc();
      d->queued = true;
      blocked_.push_back(d);
      return;
    }
    if (d->finished()) finish({d});
  }

  // Shutdown past the drain deadline: deliveries still waiting for queue room are answered
  // Retry now; what librdkafka holds is purged, and its reports (ERR__PURGE_*, retriable) answer
  // the rest Retry, so the group rolls everything unconfirmed back into the channel.
  void cancel() override {
    if (shut_down_ || recovering_ || deliveries_.empty() || !rk_) return;  // see releaseOld
    spdlog::warn(
        "kafka sink '{}': shutting down past the drain deadline; {} unconfirmed events "
        "are rolled back into the channel",
        name_, in_flight_);
    giveUpAll("cancelled at shutdown");
  }

  // Answers Retry what waits for queue room, and purges what librdkafka holds (its reports
  // answer the rest Retry). Non-blocking.
  void giveUpAll(const char* reason) {
    if (shut_down_ || recovering_ || deliveries_.empty() || !rk_) return;  // see releaseOld
    std::vector<Delivery*> now;
    for (Delivery* d : blocked_) {
      d->queued = false;
      d->retry = true;
      if (d->retry_reason.empty()) d->retry_reason = reason;
      if (d->finished()) now.push_back(d);
    }
    blocked_.clear();
    finish(now);
    // Non-blocking: a broker thread stuck in a name lookup must not hold up the loop; the purged
    // events' reports come through the queue.
    rd_kafka_purge(
        rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT | RD_KAFKA_PURGE_F_NON_BLOCKING);
  }

  // The group stops a sink once nothing is outstanding; should deliveries still be open, their
  // events get flush_timeout to be acknowledged, then they are purged (answered Retry, so a
  // file channel keeps them). Then the writer thread destroys the producer off the loop.
  void stop(std::function<void()> done) override {
    stopping_ = true;
    if (!thread_.joinable()) {
      done();
      return;
    }
    stop_done_ = std::move(done);
    if (deliveries_.empty() || cfg_.flush_timeout.count() == 0) {
      shutDown();
      return;
    }
    if (flush_timer_ || shut_down_) return;  // a second stop
    flush_timer_ = new uv_timer_t;
    uv_timer_init(ctx_->loop(), flush_timer_);
    flush_timer_->data = this;
    uv_timer_start(
        flush_timer_,
        [](uv_timer_t* t) {
          auto* self = static_cast<KafkaSink*>(t->data);
          spdlog::warn("kafka sink '{}': {} events not confirmed within flush_timeout; purged",
                       self->name_, self->in_flight_);
          if (!self->recovering_) {
            rd_kafka_purge(self->rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                                          RD_KAFKA_PURGE_F_NON_BLOCKING);
            self->serveQueue();
            self->answerFinished();
          }
          self->shutDown();
        },
        static_cast<uint64_t>(cfg_.flush_timeout.count()), 0);
  }

  // --- librdkafka callbacks -----------------------------------------------------------------
  // Delivery reports, errors and statistics run on the loop thread, inside serveQueue's
  // rd_kafka_poll: the thread that produced a message also frees it (a report handled on
  // another thread made the two contend for the allocator's lock on every message). Logs and
  // onQueueEvent come from librdkafka's threads.

  static void onQueueEvent(rd_kafka_t*, void* opaque) {
    auto* self = static_cast<KafkaSink*>(opaque);
    std::lock_guard lock(self->mutex_);
    if (self->async_) uv_async_send(self->async_);
  }

  static void onDeliveryReport(rd_kafka_t*, const rd_kafka_message_t* msg, void* opaque) {
    auto* self = static_cast<KafkaSink*>(opaque);
    auto* ref = static_cast<MsgRef*>(msg->_private);
    if (!ref) return;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      self->resolve(ref, Outcome::Delivered, msg->err, true);
      return;
    }
    if (isPermanent(msg->err)) {
      self->errors_[static_cast<size_t>(kindOf(msg->err))]->inc();
      std::optional<std::string_view> key;
      if (msg->key) key = std::string_view(static_cast<const char*>(msg->key), msg->key_len);
      const char* topic = msg->rkt ? rd_kafka_topic_name(msg->rkt) : "";
      self->queueDeadLetter({ref,
                             deadLetterLine(self->name_, rd_kafka_err2str(msg->err), msg->err,
                                            topic, key, (*ref->batch)[ref->index]),
                             msg->err, true});
      return;
    }
    self->resolve(ref, Outcome::Retriable, msg->err, true);
  }

  static void onError(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
    auto* self = static_cast<KafkaSink*>(opaque);
    auto code = static_cast<rd_kafka_resp_err_t>(err);
    if (code == RD_KAFKA_RESP_ERR__FATAL) {
      char buf[512];
      rd_kafka_fatal_error(rk, buf, sizeof buf);
      spdlog::error("kafka sink '{}': fatal producer error: {}; the producer is recreated",
                    self->name_, buf);
      self->fatal_seen_ = true;
    } else {
      spdlog::warn("kafka sink '{}': {}", self->name_, reason);
    }
    if (code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) self->noteConnected(false);
    self->errors_[static_cast<size_t>(kindOf(code))]->inc();
  }

  static int onStats(rd_kafka_t*, char* json, size_t len, void* opaque) {
    auto* self = static_cast<KafkaSink*>(opaque);
    auto j = nlohmann::json::parse(std::string_view(json, len), nullptr, false);
    if (j.is_discarded() || !j.contains("brokers") || !j["brokers"].is_object()) return 0;
    std::map<int32_t, bool> states;
    uint64_t retries = 0;
    bool any_up = false;  // any broker connection, bootstrap ones (no node id yet) included
    for (const auto& [name, b] : j["brokers"].items()) {
      if (!b.is_object()) continue;
      auto id_it = b.find("nodeid");
      if (id_it == b.end() || !id_it->is_number_integer()) continue;
      auto id = id_it->get<int64_t>();
      auto source = b.find("source");
      if (source != b.end() && source->is_string() &&
          (*source == "internal" || *source == "logical")) {
        continue;
      }
      auto state = b.find("state");
      bool up = state != b.end() && state->is_string() && *state == "UP";
      any_up = any_up || up;
      if (id < 0) continue;
      states[static_cast<int32_t>(id)] = up;
      auto tx = b.find("txretries");
      if (tx != b.end() && tx->is_number_unsigned()) retries += tx->get<uint64_t>();
    }
    {
      std::lock_guard lock(self->mutex_);
      self->brokers_ = std::move(states);
      self->producer_retries_ = retries;
      self->brokers_changed_ = true;
    }
    self->noteConnected(any_up);
    uv_async_send(self->async_);
    return 0;
  }

  // librdkafka's own log. Connection failures also arrive through onError (logged there as
  // warnings), so its FAIL lines go to debug to avoid saying everything twice.
  static void onLog(const rd_kafka_t* rk, int level, const char* fac, const char* buf) {
    auto* self = static_cast<KafkaSink*>(rd_kafka_opaque(rk));
    std::string_view name = self ? std::string_view(self->name_) : std::string_view();
    if (std::strcmp(fac, "FAIL") == 0 || level > 6) {
      spdlog::debug("kafka sink '{}': {}: {}", name, fac, buf);
    } else if (level <= 3) {
      spdlog::error("kafka sink '{}': {}: {}", name, fac, buf);
    } else if (level <= 4) {
      spdlog::warn("kafka sink '{}': {}: {}", name, fac, buf);
    } else {
      spdlog::info("kafka sink '{}': {}: {}", name, fac, buf);
    }
  }

 private:
  // --- loop thread ---------------------------------------------------------------------------

  // Produces the delivery's remaining events. Returns false when librdkafka's queue is full
  // (the position is kept for a later call); true when nothing is left to produce.
  bool produce(Delivery* d) {
    // One clock read per call, not per event: the latency metric needs no finer grain.
    uint64_t now = uv_hrtime();
    while (!d->allProduced() && !d->retry) {
      const Slice& slice = d->slices[d->slice_pos];
      if (d->event_pos >= slice.end) {  // an empty slice
        if (++d->slice_pos < d->slices.size()) d->event_pos = d->slices[d->slice_pos].begin;
        continue;
      }
      EventView ev = (*slice.batch)[d->event_pos];
      MsgRef& ref = d->refs[d->submitted];
      ref = MsgRef{d, slice.batch.get(), d->event_pos, now};
      rd_kafka_resp_err_t err = produceOne(ref, ev);
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) return false;
      if (err == RD_KAFKA_RESP_ERR__FATAL && !fatal_seen_) {
        fatal_seen_ = true;  // recovery starts at the next drain, outside this delivery
        uv_async_send(async_);
      }
      if (err != RD_KAFKA_RESP_ERR_NO_ERROR && !isPermanent(err) && err != kDeadLettered) {
        errors_[static_cast<size_t>(kindOf(err))]->inc();
        d->retry = true;
        d->retry_reason = std::string("produce failed: ") + rd_kafka_err2str(err);
        break;
      }
      ++d->submitted;
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) ++in_flight_;
      if (++d->event_pos >= slice.end) {
        ++d->slice_pos;
        if (!d->allProduced()) d->event_pos = d->slices[d->slice_pos].begin;
      }
    }
    return true;
  }

  static constexpr rd_kafka_resp_err_t kDeadLettered = RD_KAFKA_RESP_ERR__END;

  // Returns NO_ERROR (produced), kDeadLettered (handed to the dead-letter writer), or the
  // error librdkafka gave (nothing produced).
  rd_kafka_resp_err_t produceOne(MsgRef& ref, const EventView& ev) {
    // A literal topic is rendered and checked once; a template per event.
    const std::string* topic = &literal_topic_;
    bool topic_valid = literal_topic_valid_;
    if (!topic_.isLiteral()) {
      topic_.render(ev, topic_buf_);
      topic = &topic_buf_;
      topic_valid = isValidTopicName(topic_buf_);
    }
    bool has_key = !key_.empty();
    if (has_key) {
      key_.render(ev, key_buf_);
      has_key = !key_buf_.empty();
    }
    std::optional<std::string_view> key;
    if (has_key) key = key_buf_;
    if (!topic_valid) {
      errors_[static_cast<size_t>(ErrorKind::InvalidTopic)]->inc();
      deadLetter(ref, "invalid topic name '" + *topic + "' from template '" + topic_.source() + "'",
                 *topic, RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION, key, ev);
      return kDeadLettered;
    }
    int32_t partition = RD_KAFKA_PARTITION_UA;
    if (!cfg_.partition_header.empty()) {
      if (auto p = ev.header(cfg_.partition_header)) {
        int64_t v = 0;
        bool ok = !p->empty() && p->size() < 10;
        for (char c : *p) {
          if (c < '0' || c > '9') ok = false;
          v = v * 10 + (c - '0');
        }
        if (!ok) {
          errors_[static_cast<size_t>(ErrorKind::BadPartition)]->inc();
          deadLetter(ref,
                     "partition header '" + cfg_.partition_header + "' is not a partition number",
                     *topic, RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION, key, ev);
          return kDeadLettered;
        }
        partition = static_cast<int32_t>(v);
      }
    }
    // Record headers are allocated only for an event that has some to copy.
    rd_kafka_headers_t* headers = nullptr;
    if (all_headers_) {
      ev.forEachHeader([&](std::string_view k, std::string_view v) {
        if (!headers) headers = rd_kafka_headers_new(8);
        rd_kafka_header_add(headers, k.data(), static_cast<ssize_t>(k.size()), v.data(),
                            static_cast<ssize_t>(v.size()));
      });
    } else {
      for (const auto& name : header_names_) {
        if (auto v = ev.header(name)) {
          if (!headers) headers = rd_kafka_headers_new(header_names_.size());
          rd_kafka_header_add(headers, name.data(), static_cast<ssize_t>(name.size()), v->data(),
                              static_cast<ssize_t>(v->size()));
        }
      }
    }
    std::string_view value = ev.body();
    if (json_) {
      nlohmann::ordered_json j;
      j["body"] = ev.body();
      bool valid = isValidUtf8(ev.body());
      auto& hs = j["headers"] = nlohmann::ordered_json::object();
      ev.forEachHeader([&](std::string_view k, std::string_view v) {
        valid = valid && isValidUtf8(k) && isValidUtf8(v);
        hs[std::string(k)] = v;
      });
      // JSON has no bytes: what is not UTF-8 becomes U+FFFD in the envelope, counted here.
      if (!valid) invalid_utf8_->inc();
      j["timestamp"] = formatIsoTime(ev.timestampNs());
      value_buf_ = dump(j);
      value = value_buf_;
    }
    int64_t ts_ms = ev.timestampNs() / 1'000'000;
    // A body is not copied: it stays in the take's batch, which the delivery holds until the
    // event's report. A JSON envelope is built in a reused buffer, so librdkafka copies it.
    int flags = json_ ? RD_KAFKA_MSG_F_COPY : 0;
    rd_kafka_topic_t* rkt = topicHandle(*topic);
    rd_kafka_resp_err_t err;
    if (rkt) {
      err = rd_kafka_producev(
          rk_, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_MSGFLAGS(flags),
          RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
          RD_KAFKA_V_KEY(has_key ? key_buf_.data() : nullptr, has_key ? key_buf_.size() : 0),
          RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_TIMESTAMP(ts_ms > 0 ? ts_ms : 0),
          RD_KAFKA_V_OPAQUE(&ref), RD_KAFKA_V_END);
    } else {  // no handle (librdkafka refused it): by name, for librdkafka's own error
      err = rd_kafka_producev(
          rk_, RD_KAFKA_V_TOPIC(topic->c_str()), RD_KAFKA_V_PARTITION(partition),
          RD_KAFKA_V_MSGFLAGS(flags),
          RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
          RD_KAFKA_V_KEY(has_key ? key_buf_.data() : nullptr, has_key ? key_buf_.size() : 0),
          RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_TIMESTAMP(ts_ms > 0 ? ts_ms : 0),
          RD_KAFKA_V_OPAQUE(&ref), RD_KAFKA_V_END);
    }
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return err;
    if (headers) rd_kafka_headers_destroy(headers);
    if (isPermanent(err)) {
      errors_[static_cast<size_t>(kindOf(err))]->inc();
      deadLetter(ref, rd_kafka_err2str(err), *topic, err, key, ev);
      return kDeadLettered;
    }
    return err;
  }

  void deadLetter(MsgRef& ref, const std::string& reason, std::string_view topic,
                  rd_kafka_resp_err_t err, std::optional<std::string_view> key,
                  const EventView& ev) {
    queueDeadLetter({&ref, deadLetterLine(name_, reason, err, topic, key, ev), err, false});
  }

  void queueDeadLetter(DeadLetterJob job) {
    {
      std::lock_guard lock(mutex_);
      dl_jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

  // A handle per rendered topic name: producing by handle (RD_KAFKA_V_RKT) spares librdkafka a
  // topic lookup under its lock, and a handle of its own, per message. Loop thread while the
  // sink runs; the writer thread destroys the handles once the loop produces no more (stop).
  // Bounded: a template that keeps rendering new names (one per day or per host) starts a fresh
  // cache past kMaxTopicHandles. Null when librdkafka refuses the name.
  rd_kafka_topic_t* topicHandle(const std::string& name) {
    if (topic_.isLiteral() && literal_rkt_) return literal_rkt_;
    auto it = topics_.find(name);
    if (it != topics_.end()) return it->second;
    if (topics_.size() >= kMaxTopicHandles) destroyTopics();
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk_, name.c_str(), nullptr);
    if (!rkt) return nullptr;
    topics_.emplace(name, rkt);
    if (topic_.isLiteral()) literal_rkt_ = rkt;
    return rkt;
  }

  // Queued messages hold their own reference to their topic, so this never loses one.
  void destroyTopics() {
    for (auto& [name, rkt] : topics_) rd_kafka_topic_destroy(rkt);
    topics_.clear();
    literal_rkt_ = nullptr;
  }

  static void onAsync(uv_async_t* handle) {
    auto* self = static_cast<KafkaSink*>(handle->data);
    if (self) self->drainReports();
  }

  // Serves librdkafka's main queue on the loop: delivery reports (onDeliveryReport resolves
  // each event), errors and statistics. Never blocks (timeout 0).
  void serveQueue() {
    if (!polling_) return;
    poll_now_ = uv_hrtime();
    rd_kafka_poll(rk_, 0);
    if (fatal_seen_ && !recovering_ && !shut_down_) beginRecovery();
  }

  // Applies one event's final outcome to its delivery (loop thread). A delivery that is done
  // is answered by the caller, after the poll: never from inside a librdkafka callback.
  void resolve(MsgRef* ref, Outcome outcome, rd_kafka_resp_err_t err, bool from_kafka) {
    Delivery* d = ref->delivery;
    if (from_kafka) {
      --in_flight_;
      if (outcome == Outcome::Delivered) {
        noteConnected(true);
        double ms = static_cast<double>(poll_now_ - ref->produced_ns) / 1e6;
        latency_last_ms_ = ms;
        latency_avg_ms_ = latency_samples_++ == 0 ? ms : latency_avg_ms_ * 0.9 + ms * 0.1;
      }
    }
    ++d->resolved;
    if (outcome == Outcome::DeadLettered) {
      ++d->dead_lettered;
      dead_letters_->inc();
    } else if (outcome == Outcome::Retriable) {
      errors_[static_cast<size_t>(kindOf(err))]->inc();
      if (!d->retry) {
        d->retry = true;
        d->retry_reason = rd_kafka_err2str(err);
      }
      if (d->queued) {
        // Nothing more of it is produced: it will be rolled back anyway.
        blocked_.erase(std::find(blocked_.begin(), blocked_.end(), d));
        d->queued = false;
      }
    }
    if (d->finished()) finished_.push_back(d);
  }

  void drainReports() {
    serveQueue();
    std::vector<Report> written;  // dead letters the writer thread finished
    bool brokers_changed = false;
    bool thread_done = false;
    bool released = false;
    bool replaced = false;
    {
      std::lock_guard lock(mutex_);
      written.swap(reports_);
      brokers_changed = brokers_changed_;
      brokers_changed_ = false;
      thread_done = thread_done_;
      released = released_;
      released_ = false;
      replaced = replaced_;
      replaced_ = false;
    }
    if (brokers_changed) registerBrokerGauges();
    poll_now_ = uv_hrtime();
    for (const auto& r : written) resolve(r.ref, r.outcome, r.err, r.from_kafka);
    bool was_blocked = !blocked_.empty();
    while (!blocked_.empty() && polling_) {
      Delivery* d = blocked_.front();
      if (!produce(d)) break;
      d->queued = false;
      blocked_.pop_front();
      if (d->finished()) finished_.push_back(d);
    }
    answerFinished();
    if (released) releaseOld();
    if (replaced) endRecovery();
    if (thread_done) {
      // The producer is gone; should anything be left (purged at the flush deadline, or never
      // produced for lack of queue room), it is answered Retry, never dropped.
      retryAllOpen("kafka sink stopped", false);
      thread_.join();
      rk_ = nullptr;  // destroyed by the writer thread
      closeHandles();
      auto done = std::move(stop_done_);
      stop_done_ = nullptr;
      if (done) done();
      return;
    }
    if (stopping_ && flush_timer_ && !shut_down_ && deliveries_.empty()) shutDown();
    bool availability_changed = updateAvailability();
    if (((was_blocked && blocked_.empty()) || availability_changed) && ctx_ && !stopping_) {
      ctx_->wake();
    }
  }

  // Loop thread (librdkafka's callbacks run inside serveQueue): whether a broker is connected,
  // from statistics, ALL_BROKERS_DOWN and delivery reports. Acted on by updateAvailability.
  void noteConnected(bool up) {
    if (up == connected_) return;
    connected_ = up;
    if (!up && ctx_) down_since_ms_ = uv_now(ctx_->loop());
  }

  // Unavailable once no broker has been connected for unready_after; available again as soon as
  // one is. Returns true when that changed (the caller wakes the group).
  bool updateAvailability() {
    if (!ctx_ || cfg_.unready_after.count() == 0) return false;
    uint64_t now = uv_now(ctx_->loop());
    bool available =
        connected_ || now - down_since_ms_ < static_cast<uint64_t>(cfg_.unready_after.count());
    if (available == available_) return false;
    available_ = available;
    if (available) {
      spdlog::info("kafka sink '{}': a broker is connected; available again", name_);
    } else {
      spdlog::warn("kafka sink '{}': no broker connected for {} ms (unready_after); unavailable",
                   name_, now - down_since_ms_);
    }
    return true;
  }

  // The safety poll, also the availability check: as often as unready_after needs.
  uint64_t pollMs() const {
    return cfg_.unready_after.count() == 0 ? kSafetyPollMs : availabilityCheckMs(cfg_);
  }

  // Answers the deliveries a poll (or the blocked queue) finished. A delivery may be listed
  // twice (a report finished it, then it left the blocked queue).
  void answerFinished() {
    std::vector<Delivery*> finished;
    finished.swap(finished_);
    std::sort(finished.begin(), finished.end());
    finished.erase(std::unique(finished.begin(), finished.end()), finished.end());
    finish(finished);
  }

  // Answers finished deliveries. Their state is gone before any `done` runs, so a done that
  // re-enters deliver() sees a consistent sink.
  void finish(const std::vector<Delivery*>& finished) {
    std::vector<std::pair<DeliveryDone, DeliveryResult>> answers;
    for (Delivery* d : finished) {
      auto it = deliveries_.find(d);
      if (it == deliveries_.end()) continue;
      DeliveryResult result = DeliveryResult::ok();
      if (d->retry) {
        retries_->inc();
        result = DeliveryResult::retry(d->retry_reason);
      } else if (d->dead_lettered > 0) {
        spdlog::warn("kafka sink '{}': {} events of a batch of {} went to the dead-letter file {}",
                     name_, d->dead_lettered, d->total, dead_letter_path_);
      }
      answers.emplace_back(std::move(d->done), std::move(result));
      deliveries_.erase(it);
    }
    for (auto& [done, result] : answers) done(std::move(result));
  }

  void registerBrokerGauges() {
    std::vector<int32_t> ids;
    {
      std::lock_guard lock(mutex_);
      for (const auto& [id, st] : brokers_) ids.push_back(id);
    }
    for (int32_t id : ids) {
      if (!gauged_brokers_.insert(id).second) continue;
      metrics_->gauge(
          "BrokerConnected." + std::to_string(id),
          [this, id] {
            std::lock_guard lock(mutex_);
            auto it = brokers_.find(id);
            return it != brokers_.end() && it->second ? 1.0 : 0.0;
          },
          this);
    }
  }

  // Called once the writer thread is joined (librdkafka, which signals async_, is gone).
  void closeHandles() {
    if (async_) {
      std::lock_guard lock(mutex_);
      async_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(async_),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
      async_ = nullptr;
    }
    for (uv_timer_t** t : {&flush_timer_, &poll_timer_}) {
      if (!*t) continue;
      uv_close(reinterpret_cast<uv_handle_t*>(*t),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      *t = nullptr;
    }
  }

  // The loop produces and polls no more; the writer thread writes what dead letters are left,
  // then destroys the producer (which can block) and reports back through async_.
  void shutDown() {
    if (shut_down_) return;
    shut_down_ = true;
    if (flush_timer_) uv_timer_stop(flush_timer_);
    if (poll_timer_) uv_timer_stop(poll_timer_);
    polling_ = false;
    requestStop();
  }

  // After a fatal error (an idempotent producer that lost its sequence, a fenced producer)
  // librdkafka refuses every message until the producer is replaced. The loop stops producing
  // and polling, and the writer thread destroys the producer and creates a new one; meanwhile
  // the sink is not ready and refuses deliveries (Retry). What the old producer held is
  // answered Retry once it is gone (rolled back; a file channel keeps it).
  void beginRecovery() {
    fatal_seen_ = false;
    recovering_ = true;
    // No statistics come while the producer is replaced: count it as no broker connected, so
    // a failover group moves on if the replacement takes longer than unready_after.
    noteConnected(false);
    polling_ = false;
    for (Delivery* d : blocked_) d->queued = false;
    blocked_.clear();
    spdlog::warn("kafka sink '{}': recreating the producer; {} unconfirmed events are rolled back",
                 name_, in_flight_);
    {
      std::lock_guard lock(mutex_);
      replace_requested_ = true;
    }
    cv_.notify_one();
  }

  // The old producer is destroyed (nothing reads the batches any more): every delivery it held
  // is answered Retry now, whether or not a new producer can be made, so a stop or a reload
  // never waits on the replacement.
  void releaseOld() { retryAllOpen("the kafka producer was recreated after a fatal error", true); }

  // Answers every open delivery Retry once the producer that held them is gone (none of their
  // events is in librdkafka any more). `replace`: this reason wins over an earlier one.
  void retryAllOpen(const char* reason, bool replace) {
    std::vector<Delivery*> left;
    for (auto& [d, owned] : deliveries_) {
      d->retry = true;
      d->queued = false;
      if (replace || d->retry_reason.empty()) d->retry_reason = reason;
      left.push_back(d);
    }
    blocked_.clear();
    in_flight_ = 0;
    finish(left);
  }

  void endRecovery() {
    recovering_ = false;
    if (shut_down_ || !rk_) return;
    producer_recreated_->inc();
    polling_ = true;
    spdlog::info("kafka sink '{}': producer recreated", name_);
    serveQueue();  // anything the new producer queued before its queue event was enabled
    answerFinished();
    if (ctx_ && !stopping_) ctx_->wake();
  }

  void requestStop() {
    {
      std::lock_guard lock(mutex_);
      stop_requested_ = true;
    }
    cv_.notify_one();
  }

  // --- writer thread -------------------------------------------------------------------------

  void writerThread() {
    std::vector<DeadLetterJob> jobs;
    for (;;) {
      bool stop = false;
      bool replace = false;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock,
                 [this] { return !dl_jobs_.empty() || stop_requested_ || replace_requested_; });
        jobs.swap(dl_jobs_);
        stop = stop_requested_;
        replace = replace_requested_;
        replace_requested_ = false;
      }
      writeDeadLetters(jobs);
      jobs.clear();
      if (replace) replaceProducer();
      if (stop) break;
    }
    // Anything librdkafka still holds was given up at the flush deadline (or the sink is
    // destroyed without a stop): purged, unreported, answered Retry by the loop.
    destroyProducer();
    {
      std::lock_guard lock(mutex_);
      thread_done_ = true;
      if (async_) uv_async_send(async_);
    }
  }

  // Writer thread, or the loop once it serves the queue no more.
  void attachQueue() {
    mainq_ = rd_kafka_queue_get_main(rk_);
    rd_kafka_queue_cb_event_enable(mainq_, &KafkaSink::onQueueEvent, this);
  }

  void destroyProducer() {
    if (!rk_) return;
    rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    if (mainq_) {
      rd_kafka_queue_cb_event_enable(mainq_, nullptr, nullptr);
      rd_kafka_queue_destroy(mainq_);
      mainq_ = nullptr;
    }
    destroyTopics();
    rd_kafka_destroy(rk_);
    rk_ = nullptr;
  }

  // The loop neither produces nor polls while this runs (recovering_). A producer that cannot
  // be created (it was once, with the same configuration) is tried again every 5 s until the
  // stop.
  void replaceProducer() {
    destroyProducer();
    {
      std::lock_guard lock(mutex_);
      released_ = true;
      brokers_.clear();  // the new producer's statistics fill it again
      brokers_changed_ = true;
      if (async_) uv_async_send(async_);
    }
    for (;;) {
      {
        std::lock_guard lock(mutex_);
        if (stop_requested_) break;
      }
      std::string error;
      rk_ = factory_ ? factory_(error) : nullptr;
      if (rk_) break;
      spdlog::error("kafka sink '{}': cannot recreate the producer: {}; trying again in 5s", name_,
                    error);
      std::unique_lock lock(mutex_);
      if (cv_.wait_for(lock, std::chrono::seconds(5), [this] { return stop_requested_; })) break;
    }
    if (rk_) attachQueue();
    std::lock_guard lock(mutex_);
    replaced_ = true;
    if (async_) uv_async_send(async_);
  }

  // Appends a round of dead letters and syncs the file once, before their events are reported
  // as dead-lettered: a batch never commits ahead of its dead letters being durable. A failed
  // write reports them retriable.
  void writeDeadLetters(const std::vector<DeadLetterJob>& jobs) {
    if (jobs.empty()) return;
    bool ok = openDeadLetterFile();
    for (const auto& job : jobs) {
      if (!ok) break;
      const char* p = job.line.data();
      size_t left = job.line.size();
      while (left > 0) {
        ssize_t n = ::write(dl_fd_, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          ok = false;
          break;
        }
        p += n;
        left -= static_cast<size_t>(n);
      }
    }
    if (ok && ::fdatasync(dl_fd_) != 0) ok = false;
    if (!ok) {
      spdlog::error("kafka sink '{}': cannot write the dead-letter file {}: {}", name_,
                    dead_letter_path_, std::strerror(errno));
    }
    std::lock_guard lock(mutex_);
    for (const auto& job : jobs) {
      reports_.push_back({job.ref, ok ? Outcome::DeadLettered : Outcome::Retriable,
                          ok ? job.err : RD_KAFKA_RESP_ERR__FS, job.from_kafka});
    }
    if (async_) uv_async_send(async_);
  }

  bool openDeadLetterFile() {
    if (dl_fd_ >= 0) return true;
    std::error_code ec;
    auto parent = std::filesystem::path(dead_letter_path_).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    dl_fd_ = ::open(dead_letter_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    return dl_fd_ >= 0;
  }

  KafkaConfig cfg_;
  std::string name_;
  std::string dead_letter_path_;
  EventTemplate topic_;
  EventTemplate key_;
  rd_kafka_t* rk_ = nullptr;
  MetricSetPtr metrics_;
  SinkContext* ctx_ = nullptr;
  bool all_headers_ = true;
  std::vector<std::string> header_names_;
  bool json_ = false;
  std::string literal_topic_;  // the topic when the template is literal
  bool literal_topic_valid_ = false;

  // Loop thread while running; the writer thread after stop (see topicHandle).
  static constexpr size_t kMaxTopicHandles = 1024;
  std::unordered_map<std::string, rd_kafka_topic_t*> topics_;
  rd_kafka_topic_t* literal_rkt_ = nullptr;
  rd_kafka_queue_t* mainq_ = nullptr;

  // Loop thread only.
  std::unordered_map<Delivery*, std::unique_ptr<Delivery>> deliveries_;
  std::deque<Delivery*> blocked_;    // deliveries with events left to produce, in order
  std::vector<Delivery*> finished_;  // done during a poll; answered after it
  bool polling_ = false;             // the loop serves librdkafka's queue (start .. shutDown)
  bool shut_down_ = false;           // the writer thread was told to destroy the producer
  bool fatal_seen_ = false;          // librdkafka reported a fatal error (onError)
  bool recovering_ = false;          // the writer thread is replacing the producer
  bool stopping_ = false;
  std::function<void()> stop_done_;
  uv_timer_t* flush_timer_ = nullptr;
  uv_timer_t* poll_timer_ = nullptr;  // the safety poll (kSafetyPollMs)
  static constexpr uint64_t kSafetyPollMs = 1000;
  uint64_t poll_now_ = 0;       // uv_hrtime of the current poll, for the latency metric
  bool connected_ = false;      // a broker is connected, as last seen
  uint64_t down_since_ms_ = 0;  // uv_now() when the last connection was lost (or the start)
  bool available_ = true;
  size_t in_flight_ = 0;
  double latency_last_ms_ = 0;
  double latency_avg_ms_ = 0;
  uint64_t latency_samples_ = 0;
  std::unordered_set<int32_t> gauged_brokers_;
  std::string topic_buf_, key_buf_, value_buf_;
  Counter* errors_[static_cast<size_t>(ErrorKind::Count)] = {};
  Counter* retries_ = nullptr;
  Counter* dead_letters_ = nullptr;
  Counter* queue_full_ = nullptr;
  Counter* producer_recreated_ = nullptr;
  Counter* invalid_utf8_ = nullptr;

  // Writer thread only.
  int dl_fd_ = -1;
  ProducerFactory factory_;

  // Shared, under mutex_.
  std::mutex mutex_;
  std::condition_variable cv_;   // the writer thread waits for dead letters or the stop
  uv_async_t* async_ = nullptr;  // set before the threads start; cleared after they are gone
  std::vector<Report> reports_;  // written dead letters, for the loop
  std::vector<DeadLetterJob> dl_jobs_;
  std::map<int32_t, bool> brokers_;
  uint64_t producer_retries_ = 0;
  bool brokers_changed_ = false;
  bool stop_requested_ = false;
  bool replace_requested_ = false;
  bool released_ = false;  // the writer thread destroyed the old producer
  bool replaced_ = false;  // ... and made a new one (rk_ may be null: stopped, or it failed)
  bool thread_done_ = false;

  std::thread thread_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

const OptionTable<KafkaConfig>& kafkaOptionTable() {
  static const OptionTable<KafkaConfig> table = [] {
    using C = KafkaConfig;
    OptionTable<C> t;
    t.list("brokers", &C::brokers, true,
           "Bootstrap brokers, host:port (a list, or one comma-separated string).");
    t.requiredString("topic", &C::topic,
                     "Topic template: text with %{header} and %Y %m %d %H %M %S of the event "
                     "time (UTC). An event whose topic renders invalid goes to the dead-letter "
                     "file.");
    t.string("key", &C::key, "",
             "Record key template (as topic); empty, or rendering empty: no key.");
    t.string("partition_header", &C::partition_header, "",
             "Header whose value is the partition number; empty or absent: librdkafka's "
             "partitioner.");
    t.list("record_headers", &C::record_headers, false,
           "Event headers copied to Kafka record headers: all (default), none, or a list of "
           "names.");
    t.choice("format", &C::format, {"body", "json"}, "body",
             "body: the event body as is; json: {\"body\",\"headers\",\"timestamp\"} envelope.");
    t.choice("compression", &C::compression, {"none", "gzip", "snappy", "lz4", "zstd"}, "none",
             "Compression codec of record batches.");
    t.integer("producer_batch_size", &C::producer_batch_size, 10000, 1, 1000000,
              "Most messages in one produce request batch (batch.num.messages); not the "
              "events taken per delivery, which is the common batch_size.");
    t.duration("linger", &C::linger, "5ms", Millis(0), Millis(900000),
               "How long librdkafka waits to fill a batch (linger.ms).");
    t.choice("acks", &C::acks, {"all", "1", "0"}, "all",
             "Acknowledgements the leader waits for; all = every in-sync replica.");
    t.boolean("idempotence", &C::idempotence, true,
              "Idempotent producer: no duplicates or reordering from librdkafka's own retries "
              "(needs acks: all).");
    t.duration("message_timeout", &C::message_timeout, "5m", Millis(1), Millis(2147483647),
               "Time librdkafka keeps retrying a message (message.timeout.ms); after it the "
               "batch is rolled back and retried by the sink group.");
    t.integer("queue_max_events", &C::queue_max_events, 100000, 1, 10000000,
              "librdkafka's local queue (queue.buffering.max.messages); when full the sink "
              "stops taking from the channel.");
    t.integer("max_in_flight", &C::max_in_flight, 128, 1, 1024,
              "Most deliveries (taken batches of the common batch_size) outstanding at once. "
              "Keep it at least queue_max_events / batch_size, so librdkafka's queue is the "
              "bound and stays full while batches commit.");
    t.duration("flush_timeout", &C::flush_timeout, "5s", Millis(0), Millis(600000),
               "At stop, how long queued messages get to reach the broker before the producer "
               "is destroyed.");
    t.duration("stats_interval", &C::stats_interval, "5s", Millis(0), Millis(86400000),
               "librdkafka statistics interval (per-broker connection state); 0: off.");
    t.duration("unready_after", &C::unready_after, "2s", Millis(0), Millis(3600000),
               "With no broker connected for this long (from the start, or since the last "
               "connection was lost) the sink is unavailable: a sink group with other sinks "
               "takes its deliveries back and uses them. 0: never.");
    t.path("dead_letter_path", &C::dead_letter_path, "",
           "JSON-lines file for permanently refused events; default "
           "<agent.data_dir>/dead_letter/<sink name>.jsonl.");
    t.stringMap("properties", &C::properties,
                "Pass-through librdkafka properties; keys a first-class option owns are "
                "refused.");
    t.choice("sasl_mechanism", &C::sasl_mechanism,
             {"none", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}, "none", "SASL mechanism.");
    t.string("sasl_username", &C::sasl_username, "", "SASL user name.");
    t.string("sasl_password", &C::sasl_password, "",
             "SASL password; write ${ENV_VAR}, or use sasl_password_file. Never logged.");
    t.path("sasl_password_file", &C::sasl_password_file, "",
           "File holding the SASL password (trailing newline ignored).");
    t.boolean("tls", &C::tls, false, "Connect with TLS.");
    t.path("tls_ca_file", &C::tls_ca_file, "",
           "CA certificate(s) to verify brokers (PEM file or directory; `probe`: the system's).",
           "probe");
    t.path("tls_cert_file", &C::tls_cert_file, "", "Client certificate (PEM).");
    t.path("tls_key_file", &C::tls_key_file, "", "Client private key (PEM).");
    t.string("tls_key_password", &C::tls_key_password, "",
             "Password of the client key; write ${ENV_VAR}. Never logged.");
    t.path("tls_key_password_file", &C::tls_key_password_file, "",
           "File holding the password of the client key.");
    return t;
  }();
  return table;
}

ConfigErrors validateKafkaConfig(const KafkaConfig& cfg) {
  ConfigErrors errors;
  auto brokers = splitBrokers(cfg.brokers);
  if (brokers.empty()) errors.emplace_back("brokers", "must list at least one broker");
  for (const auto& b : brokers) {
    auto colon = b.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == b.size()) {
      errors.emplace_back("brokers", "'" + b + "' is not host:port");
    }
  }
  std::string error;
  auto topic = EventTemplate::compile(cfg.topic, error);
  if (!topic) {
    errors.emplace_back("topic", error);
  } else if (topic->isLiteral() && !cfg.topic.empty()) {
    std::string rendered;
    Batch b;
    b.add("", 0);
    topic->render(b[0], rendered);
    if (!isValidTopicName(rendered)) {
      errors.emplace_back("topic", "'" + rendered +
                                       "' is not a valid topic name (1..249 characters of "
                                       "a-z A-Z 0-9 . _ -)");
    }
  }
  if (!EventTemplate::compile(cfg.key, error)) errors.emplace_back("key", error);
  if (cfg.record_headers.size() > 1) {
    for (const auto& h : cfg.record_headers) {
      if (h == "all" || h == "none") {
        errors.emplace_back("record_headers", "'" + h + "' must be the only entry");
        break;
      }
    }
  }
  if (cfg.idempotence && cfg.acks != "all") {
    errors.emplace_back("idempotence",
                        "the idempotent producer needs acks: all (or set idempotence: false)");
  }
  bool sasl = cfg.sasl_mechanism != "none";
  if (sasl) {
    if (cfg.sasl_username.empty()) errors.emplace_back("sasl_username", "required with SASL");
    if (cfg.sasl_password.empty() && cfg.sasl_password_file.empty()) {
      errors.emplace_back("sasl_password", "required with SASL (or sasl_password_file)");
    }
  } else if (!cfg.sasl_username.empty() || !cfg.sasl_password.empty() ||
             !cfg.sasl_password_file.empty()) {
    errors.emplace_back("sasl_mechanism", "SASL credentials are set but sasl_mechanism is none");
  }
  if (!cfg.sasl_password.empty() && !cfg.sasl_password_file.empty()) {
    errors.emplace_back("sasl_password_file", "set sasl_password or sasl_password_file, not both");
  }
  if (!cfg.tls_key_password.empty() && !cfg.tls_key_password_file.empty()) {
    errors.emplace_back("tls_key_password_file",
                        "set tls_key_password or tls_key_password_file, not both");
  }
  // Files the producer reads when it starts: refused now rather than by librdkafka at run time.
  // Only stat() and faccessat() (effective ids, as the service runs): never open(), which blocks
  // on a FIFO and would stall `check` or a reload on the loop thread. Files of an option that is
  // not in use (TLS off, no SASL) are left alone.
  struct FileOption {
    const char* key;
    const std::string* file;
    bool used;
    bool dir_ok;  // ssl.ca.location also takes a directory of certificates
  };
  for (const auto& [key, file, used, dir_ok] :
       {FileOption{"sasl_password_file", &cfg.sasl_password_file, sasl, false},
        FileOption{"tls_ca_file", &cfg.tls_ca_file, cfg.tls, true},
        FileOption{"tls_cert_file", &cfg.tls_cert_file, cfg.tls, false},
        FileOption{"tls_key_file", &cfg.tls_key_file, cfg.tls, false},
        FileOption{"tls_key_password_file", &cfg.tls_key_password_file, cfg.tls, false}}) {
    if (!used || file->empty()) continue;
    // `probe`: librdkafka looks for the system's CA bundle itself.
    if (dir_ok && *file == "probe") continue;
    if (auto problem = checkReadableFile(*file, dir_ok)) errors.emplace_back(key, *problem);
  }
  if (!cfg.tls &&
      (!cfg.tls_ca_file.empty() || !cfg.tls_cert_file.empty() || !cfg.tls_key_file.empty() ||
       !cfg.tls_key_password.empty() || !cfg.tls_key_password_file.empty())) {
    errors.emplace_back("tls", "TLS files are set but tls is false");
  }
  // Pass-through properties: refused when a first-class option owns the key, or when
  // librdkafka itself does not accept the name or value. Secret-looking values are not echoed.
  ConfPtr scratch(rd_kafka_conf_new());
  for (const auto& [k, v] : cfg.properties) {
    auto owned = ownedProperties().find(k);
    if (owned != ownedProperties().end()) {
      errors.emplace_back("properties." + k, "'" + k + "' is set by the option '" + owned->second +
                                                 "'; use that instead");
      continue;
    }
    char errstr[512];
    auto rc = rd_kafka_conf_set(scratch.get(), k.c_str(), v.c_str(), errstr, sizeof errstr);
    if (rc == RD_KAFKA_CONF_UNKNOWN) {
      errors.emplace_back("properties." + k, "librdkafka has no property '" + k + "'");
    } else if (rc != RD_KAFKA_CONF_OK) {
      errors.emplace_back("properties." + k, looksSecret(k)
                                                 ? std::string("librdkafka refuses the value")
                                                 : std::string("librdkafka refuses it: ") + errstr);
    }
  }
  return errors;
}

SinkPtr makeKafkaSink(const KafkaConfig& cfg, const BuildContext& ctx) {
  auto errors = validateKafkaConfig(cfg);
  if (!errors.empty()) {
    for (const auto& [k, msg] : errors) spdlog::error("kafka sink '{}': {}: {}", ctx.name, k, msg);
    return nullptr;
  }
  std::string error;
  auto topic = EventTemplate::compile(cfg.topic, error);
  auto key = EventTemplate::compile(cfg.key, error);
  std::string dl_path = cfg.dead_letter_path;
  if (dl_path.empty()) {
    std::string dir = ctx.agent && !ctx.agent->data_dir.empty() ? ctx.agent->data_dir : ".";
    dl_path = dir + "/dead_letter/" + ctx.name + ".jsonl";
  }
  MetricSetPtr metrics = ctx.metrics ? ctx.metrics : std::make_shared<MetricSet>("SINK", ctx.name);
  auto sink = std::make_unique<KafkaSink>(cfg, ctx.name, dl_path, std::move(*topic),
                                          std::move(*key), nullptr, metrics);
  // The configuration is built anew for every producer, so a replacement after a fatal error
  // reads secret files again.
  KafkaSink::ProducerFactory factory = [cfg, name = ctx.name,
                                        self = sink.get()](std::string& err) -> rd_kafka_t* {
    ConfPtr conf(rd_kafka_conf_new());
    if (!buildConf(cfg, name, conf.get(), err)) return nullptr;
    rd_kafka_conf_set_dr_msg_cb(conf.get(), &KafkaSink::onDeliveryReport);
    rd_kafka_conf_set_error_cb(conf.get(), &KafkaSink::onError);
    rd_kafka_conf_set_log_cb(conf.get(), &KafkaSink::onLog);
    if (statsIntervalMs(cfg) > 0) {
      rd_kafka_conf_set_stats_cb(conf.get(), &KafkaSink::onStats);
    }
    rd_kafka_conf_set_opaque(conf.get(), self);
    char errstr[512];
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), errstr, sizeof errstr);
    if (!rk) {
      err = errstr;
      return nullptr;
    }
    conf.release();  // rd_kafka_new owns it now
    return rk;
  };
  rd_kafka_t* rk = factory(error);
  if (!rk) {
    spdlog::error("kafka sink '{}': cannot create the producer: {}", ctx.name, error);
    return nullptr;
  }
  sink->setProducer(rk, std::move(factory));
  return sink;
}

bool raiseKafkaFatalErrorForTest(Sink& sink) {
  auto* k = dynamic_cast<KafkaSink*>(&sink);
  return k && k->raiseFatalErrorForTest();
}

void registerKafkaSink(Registry& registry) {
  // Cross-key checks run at config load too (so `sluice check` reports them with
  // file:line:col), through the registry's validation hook; the factory checks again.
  registry.addSink<KafkaConfig>("kafka",
                                "Produces events to Apache Kafka; commits a batch once the broker "
                                "acknowledged every event.",
                                kafkaOptionTable(), &makeKafkaSink, &validateKafkaConfig);
}

}  // namespace sluice

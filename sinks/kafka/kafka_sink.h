#pragma once
// The `kafka` sink: produces every event of a taken batch to Apache Kafka with librdkafka and
// answers Ok only once the broker acknowledged every event (acks=all, idempotent producer by
// default) or a permanently refused event went to the dead-letter file. See docs/kafka.md.
//
// Threads: deliver/ready/stop run on the loop thread and never block. librdkafka signals the
// loop (uv_async) when its main queue has something; the loop serves it with a non-blocking
// rd_kafka_poll, so delivery reports, errors and statistics are handled on the thread that
// produced the messages. One writer thread per sink appends dead letters (with fdatasync) and
// hands the results to the loop with uv_async_send; at stop it destroys the producer, so the
// loop never waits on librdkafka or on the disk.

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "agent/registry.h"

namespace sluice {

struct KafkaConfig {
  std::vector<std::string> brokers;
  std::string topic;
  std::string key;
  std::string partition_header;
  std::vector<std::string> record_headers;  // empty or [all]: all; [none]: none; else names
  std::string format;
  std::string compression;
  uint64_t producer_batch_size = 0;
  Millis linger{};
  std::string acks;
  bool idempotence = true;
  Millis message_timeout{};
  uint64_t queue_max_events = 0;
  uint64_t max_in_flight = 0;
  Millis flush_timeout{};
  Millis stats_interval{};
  Millis unready_after{};
  std::string dead_letter_path;
  std::map<std::string, std::string> properties;
  std::string sasl_mechanism;
  std::string sasl_username;
  std::string sasl_password;
  std::string sasl_password_file;
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_key_password;
  std::string tls_key_password_file;
  bool operator==(const KafkaConfig&) const = default;
};

const OptionTable<KafkaConfig>& kafkaOptionTable();

// Checks what the option table alone cannot: templates, broker list, option combinations, and
// pass-through properties (refused when a first-class option owns the key, or when librdkafka
// does not accept them). Empty when the config is good. The registry's validation hook runs it at
// config load; makeKafkaSink runs it again.
ConfigErrors validateKafkaConfig(const KafkaConfig& cfg);

// Builds the sink (the producer is created here); null, with the reason logged, on failure.
SinkPtr makeKafkaSink(const KafkaConfig& cfg, const BuildContext& ctx);

void registerKafkaSink(Registry& registry);

// Tests only: makes the producer of a running kafka sink raise a fatal error, as librdkafka does
// when an idempotent producer loses its sequence; the sink then recreates its producer. Loop
// thread. False when `sink` is not a kafka sink or is already recreating its producer.
bool raiseKafkaFatalErrorForTest(Sink& sink);

}  // namespace sluice

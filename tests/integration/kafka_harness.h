#pragma once
// A real Apache Kafka broker for integration tests (run by scripts/kafka-broker.sh: KRaft, one
// node, loopback) and a librdkafka consumer and producer to check what reached it.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "harness.h"

namespace sluice::test {

// One broker process with its data in a temp dir. The port is picked once (free at the time)
// and kept, so stop() / kill() and start() again give the same bootstrap address and the same
// data. The destructor kills the broker.
class KafkaBroker {
 public:
  KafkaBroker();
  ~KafkaBroker();
  KafkaBroker(const KafkaBroker&) = delete;
  KafkaBroker& operator=(const KafkaBroker&) = delete;

  // Each returns false on failure, with the reason (and the broker log's tail) in error().
  bool start();
  bool stop();  // SIGTERM, bounded wait, then SIGKILL
  bool kill();  // SIGKILL
  bool running() const;

  std::string bootstrap() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  const std::string& dir() const { return dir_.path(); }
  std::string logPath() const { return dir_.file("broker.log"); }
  const std::string& error() const { return error_; }

  // A broker shared by every test of this binary: started on first use (the JVM start is paid
  // once), killed at exit. Tests that stop or kill their broker own one instead. Returns
  // nullptr (and logs why) when it cannot start.
  static KafkaBroker* shared();

 private:
  bool run(const std::vector<std::string>& args, std::chrono::seconds timeout);

  TempDir dir_;
  int port_ = 0;
  std::string error_;
};

struct KafkaRecord {
  std::string topic;
  int32_t partition = -1;
  int64_t offset = -1;
  std::optional<std::string> key;  // nullopt: the record has no key
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // in record order

  // The value of the first header `name`, or nullopt.
  std::optional<std::string> header(const std::string& name) const;
};

struct ConsumeResult {
  std::vector<KafkaRecord> records;  // per partition in offset order, partitions interleaved
  std::string error;                 // empty unless the consumer itself failed
};

// Reads the records of `topic`, all partitions from the beginning, until at least `count`
// arrived or `timeout` passed (then returns what it has). Waits for the topic to exist. With
// `settle` > 0, goes on reading that long after `count` was reached, so duplicates or extra
// records beyond `count` are seen too.
ConsumeResult consumeAll(const std::string& bootstrap, const std::string& topic, size_t count,
                         std::chrono::milliseconds timeout,
                         std::chrono::milliseconds settle = std::chrono::milliseconds(0));

// Sum of the high watermarks of `topic` (records stored, for a topic never truncated), or -1.
int64_t topicEndOffsetSum(const std::string& bootstrap, const std::string& topic,
                          std::chrono::milliseconds timeout);

struct KafkaProduceRecord {
  std::optional<std::string> key;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Produces with acks=all and waits for every delivery report; returns the number delivered.
size_t produceAll(const std::string& bootstrap, const std::string& topic,
                  const std::vector<KafkaProduceRecord>& records,
                  std::chrono::milliseconds timeout);

}  // namespace sluice::test

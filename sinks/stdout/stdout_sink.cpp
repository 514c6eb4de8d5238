#include "sinks/stdout/stdout_sink.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <ctime>
#include <nlohmann/json.hpp>

#include "agent/utf8.h"

namespace sluice {

namespace {

// At most one warning about invalid UTF-8 per this many milliseconds; the metric counts all.
constexpr uint64_t kInvalidUtf8LogIntervalMs = 60000;

// Writes to fd 1 through libuv's thread pool, so a slow reader of our stdout (a pipe to a
// pager, a full terminal) holds back this sink and never the loop.
class StdoutSink : public Sink {
 public:
  StdoutSink(StdoutConfig cfg, int fd) : cfg_(std::move(cfg)), fd_(fd) { req_.data = this; }

  void start(SinkContext& ctx) override {
    ctx_ = &ctx;
    write_errors_ = &ctx.metrics().counter("WriteErrorCount");
    invalid_utf8_ = &ctx.metrics().counter("InvalidUtf8EventCount");
  }

  void deliver(const Take& take, DeliveryDone done) override {
    buffer_.clear();
    if (cfg_.format == "json") {
      uint64_t replaced = 0;
      take.forEach([&](const EventView& e) { replaced += appendJsonLine(buffer_, e) ? 1 : 0; });
      if (replaced > 0) countInvalidUtf8(replaced);
    } else {
      take.forEach([&](const EventView& e) {
        buffer_.append(e.body());
        buffer_ += '\n';
      });
    }
    written_ = 0;
    done_ = std::move(done);
    writeMore();
  }

  void stop(std::function<void()> done) override { done(); }

 private:
  // The JSON output replaced bytes that are not UTF-8 with U+FFFD: the original bytes are lost,
  // so it is counted and (rate-limited) logged.
  void countInvalidUtf8(uint64_t events) {
    invalid_utf8_->inc(events);
    unlogged_invalid_utf8_ += events;
    uint64_t now = uv_now(ctx_->loop());
    if (logged_invalid_utf8_ && now - last_invalid_utf8_log_ms_ < kInvalidUtf8LogIntervalMs) {
      return;
    }
    spdlog::warn(
        "stdout sink '{}': {} event(s) with invalid UTF-8 in the body or a header; written with "
        "U+FFFD in place of the invalid bytes (InvalidUtf8EventCount)",
        ctx_->name(), unlogged_invalid_utf8_);
    logged_invalid_utf8_ = true;
    last_invalid_utf8_log_ms_ = now;
    unlogged_invalid_utf8_ = 0;
  }

  void writeMore() {
    uv_buf_t buf =
        uv_buf_init(buffer_.data() + written_, static_cast<unsigned>(buffer_.size() - written_));
    int rc = uv_fs_write(ctx_->loop(), &req_, fd_, &buf, 1, -1, &StdoutSink::onWrite);
    if (rc < 0) finish(rc);
  }

  static void onWrite(uv_fs_t* req) {
    auto* self = static_cast<StdoutSink*>(req->data);
    ssize_t result = req->result;
    uv_fs_req_cleanup(req);
    if (result < 0) {
      self->finish(static_cast<int>(result));
      return;
    }
    self->written_ += static_cast<size_t>(result);
    if (self->written_ < self->buffer_.size()) {
      self->writeMore();
    } else {
      self->finish(0);
    }
  }

  void finish(int rc) {
    auto done = std::move(done_);
    done_ = nullptr;
    if (rc == 0) {
      done(DeliveryResult::ok());
      return;
    }
    write_errors_->inc();
    // Part of the batch may already be out: the retry writes it again (at least once).
    done(DeliveryResult::retry(std::string("write to stdout failed: ") + uv_strerror(rc)));
  }

  StdoutConfig cfg_;
  int fd_;
  SinkContext* ctx_ = nullptr;
  Counter* write_errors_ = nullptr;
  Counter* invalid_utf8_ = nullptr;
  bool logged_invalid_utf8_ = false;
  uint64_t last_invalid_utf8_log_ms_ = 0;
  uint64_t unlogged_invalid_utf8_ = 0;
  uv_fs_t req_{};
  std::string buffer_;
  size_t written_ = 0;
  DeliveryDone done_;
};

}  // namespace

bool appendJsonLine(std::string& out, const EventView& event) {
  nlohmann::ordered_json j;
  j["timestamp"] = formatIsoTime(event.timestampNs());
  auto& headers = j["headers"] = nlohmann::ordered_json::object();
  bool valid = isValidUtf8(event.body());
  event.forEachHeader([&](std::string_view k, std::string_view v) {
    valid = valid && isValidUtf8(k) && isValidUtf8(v);
    headers[std::string(k)] = v;
  });
  j["body"] = event.body();
  out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  out += '\n';
  return !valid;
}

SinkPtr makeStdoutSink(const StdoutConfig& cfg, int fd) {
  return std::make_unique<StdoutSink>(cfg, fd);
}

void registerStdoutSink(Registry& registry) {
  OptionTable<StdoutConfig> table;
  table.choice("format", &StdoutConfig::format, {"text", "json"}, "text",
               "text: the body, one event per line; json: one object per line with timestamp, "
               "headers and body.");
  registry.addSink<StdoutConfig>(
      "stdout", "Writes events to standard output.", table,
      [](const StdoutConfig& cfg, const BuildContext&) -> SinkPtr { return makeStdoutSink(cfg); });
}

}  // namespace sluice

#include "sinks/stdout/stdout_sink.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <ctime>
#include <nlohmann/json.hpp>

namespace sluice {

namespace {

// Writes to fd 1 through libuv's thread pool, so a slow reader of our stdout (a pipe to a
// pager, a full terminal) holds back this sink and never the loop.
class StdoutSink : public Sink {
 public:
  explicit StdoutSink(StdoutConfig cfg) : cfg_(std::move(cfg)) { req_.data = this; }

  void start(SinkContext& ctx) override {
    ctx_ = &ctx;
    write_errors_ = &ctx.metrics().counter("WriteErrorCount");
  }

  void deliver(const Take& take, DeliveryDone done) override {
    buffer_.clear();
    if (cfg_.format == "json") {
      take.forEach([&](const EventView& e) { appendJsonLine(buffer_, e); });
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
  void writeMore() {
    uv_buf_t buf =
        uv_buf_init(buffer_.data() + written_, static_cast<unsigned>(buffer_.size() - written_));
    int rc = uv_fs_write(ctx_->loop(), &req_, STDOUT_FILENO, &buf, 1, -1, &StdoutSink::onWrite);
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
  SinkContext* ctx_ = nullptr;
  Counter* write_errors_ = nullptr;
  uv_fs_t req_{};
  std::string buffer_;
  size_t written_ = 0;
  DeliveryDone done_;
};

}  // namespace

void appendJsonLine(std::string& out, const EventView& event) {
  nlohmann::ordered_json j;
  j["timestamp"] = formatIsoTime(event.timestampNs());
  auto& headers = j["headers"] = nlohmann::ordered_json::object();
  event.forEachHeader([&](std::string_view k, std::string_view v) { headers[std::string(k)] = v; });
  j["body"] = event.body();
  out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  out += '\n';
}

void registerStdoutSink(Registry& registry) {
  OptionTable<StdoutConfig> table;
  table.choice("format", &StdoutConfig::format, {"text", "json"}, "text",
               "text: the body, one event per line; json: one object per line with timestamp, "
               "headers and body.");
  registry.addSink<StdoutConfig>("stdout", "Writes events to standard output.", table,
                                 [](const StdoutConfig& cfg, const BuildContext&) -> SinkPtr {
                                   return std::make_unique<StdoutSink>(cfg);
                                 });
}

}  // namespace sluice

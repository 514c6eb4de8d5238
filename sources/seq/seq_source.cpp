#include "sources/seq/seq_source.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>

namespace sluice {

namespace {

struct SeqConfig {
  uint64_t start = 1;
  uint64_t count = 0;
  uint64_t batch_size = 0;
  Millis interval{};
  bool operator==(const SeqConfig&) const = default;
};

class SeqSource : public Source {
 public:
  explicit SeqSource(SeqConfig cfg) : cfg_(cfg) {}
  ~SeqSource() override {
    if (timer_) std::abort();  // stop() must have closed the timer first
  }

  void start(SourceContext& ctx) override {
    ctx_ = &ctx;
    key_ = "seq/" + ctx.name();
    next_ = cfg_.start;
    // Resume after the oldest durable position among the channels.
    std::vector<uint64_t> durable;
    for (const auto& v : ctx.durablePositions(key_)) {
      uint64_t n = 0;
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec == std::errc() && p == v.data() + v.size()) durable.push_back(n);
    }
    if (!durable.empty()) next_ = *std::min_element(durable.begin(), durable.end()) + 1;
    generated_ = &ctx.metrics().counter("EventGeneratedCount");
    spdlog::info("seq source '{}': starting at {}", ctx.name(), next_);
    timer_ = new uv_timer_t;
    uv_timer_init(ctx.loop(), timer_);
    timer_->data = this;
    schedule(0);
  }

  void resume() override {
    if (timer_ && paused_) {
      paused_ = false;
      schedule(0);
    }
  }

  void stop(std::function<void()> done) override {
    stopping_ = true;
    if (!timer_) {
      done();
      return;
    }
    done_ = std::move(done);
    uv_close(reinterpret_cast<uv_handle_t*>(timer_), [](uv_handle_t* h) {
      auto* self = static_cast<SeqSource*>(h->data);
      delete reinterpret_cast<uv_timer_t*>(h);
      self->timer_ = nullptr;
      auto d = std::move(self->done_);
      d();
    });
  }

 private:
  bool finished() const { return cfg_.count != 0 && next_ >= cfg_.start + cfg_.count; }

  void schedule(uint64_t delay_ms) {
    uv_timer_start(
        timer_, [](uv_timer_t* t) { static_cast<SeqSource*>(t->data)->tick(); }, delay_ms, 0);
  }

  void tick() {
    if (stopping_) return;
    if (batch_.empty()) {
      if (finished()) {
        spdlog::info("seq source '{}': finished at {}", ctx_->name(), next_ - 1);
        return;
      }
      uint64_t n = cfg_.batch_size;
      if (cfg_.count != 0) n = std::min(n, cfg_.start + cfg_.count - next_);
      int64_t now = nowNs();
      for (uint64_t i = 0; i < n; ++i) batch_.add(std::to_string(next_ + i), now);
      last_ = next_ + n - 1;
    }
    size_t n = batch_.size();
    if (ctx_->offerWithPositions(batch_, {{key_, std::to_string(last_)}}) == OfferResult::Full) {
      paused_ = true;  // the same batch goes again on resume()
      return;
    }
    generated_->inc(n);
    next_ = last_ + 1;
    schedule(static_cast<uint64_t>(cfg_.interval.count()));
  }

  SeqConfig cfg_;
  SourceContext* ctx_ = nullptr;
  Counter* generated_ = nullptr;
  std::string key_;
  uint64_t next_ = 1;
  uint64_t last_ = 0;
  Batch batch_;
  uv_timer_t* timer_ = nullptr;
  bool paused_ = false;
  bool stopping_ = false;
  std::function<void()> done_;
};

}  // namespace

void registerSeqSource(Registry& registry) {
  OptionTable<SeqConfig> t;
  t.integer("start", &SeqConfig::start, 1, 0, UINT64_MAX / 2, "First number.");
  t.integer("count", &SeqConfig::count, 0, 0, UINT64_MAX / 2,
            "How many numbers in all (across restarts); 0: no end.");
  t.integer("batch_size", &SeqConfig::batch_size, 1000, 1, 1'000'000, "Numbers per batch.");
  t.duration("interval", &SeqConfig::interval, "0", Millis(0), Millis(3'600'000),
             "Pause between batches; 0: as fast as the channels take them.");
  registry.addSource<SeqConfig>(
      "seq",
      "Generates the numbers start, start+1, ... as bodies; resumes from the channels' "
      "durable position after a restart.",
      t, [](const SeqConfig& cfg, const BuildContext&) -> SourcePtr {
        return std::make_unique<SeqSource>(cfg);
      });
}

}  // namespace sluice

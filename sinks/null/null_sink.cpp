#include "sinks/null/null_sink.h"

namespace sluice {

namespace {

struct NullConfig {
  bool operator==(const NullConfig&) const = default;
};

class NullSink : public Sink {
 public:
  void start(SinkContext& ctx) override {
    discarded_ = &ctx.metrics().counter("EventDiscardCount");
  }
  void deliver(const Take& take, DeliveryDone done) override {
    discarded_->inc(take.events());
    done(DeliveryResult::ok());
  }

 private:
  Counter* discarded_ = nullptr;
};

}  // namespace

void registerNullSink(Registry& registry) {
  registry.addSink<NullConfig>("null", "Acknowledges and discards every event (benchmarks).",
                               OptionTable<NullConfig>(),
                               [](const NullConfig&, const BuildContext&) -> SinkPtr {
                                 return std::make_unique<NullSink>();
                               });
}

}  // namespace sluice

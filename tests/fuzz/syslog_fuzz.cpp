// libFuzzer target for the syslog parser and framer (tests/fuzz/run.sh builds and runs it).
// The input is split by its first byte: the framer gets the data in chunks of that size, every
// frame goes through the parser and into a batch, as the source does.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/event.h"
#include "sources/syslog/syslog_framing.h"
#include "sources/syslog/syslog_parser.h"

namespace {

struct ParseAll : sluice::FrameSink {
  sluice::Batch batch;
  size_t max_frame = 0;
  void onFrame(std::string_view frame, bool truncated) override {
    if (frame.size() > max_frame) abort();  // the framer's bound
    sluice::SyslogEventOptions options;
    options.raw_header = true;
    sluice::SyslogFailure f =
        sluice::addSyslogEvent(batch, frame, truncated, 1764072000000000000, options);
    auto view = batch[batch.size() - 1];
    // An invalid message is kept whole.
    if (f != sluice::SyslogFailure::None && view.body() != frame) abort();
    if (batch.size() > 64) batch.clear();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = static_cast<size_t>(data[0] % 32) + 1;
  size_t max_frame = static_cast<size_t>(data[0] / 32 + 1) * 16;
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  // The whole input as one datagram.
  sluice::Batch b;
  sluice::addSyslogEvent(b, input, false, 0, {});
  // The input as a stream, in chunks.
  ParseAll sink;
  sink.max_frame = max_frame;
  sluice::SyslogFramer framer(max_frame);
  for (size_t off = 0; off < input.size(); off += chunk) {
    framer.feed(input.substr(off, chunk), sink);
    if (framer.buffered() > max_frame) abort();
  }
  framer.finish(sink);
  return 0;
}

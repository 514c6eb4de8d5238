#pragma once
// Splits a byte stream into lines, with bounded memory.
//
// Feed it chunks as they are read (from a pipe, a file, a socket); it emits every complete line
// without its '\n' (and without a trailing '\r' when strip_cr is set). A line that lies wholly
// inside one chunk is emitted as a view into that chunk: no copy, no allocation. Only the partial
// line at the end of a chunk is copied, and at most max_line_bytes of it are ever held.
//
// Lines longer than max_line_bytes (counted without the '\n' and the stripped '\r'):
//   - Split: emitted as consecutive pieces of max_line_bytes (the last one shorter); every byte
//     is kept and each piece after the first counts in splitCount().
//   - Truncate: the first max_line_bytes are emitted, the rest up to the newline is dropped; the
//     line counts in truncatedCount() and the dropped bytes in discardedBytes().
//
// A view passed to the callback is valid only during the call. Not thread-safe; one splitter
// per stream.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace sluice {

enum class LongLinePolicy { Split, Truncate };

struct LineSplitterOptions {
  size_t max_line_bytes = size_t{1} << 20;  // >= 1
  LongLinePolicy on_long_line = LongLinePolicy::Split;
  bool strip_cr = true;
};

// Receives lines; the view is valid only during the call.
class LineSink {
 public:
  virtual ~LineSink() = default;
  virtual void onLine(std::string_view line) = 0;
};

class LineSplitter {
 public:
  explicit LineSplitter(LineSplitterOptions options = {});

  // Splits `chunk`; emits each line completed by it.
  void feed(std::string_view chunk, LineSink& sink);
  // Emits the final partial line (one with no newline yet), if any. The stream may go on
  // afterwards: the next byte starts a new line.
  void flush(LineSink& sink);

  // The same with any callable f(std::string_view).
  template <class F>
  requires(!std::is_base_of_v<LineSink, std::remove_cvref_t<F>>) void feed(std::string_view chunk,
                                                                           F&& f) {
    CallableSink<F> sink(f);
    feed(chunk, static_cast<LineSink&>(sink));
  }
  template <class F>
  requires(!std::is_base_of_v<LineSink, std::remove_cvref_t<F>>) void flush(F&& f) {
    CallableSink<F> sink(f);
    flush(static_cast<LineSink&>(sink));
  }

  // Forgets the partial line (a file was truncated or replaced); counters are kept.
  void reset();

  // Whether bytes of an unfinished line are held (or being discarded).
  bool hasPartial() const { return !partial_.empty() || discarding_ || held_cr_; }
  // Bytes of the unfinished line currently held in memory (<= max_line_bytes).
  size_t partialBytes() const { return partial_.size(); }

  // Extra pieces emitted by the Split policy (a line cut in three pieces counts 2).
  uint64_t splitCount() const { return split_count_; }
  // Lines cut short by the Truncate policy.
  uint64_t truncatedCount() const { return truncated_count_; }
  // Bytes dropped by the Truncate policy.
  uint64_t discardedBytes() const { return discarded_bytes_; }

  const LineSplitterOptions& options() const { return options_; }

 private:
  template <class F>
  class CallableSink final : public LineSink {
   public:
    explicit CallableSink(F& f) : f_(f) {}
    void onLine(std::string_view line) override { f_(line); }

   private:
    F& f_;
  };

  // A line that starts and ends inside one chunk; `line` has no '\n' and no stripped '\r'.
  void emitWhole(std::string_view line, LineSink& sink);
  // Adds bytes that are certainly part of the current line (no newline, no pending '\r').
  void appendContent(std::string_view data, LineSink& sink);
  // Adds bytes of an unfinished line (no newline in `data`).
  void appendPartial(std::string_view data, LineSink& sink);
  // Ends the current line: emits what is held.
  void finishLine(LineSink& sink);

  LineSplitterOptions options_;
  std::string partial_;      // held bytes of the current line, <= max_line_bytes
  bool discarding_ = false;  // Truncate: the current line overflowed, drop until newline
  bool held_cr_ = false;     // the last byte seen was a '\r' that may turn out to end the line
  uint64_t split_count_ = 0;
  uint64_t truncated_count_ = 0;
  uint64_t discarded_bytes_ = 0;
};

}  // namespace sluice

#pragma once
// Splits a syslog byte stream (one TCP or TLS connection) into messages.
//
// Each frame is detected on its own (RFC 6587): a frame that starts with digits followed by a
// space is octet-counted ("57 <13>1 ..."); any other frame is non-transparent and ends at LF or
// NUL, with a CR before the LF removed. Empty frames (blank lines, a LF after an octet-counted
// frame) are skipped. A frame longer than max_frame is cut: its first max_frame bytes are
// emitted with truncated = true and the rest is skipped up to its end, so one connection never
// holds more than max_frame bytes however long the frame. At the end of the stream, a partial
// frame is emitted (truncated when it was octet-counted and short).
//
// Frames that lie whole inside one fed chunk are passed as views of that chunk, without a copy.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sluice {

class FrameSink {
 public:
  virtual ~FrameSink() = default;
  // `frame` is valid during the call only.
  virtual void onFrame(std::string_view frame, bool truncated) = 0;
};

class SyslogFramer {
 public:
  explicit SyslogFramer(size_t max_frame) : max_frame_(max_frame == 0 ? 1 : max_frame) {}

  void feed(std::string_view data, FrameSink& sink);
  // End of stream: emits a partial frame, if any, and resets.
  void finish(FrameSink& sink);
  void reset();

  // Bytes held for an unfinished frame (at most max_frame).
  size_t buffered() const { return buf_.size() + digits_len_; }
  uint64_t octetCountedFrames() const { return octet_frames_; }
  uint64_t truncatedFrames() const { return truncated_frames_; }

 private:
  enum class State { Start, Digits, Counted, Line };
  // Appends to buf_ up to max_frame_; returns false when something was cut.
  void keep(std::string_view part);
  void emit(FrameSink& sink, std::string_view frame, bool truncated);
  void emitLine(FrameSink& sink, std::string_view frame, bool truncated);

  size_t max_frame_;
  State state_ = State::Start;
  char digits_[10] = {};
  size_t digits_len_ = 0;
  uint64_t remaining_ = 0;  // Counted: bytes of the frame still to come
  bool cut_ = false;        // the current frame exceeded max_frame_
  std::string buf_;
  uint64_t octet_frames_ = 0;
  uint64_t truncated_frames_ = 0;
};

}  // namespace sluice

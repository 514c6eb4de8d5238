#include "sources/syslog/syslog_framing.h"

#include <algorithm>
#include <cstring>

namespace sluice {

namespace {

bool isTerminator(char c) { return c == '\n' || c == '\0'; }

// The first LF or NUL in [p, end), or end.
const char* findTerminator(const char* p, const char* end) {
  const char* lf = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
  const char* limit = lf ? lf : end;
  const char* nul = static_cast<const char*>(std::memchr(p, '\0', static_cast<size_t>(limit - p)));
  return nul ? nul : limit;
}

}  // namespace

void SyslogFramer::reset() {
  state_ = State::Start;
  digits_len_ = 0;
  remaining_ = 0;
  cut_ = false;
  buf_.clear();
}

void SyslogFramer::keep(std::string_view part) {
  if (buf_.size() >= max_frame_) {
    if (!part.empty()) cut_ = true;
    return;
  }
  size_t room = max_frame_ - buf_.size();
  if (part.size() > room) {
    cut_ = true;
    part = part.substr(0, room);
  }
  buf_.append(part);
}

void SyslogFramer::emit(FrameSink& sink, std::string_view frame, bool truncated) {
  if (truncated) ++truncated_frames_;
  sink.onFrame(frame, truncated);
}

void SyslogFramer::emitLine(FrameSink& sink, std::string_view frame, bool truncated) {
  if (!truncated && !frame.empty() && frame.back() == '\r') frame.remove_suffix(1);
  if (frame.empty()) return;
  emit(sink, frame, truncated);
}

void SyslogFramer::feed(std::string_view data, FrameSink& sink) {
  const char* p = data.data();
  const char* end = p + data.size();
  while (p < end) {
    switch (state_) {
      case State::Start: {
        char c = *p;
        if (isTerminator(c) || c == '\r') {
          ++p;  // blank line or the LF some senders put after an octet-counted frame
          break;
        }
        cut_ = false;
        buf_.clear();
        if (c >= '1' && c <= '9') {
          digits_len_ = 0;
          state_ = State::Digits;
        } else {
          state_ = State::Line;
        }
        break;
      }
      case State::Digits: {
        char c = *p;
        if (c >= '0' && c <= '9' && digits_len_ < 9) {
          digits_[digits_len_++] = c;
          ++p;
          break;
        }
        if (c == ' ') {
          uint64_t len = 0;
          for (size_t i = 0; i < digits_len_; ++i) len = len * 10 + (digits_[i] - '0');
          ++p;
          ++octet_frames_;
          remaining_ = len;
          digits_len_ = 0;
          state_ = State::Counted;
          break;
        }
        // Not a length after all: the digits begin a non-transparent frame.
        keep(std::string_view(digits_, digits_len_));
        digits_len_ = 0;
        state_ = State::Line;
        break;
      }
      case State::Counted: {
        size_t avail = static_cast<size_t>(end - p);
        size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, avail));
        if (buf_.empty() && !cut_ && take == remaining_ && take <= max_frame_) {
          emit(sink, std::string_view(p, take), false);  // whole frame in this chunk: no copy
        } else {
          keep(std::string_view(p, take));
          if (take == remaining_) emit(sink, buf_, cut_);
        }
        p += take;
        remaining_ -= take;
        if (remaining_ == 0) {
          buf_.clear();
          cut_ = false;
          state_ = State::Start;
        }
        break;
      }
      case State::Line: {
        const char* t = findTerminator(p, end);
        if (t == end) {
          keep(std::string_view(p, static_cast<size_t>(end - p)));
          p = end;
          break;
        }
        std::string_view part(p, static_cast<size_t>(t - p));
        if (buf_.empty() && !cut_ && part.size() <= max_frame_) {
          emitLine(sink, part, false);
        } else {
          keep(part);
          emitLine(sink, buf_, cut_);
        }
        p = t + 1;
        buf_.clear();
        cut_ = false;
        state_ = State::Start;
        break;
      }
    }
  }
}

void SyslogFramer::finish(FrameSink& sink) {
  switch (state_) {
    case State::Start:
      break;
    case State::Digits:
      keep(std::string_view(digits_, digits_len_));
      emitLine(sink, buf_, cut_);
      break;
    case State::Counted:
      if (!buf_.empty()) emit(sink, buf_, true);  // the sender promised more than it sent
      break;
    case State::Line:
      emitLine(sink, buf_, cut_);
      break;
  }
  reset();
}

}  // namespace sluice

#include "agent/line_splitter.h"

#include <algorithm>
#include <cstring>

namespace sluice {

namespace {
// After a long line, a held buffer bigger than this is released rather than kept for ever.
constexpr size_t kKeepCapacity = 64 * 1024;
}  // namespace

LineSplitter::LineSplitter(LineSplitterOptions options) : options_(options) {
  if (options_.max_line_bytes == 0) options_.max_line_bytes = 1;
}

void LineSplitter::feed(std::string_view chunk, LineSink& sink) {
  const char* p = chunk.data();
  const char* end = p + chunk.size();
  while (p < end) {
    const auto* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
    if (nl == nullptr) {
      appendPartial(std::string_view(p, static_cast<size_t>(end - p)), sink);
      return;
    }
    std::string_view segment(p, static_cast<size_t>(nl - p));
    p = nl + 1;
    if (!hasPartial()) {
      // Common case: the whole line is inside this chunk.
      if (options_.strip_cr && !segment.empty() && segment.back() == '\r') {
        segment.remove_suffix(1);
      }
      emitWhole(segment, sink);
      continue;
    }
    if (options_.strip_cr) {
      if (held_cr_ && !segment.empty()) appendContent("\r", sink);
      held_cr_ = false;  // with an empty segment, the held '\r' ended the line: stripped
      if (!segment.empty() && segment.back() == '\r') segment.remove_suffix(1);
    }
    appendContent(segment, sink);
    finishLine(sink);
  }
}

void LineSplitter::flush(LineSink& sink) {
  if (!hasPartial()) return;
  held_cr_ = false;  // a final '\r' is stripped like one before a newline
  finishLine(sink);
}

void LineSplitter::reset() {
  partial_.clear();
  if (partial_.capacity() > kKeepCapacity) partial_ = std::string();
  discarding_ = false;
  held_cr_ = false;
}

void LineSplitter::emitWhole(std::string_view line, LineSink& sink) {
  const size_t max = options_.max_line_bytes;
  if (line.size() <= max) {
    sink.onLine(line);
    return;
  }
  if (options_.on_long_line == LongLinePolicy::Truncate) {
    sink.onLine(line.substr(0, max));
    ++truncated_count_;
    discarded_bytes_ += line.size() - max;
    return;
  }
  sink.onLine(line.substr(0, max));
  for (size_t off = max; off < line.size(); off += max) {
    sink.onLine(line.substr(off, max));
    ++split_count_;
  }
}

void LineSplitter::appendContent(std::string_view data, LineSink& sink) {
  const size_t max = options_.max_line_bytes;
  if (options_.on_long_line == LongLinePolicy::Truncate) {
    if (discarding_) {
      discarded_bytes_ += data.size();
      return;
    }
    size_t take = std::min(max - partial_.size(), data.size());
    partial_.append(data.substr(0, take));
    if (take < data.size()) {
      discarding_ = true;
      discarded_bytes_ += data.size() - take;
    }
    return;
  }
  while (!data.empty()) {
    if (partial_.size() == max) {
      // More content follows a full piece: the line is long, emit the piece now.
      sink.onLine(partial_);
      ++split_count_;
      partial_.clear();
    }
    size_t take = std::min(max - partial_.size(), data.size());
    partial_.append(data.substr(0, take));
    data.remove_prefix(take);
  }
}

void LineSplitter::appendPartial(std::string_view data, LineSink& sink) {
  if (data.empty()) return;
  if (!options_.strip_cr) {
    appendContent(data, sink);
    return;
  }
  // A '\r' at the end of what we have may be the one of a "\r\n": decide when the next byte
  // comes, so that a line of exactly max_line_bytes plus "\r\n" is not split.
  if (held_cr_) {
    held_cr_ = false;
    appendContent("\r", sink);
  }
  if (data.back() == '\r') {
    data.remove_suffix(1);
    held_cr_ = true;
  }
  appendContent(data, sink);
}

void LineSplitter::finishLine(LineSink& sink) {
  sink.onLine(partial_);
  if (discarding_) {
    ++truncated_count_;
    discarding_ = false;
  }
  partial_.clear();
  if (partial_.capacity() > kKeepCapacity) partial_ = std::string();
}

}  // namespace sluice

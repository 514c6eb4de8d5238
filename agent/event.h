#pragma once
// Events and batches.
//
// An event is a body (bytes, no encoding assumed), a timestamp and a small ordered list of
// headers. Events only exist inside a Batch, which owns all their bytes in one arena: moving a
// batch moves the arena and never copies a body. Batches are built on the loop thread by a
// source, decorated by interceptors, then frozen (shared as `std::shared_ptr<const Batch>`) when
// they are put into channels, so several channels and consumers read the same bytes.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

class Batch;

// A read-only view of one event of a batch; valid while the batch lives and is not modified.
class EventView {
 public:
  EventView(const Batch* batch, uint32_t index) : batch_(batch), index_(index) {}

  std::string_view body() const;
  int64_t timestampNs() const;
  std::optional<std::string_view> header(std::string_view key) const;
  // Calls f(key, value) for every header, in insertion order.
  template <class F>
  void forEachHeader(F&& f) const;
  uint32_t index() const { return index_; }

 private:
  const Batch* batch_;
  uint32_t index_;
};

class Batch {
 public:
  Batch() = default;
  Batch(Batch&&) noexcept = default;
  Batch& operator=(Batch&&) noexcept = default;
  Batch(const Batch&) = default;
  Batch& operator=(const Batch&) = default;

  size_t size() const { return events_.size(); }
  bool empty() const { return events_.empty(); }
  // Payload bytes: bodies plus header keys and values. This is what channel byte limits count.
  size_t bytes() const { return payload_bytes_; }

  // Appends an event and returns its index.
  uint32_t add(std::string_view body, int64_t timestamp_ns);
  // Sets a header, replacing the value of an existing header of that name.
  void setHeader(uint32_t event, std::string_view key, std::string_view value);
  // Removes a header; returns whether it was present.
  bool removeHeader(uint32_t event, std::string_view key);
  void setTimestamp(uint32_t event, int64_t timestamp_ns) {
    events_[event].timestamp_ns = timestamp_ns;
  }

  EventView operator[](size_t i) const { return EventView(this, static_cast<uint32_t>(i)); }
  // Removes the events for which keep(view) is false, keeping the order of the rest. Their
  // bytes stay in the arena until the batch is cleared; bytes() no longer counts them.
  template <class F>
  size_t retainIf(F&& keep);
  // Appends a copy of `event` (from any batch) with its headers and timestamp.
  uint32_t append(const EventView& event);
  void clear();
  void reserve(size_t events, size_t bytes);

 private:
  friend class EventView;
  static constexpr uint32_t kNone = UINT32_MAX;
  struct HeaderRec {
    uint32_t key_off, key_len, value_off, value_len, next;
  };
  struct EventRec {
    uint32_t body_off, body_len;
    uint32_t first_header = kNone, last_header = kNone;
    int64_t timestamp_ns;
  };

  uint32_t store(std::string_view s);
  std::string_view text(uint32_t off, uint32_t len) const {
    return std::string_view(arena_).substr(off, len);
  }
  const HeaderRec* findHeader(uint32_t event, std::string_view key) const;

  std::string arena_;
  std::vector<EventRec> events_;
  std::vector<HeaderRec> headers_;
  size_t payload_bytes_ = 0;
};

inline std::string_view EventView::body() const {
  const auto& e = batch_->events_[index_];
  return batch_->text(e.body_off, e.body_len);
}

inline int64_t EventView::timestampNs() const { return batch_->events_[index_].timestamp_ns; }

template <class F>
void EventView::forEachHeader(F&& f) const {
  for (uint32_t h = batch_->events_[index_].first_header; h != Batch::kNone;
       h = batch_->headers_[h].next) {
    const auto& rec = batch_->headers_[h];
    f(batch_->text(rec.key_off, rec.key_len), batch_->text(rec.value_off, rec.value_len));
  }
}

template <class F>
size_t Batch::retainIf(F&& keep) {
  size_t out = 0, removed = 0;
  for (size_t i = 0; i < events_.size(); ++i) {
    if (keep(EventView(this, static_cast<uint32_t>(i)))) {
      events_[out++] = events_[i];
      continue;
    }
    ++removed;
    payload_bytes_ -= events_[i].body_len;
    for (uint32_t h = events_[i].first_header; h != kNone; h = headers_[h].next) {
      payload_bytes_ -= headers_[h].key_len + headers_[h].value_len;
    }
  }
  events_.resize(out);
  return removed;
}

// Nanoseconds since the Unix epoch, from the system clock.
int64_t nowNs();
// An event time as ISO-8601 in UTC with milliseconds: 2026-11-25T14:08:25.893Z.
std::string formatIsoTime(int64_t ns);

}  // namespace sluice

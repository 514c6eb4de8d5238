#include "agent/event.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace sluice {

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string formatIsoTime(int64_t ns) {
  time_t secs = static_cast<time_t>(ns / 1'000'000'000);
  int millis = static_cast<int>((ns / 1'000'000) % 1000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[48];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, sizeof(buf) - n, ".%03dZ", millis);
  return buf;
}

uint32_t Batch::store(std::string_view s) {
  // Offsets are 32-bit: a batch is bounded far below 4 GiB by every source's batch limits.
  if (arena_.size() + s.size() > UINT32_MAX) std::abort();
  auto off = static_cast<uint32_t>(arena_.size());
  arena_.append(s);
  return off;
}

uint32_t Batch::add(std::string_view body, int64_t timestamp_ns) {
  if (body.data() >= arena_.data() && body.data() < arena_.data() + arena_.size()) {
    std::string copy(body);  // from this very batch: the arena may move while appending
    return add(std::string_view(copy), timestamp_ns);
  }
  EventRec rec{};
  rec.body_off = store(body);
  rec.body_len = static_cast<uint32_t>(body.size());
  rec.timestamp_ns = timestamp_ns;
  events_.push_back(rec);
  payload_bytes_ += body.size();
  return static_cast<uint32_t>(events_.size() - 1);
}

const Batch::HeaderRec* Batch::findHeader(uint32_t event, std::string_view key) const {
  for (uint32_t h = events_[event].first_header; h != kNone; h = headers_[h].next) {
    if (text(headers_[h].key_off, headers_[h].key_len) == key) return &headers_[h];
  }
  return nullptr;
}

void Batch::setHeader(uint32_t event, std::string_view key, std::string_view value) {
  // Text taken from this batch (a body slice, say) moves when the arena grows: copy it first.
  auto inside = [this](std::string_view v) {
    return v.data() >= arena_.data() && v.data() < arena_.data() + arena_.size();
  };
  if (inside(key) || inside(value)) {
    std::string k(key), v(value);
    setHeader(event, std::string_view(k), std::string_view(v));
    return;
  }
  if (const HeaderRec* found = findHeader(event, key)) {
    auto& rec = headers_[static_cast<size_t>(found - headers_.data())];
    payload_bytes_ -= rec.value_len;
    rec.value_off = store(value);
    rec.value_len = static_cast<uint32_t>(value.size());
    payload_bytes_ += value.size();
    return;
  }
  HeaderRec rec{};
  rec.key_off = store(key);
  rec.key_len = static_cast<uint32_t>(key.size());
  rec.value_off = store(value);
  rec.value_len = static_cast<uint32_t>(value.size());
  rec.next = kNone;
  headers_.push_back(rec);
  auto idx = static_cast<uint32_t>(headers_.size() - 1);
  auto& e = events_[event];
  if (e.last_header == kNone) {
    e.first_header = idx;
  } else {
    headers_[e.last_header].next = idx;
  }
  e.last_header = idx;
  payload_bytes_ += key.size() + value.size();
}

bool Batch::removeHeader(uint32_t event, std::string_view key) {
  auto& e = events_[event];
  uint32_t prev = kNone;
  for (uint32_t h = e.first_header; h != kNone; prev = h, h = headers_[h].next) {
    if (text(headers_[h].key_off, headers_[h].key_len) != key) continue;
    if (prev == kNone) {
      e.first_header = headers_[h].next;
    } else {
      headers_[prev].next = headers_[h].next;
    }
    if (e.last_header == h) e.last_header = prev;
    payload_bytes_ -= headers_[h].key_len + headers_[h].value_len;
    return true;
  }
  return false;
}

uint32_t Batch::append(const EventView& event) {
  uint32_t i = add(event.body(), event.timestampNs());
  event.forEachHeader([&](std::string_view k, std::string_view v) { setHeader(i, k, v); });
  return i;
}

void Batch::clear() {
  arena_.clear();
  events_.clear();
  headers_.clear();
  payload_bytes_ = 0;
}

void Batch::reserve(size_t events, size_t bytes) {
  events_.reserve(events);
  arena_.reserve(bytes);
}

std::optional<std::string_view> EventView::header(std::string_view key) const {
  const auto* rec = batch_->findHeader(index_, key);
  if (!rec) return std::nullopt;
  return batch_->text(rec->value_off, rec->value_len);
}

}  // namespace sluice

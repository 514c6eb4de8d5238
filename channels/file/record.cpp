#include "channels/file/record.h"

#include <isa-l/crc.h>

#include <cstring>

namespace sluice::filech {

uint32_t crc32c(const void* data, size_t size, uint32_t seed) {
  // crc32_iscsi works on the inverted register; this gives the standard CRC-32C (Castagnoli).
  return ~crc32_iscsi(static_cast<unsigned char*>(const_cast<void*>(data)), static_cast<int>(size),
                      ~seed);
}

void putU32(std::string& out, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out.append(b, 4);
}

void putU64(std::string& out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out.append(b, 8);
}

uint32_t getU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

uint64_t getU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

namespace {

void putString(std::string& out, std::string_view s) {
  putU32(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

struct Reader {
  std::string_view in;
  size_t pos = 0;
  bool ok = true;
  uint32_t u32() {
    if (in.size() - pos < 4) return ok = false, 0;
    uint32_t v = getU32(in.data() + pos);
    pos += 4;
    return v;
  }
  uint64_t u64() {
    if (in.size() - pos < 8) return ok = false, 0;
    uint64_t v = getU64(in.data() + pos);
    pos += 8;
    return v;
  }
  std::string_view str() {
    uint32_t n = u32();
    if (!ok || in.size() - pos < n) return ok = false, std::string_view();
    auto s = in.substr(pos, n);
    pos += n;
    return s;
  }
};

}  // namespace

void encodeRecord(std::string& out, uint64_t seq, const Batch& batch, const Positions& positions) {
  size_t start = out.size();
  putU32(out, kRecordMagic);
  putU32(out, 0);  // length, patched below
  putU32(out, 0);  // crc, patched below
  putU64(out, seq);
  size_t payload = out.size();
  putU32(out, static_cast<uint32_t>(batch.size()));
  for (size_t i = 0; i < batch.size(); ++i) {
    EventView ev = batch[i];
    putU64(out, static_cast<uint64_t>(ev.timestampNs()));
    uint32_t headers = 0;
    ev.forEachHeader([&headers](std::string_view, std::string_view) { ++headers; });
    putU32(out, headers);
    ev.forEachHeader([&out](std::string_view k, std::string_view v) {
      putString(out, k);
      putString(out, v);
    });
    putString(out, ev.body());
  }
  putU32(out, static_cast<uint32_t>(positions.size()));
  for (const auto& [k, v] : positions) {
    putString(out, k);
    putString(out, v);
  }
  auto length = static_cast<uint32_t>(out.size() - payload);
  std::string len;
  putU32(len, length);
  std::memcpy(&out[start + 4], len.data(), 4);
  uint32_t crc = crc32c(out.data() + start + 12, out.size() - start - 12);
  std::string c;
  putU32(c, crc);
  std::memcpy(&out[start + 8], c.data(), 4);
}

bool parseHeader(const char* p, RecordHeader& h) {
  if (getU32(p) != kRecordMagic) return false;
  h.length = getU32(p + 4);
  h.crc = getU32(p + 8);
  h.seq = getU64(p + 12);
  return true;
}

bool checkCrc(const RecordHeader& h, const char* payload) {
  std::string seq;
  putU64(seq, h.seq);
  uint32_t crc = crc32c(seq.data(), 8);
  crc = crc32c(payload, h.length, crc);
  return crc == h.crc;
}

namespace {

// Walks a payload checked by checkCrc: begin(event count), then event(ts, headers, body) per
// event, then its positions. False when it does not parse.
template <class Begin, class Event>
bool walkPayload(std::string_view payload, Positions& positions, Begin&& begin, Event&& event) {
  Reader r{payload};
  uint32_t n = r.u32();
  if (!r.ok || n > payload.size()) return false;
  begin(n);
  std::vector<std::pair<std::string_view, std::string_view>> hs;
  for (uint32_t i = 0; i < n && r.ok; ++i) {
    auto ts = static_cast<int64_t>(r.u64());
    uint32_t headers = r.u32();
    if (!r.ok || headers > payload.size()) return false;
    hs.clear();
    for (uint32_t h = 0; h < headers && r.ok; ++h) {
      auto k = r.str();
      auto v = r.str();
      hs.emplace_back(k, v);
    }
    auto body = r.str();
    if (!r.ok) return false;
    event(ts, hs, body);
  }
  uint32_t np = r.u32();
  for (uint32_t i = 0; i < np && r.ok; ++i) {
    auto k = r.str();
    auto v = r.str();
    if (r.ok) positions.emplace_back(std::string(k), std::string(v));
  }
  return r.ok && r.pos == payload.size();
}

}  // namespace

bool decodePayload(std::string_view payload, Batch& batch, Positions& positions) {
  return walkPayload(
      payload, positions, [&](uint32_t n) { batch.reserve(n, payload.size()); },
      [&](int64_t ts, const auto& hs, std::string_view body) {
        uint32_t idx = batch.add(body, ts);
        for (const auto& [k, v] : hs) batch.setHeader(idx, k, v);
      });
}

bool scanPayload(std::string_view payload, uint32_t& events, Positions& positions) {
  events = 0;
  return walkPayload(
      payload, positions, [&](uint32_t n) { events = n; },
      [](int64_t, const auto&, std::string_view) {});
}

}  // namespace sluice::filech

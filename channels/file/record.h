#pragma once
// Records of the file channel's segments (the format is described in file_channel.h).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/event.h"

namespace sluice::filech {

constexpr uint32_t kRecordMagic = 0x43524c53;  // "SLRC" little-endian
constexpr size_t kRecordHeader = 20;           // magic, length, crc, seq
constexpr uint32_t kMaxRecordPayload = 1u << 30;

using Positions = std::vector<std::pair<std::string, std::string>>;

uint32_t crc32c(const void* data, size_t size, uint32_t seed = 0);

// Appends a whole record (header + payload) for `batch` starting at event number `seq`.
void encodeRecord(std::string& out, uint64_t seq, const Batch& batch, const Positions& positions);

// A record's header fields, read from 20 bytes. False when the magic is wrong.
struct RecordHeader {
  uint32_t length = 0;
  uint32_t crc = 0;
  uint64_t seq = 0;
};
bool parseHeader(const char* p, RecordHeader& h);
// True when the crc of seq + payload matches.
bool checkCrc(const RecordHeader& h, const char* payload);

// Decodes a payload checked by checkCrc. False when it does not parse (a bug or a corruption
// that the CRC missed).
bool decodePayload(std::string_view payload, Batch& batch, Positions& positions);
// As decodePayload (the same checks), but copies no event: only their count and the positions.
// The start-up scan uses it, as it needs no more.
bool scanPayload(std::string_view payload, uint32_t& events, Positions& positions);

// Little-endian helpers for the small metadata files.
void putU32(std::string& out, uint32_t v);
void putU64(std::string& out, uint64_t v);
uint32_t getU32(const char* p);
uint64_t getU64(const char* p);

}  // namespace sluice::filech

#include "channels/file/file_inspect.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "channels/file/file_ops.h"
#include "channels/file/record.h"

namespace sluice {

namespace {

struct SegmentReport {
  uint64_t records = 0;
  uint64_t events = 0;
  uint64_t first_seq = UINT64_MAX;
  uint64_t end_seq = 0;
  std::vector<uint64_t> bad_offsets;
  bool torn_tail = false;
};

// Reads a whole file; false when it cannot.
bool readAll(PosixFileOps& ops, const std::string& path, std::string& data) {
  int fd = ops.open(path, O_RDONLY, 0);
  if (fd < 0) return false;
  uint64_t size = 0;
  bool ok = ops.fileSize(fd, size) == 0;
  if (ok) {
    data.resize(size);
    size_t done = 0;
    while (ok && done < size) {
      ssize_t n = ops.pread(fd, data.data() + done, size - done, static_cast<off_t>(done));
      if (n <= 0)
        ok = false;
      else
        done += static_cast<size_t>(n);
    }
  }
  ops.close(fd);
  return ok;
}

// A record at off that verifies: its total size, else 0.
size_t validAt(const std::string& d, size_t off, uint64_t& seq, uint64_t& events) {
  if (d.size() - off < filech::kRecordHeader) return 0;
  filech::RecordHeader h;
  if (!filech::parseHeader(d.data() + off, h)) return 0;
  if (h.length > d.size() - off - filech::kRecordHeader) return 0;
  const char* payload = d.data() + off + filech::kRecordHeader;
  if (!filech::checkCrc(h, payload)) return 0;
  Batch b;
  filech::Positions p;
  if (!filech::decodePayload(std::string_view(payload, h.length), b, p)) return 0;
  seq = h.seq;
  events = b.size();
  return filech::kRecordHeader + h.length;
}

SegmentReport checkSegment(const std::string& d) {
  SegmentReport r;
  size_t off = 0;
  while (off < d.size()) {
    uint64_t seq = 0, events = 0;
    size_t n = validAt(d, off, seq, events);
    if (n) {
      ++r.records;
      r.events += events;
      r.first_seq = std::min(r.first_seq, seq);
      r.end_seq = seq + events;
      off += n;
      continue;
    }
    // Find the next record that verifies.
    size_t next = d.size();
    for (size_t i = off + 1; i + 4 <= d.size(); ++i) {
      if (filech::getU32(d.data() + i) != filech::kRecordMagic) continue;
      if (validAt(d, i, seq, events)) {
        next = i;
        break;
      }
    }
    if (next == d.size()) {
      r.torn_tail = true;
      r.bad_offsets.push_back(off);
      break;
    }
    r.bad_offsets.push_back(off);
    off = next;
  }
  return r;
}

}  // namespace

int inspectFileChannel(const std::string& dir, std::ostream& out) {
  PosixFileOps ops;
  std::vector<std::string> names;
  if (int rc = ops.listDir(dir, names); rc < 0) {
    out << "cannot list " << dir << ": " << std::strerror(-rc) << "\n";
    return 2;
  }
  std::sort(names.begin(), names.end());
  int status = 0;
  uint64_t total = 0;
  out << "directory " << dir << "\n";
  for (const auto& n : names) {
    if (n.rfind("seg-", 0) != 0) continue;
    std::string data;
    if (!readAll(ops, dir + "/" + n, data)) {
      out << "  " << n << "  UNREADABLE\n";
      status = 1;
      continue;
    }
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".log") != 0) {
      out << "  " << n << "  " << data.size() << " bytes (set aside)\n";
      continue;
    }
    total += data.size();
    SegmentReport r = checkSegment(data);
    out << "  " << n << "  " << data.size() << " bytes, " << r.records << " records, " << r.events
        << " events";
    if (r.records) out << " [" << r.first_seq << ", " << r.end_seq << ")";
    out << "\n";
    for (size_t i = 0; i < r.bad_offsets.size(); ++i) {
      bool tail = r.torn_tail && i + 1 == r.bad_offsets.size();
      out << "    " << (tail ? "torn tail" : "invalid record") << " at offset " << r.bad_offsets[i]
          << "\n";
      status = 1;
    }
  }
  out << "  total " << total << " bytes in segments\n";
  for (const auto& n : names) {
    if (n.rfind("cursor-", 0) != 0 || (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0)) {
      continue;
    }
    std::string data;
    if (!readAll(ops, dir + "/" + n, data) || data.size() != 44 ||
        filech::crc32c(data.data(), 40) != filech::getU32(data.data() + 40)) {
      out << "  " << n << "  INVALID\n";
      status = 1;
      continue;
    }
    out << "  " << n << "  low water " << filech::getU64(data.data() + 8) << " (segment "
        << filech::getU64(data.data() + 16) << ", offset " << filech::getU64(data.data() + 24)
        << ")\n";
  }
  std::string pos;
  if (readAll(ops, dir + "/positions", pos)) {
    bool ok = pos.size() >= 24 && filech::crc32c(pos.data(), pos.size() - 4) ==
                                      filech::getU32(pos.data() + pos.size() - 4);
    if (ok) {
      out << "  positions  " << filech::getU32(pos.data() + 16) << " keys as of segment "
          << filech::getU64(pos.data() + 8) << "\n";
    } else {
      out << "  positions  INVALID\n";
      status = 1;
    }
  }
  return status;
}

}  // namespace sluice

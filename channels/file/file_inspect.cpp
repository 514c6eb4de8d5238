#include "channels/file/file_inspect.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
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
  std::vector<std::pair<uint64_t, uint64_t>> gaps;  // events missing between records
};

// A gap in event numbers: events [begin, end) are in no record.
struct Gap {
  uint64_t begin = 0;
  uint64_t end = 0;
  std::string where;
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

// key: the segment's name (the event number its first record holds).
SegmentReport checkSegment(const std::string& d, uint64_t key) {
  SegmentReport r;
  r.end_seq = key;
  size_t off = 0;
  while (off < d.size()) {
    uint64_t seq = 0, events = 0;
    size_t n = validAt(d, off, seq, events);
    if (n) {
      if (seq > r.end_seq) r.gaps.emplace_back(r.end_seq, seq);
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
  std::vector<Gap> gaps;
  bool have_segment = false;
  uint64_t first_key = 0;
  uint64_t expected = 0;  // the event number the next segment should start at
  std::string previous;
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
    uint64_t key = std::strtoull(n.c_str() + 4, nullptr, 10);
    if (!have_segment) {
      have_segment = true;
      first_key = key;
    } else if (key > expected) {
      gaps.push_back({expected, key, "between " + previous + " and " + n});
    }
    SegmentReport r = checkSegment(data, key);
    for (const auto& [b, e] : r.gaps) gaps.push_back({b, e, "inside " + n});
    expected = std::max(key, r.end_seq);
    previous = n;
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
    uint64_t low = filech::getU64(data.data() + 8);
    out << "  " << n << "  low water " << low << " (segment " << filech::getU64(data.data() + 16)
        << ", offset " << filech::getU64(data.data() + 24) << ")\n";
    // Segments go only after every cursor file passed them.
    if (have_segment && low < first_key) {
      gaps.push_back({low, first_key, "before the oldest segment, which " + n + " needs"});
    }
  }
  uint64_t lost = 0;
  for (const auto& g : gaps) {
    out << "  events lost [" << g.begin << ", " << g.end << ") " << g.end - g.begin << " events, "
        << g.where << "\n";
    lost += g.end - g.begin;
    status = 1;
  }
  if (lost) out << "  total " << lost << " events lost\n";
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

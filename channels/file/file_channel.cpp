#include "channels/file/file_channel.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace sluice {

using filech::Loc;
using filech::Positions;

namespace {

constexpr uint32_t kCursorMagic = 0x55434c53;     // "SLCU"
constexpr uint32_t kPositionsMagic = 0x4f504c53;  // "SLPO"
constexpr uint64_t kEventOverhead = 24;           // per event in a record, roughly
constexpr uint64_t kMaxBackoffMs = 5000;
constexpr uint64_t kMaxQueuedBytes = 8ull << 20;  // puts waiting for the writer, in memory

uint32_t eventBytes(const EventView& ev) {
  size_t n = ev.body().size();
  ev.forEachHeader([&n](std::string_view k, std::string_view v) { n += k.size() + v.size(); });
  return static_cast<uint32_t>(n);
}

uint64_t estimate(size_t events, size_t bytes) {
  return filech::kRecordHeader + 8 + bytes + events * kEventOverhead;
}

std::string escapeName(const std::string& name) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : name) {
    if (std::isalnum(c) || c == '_' || c == '.' || c == '-') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

int hexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::string unescapeName(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hexDigit(s[i + 1]) >= 0 && hexDigit(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hexDigit(s[i + 1]) * 16 + hexDigit(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool parseSegName(const std::string& name, uint64_t& key) {
  // seg-<20 digits>.log
  if (name.size() != 4 + 20 + 4 || name.compare(0, 4, "seg-") != 0 ||
      name.compare(24, 4, ".log") != 0) {
    return false;
  }
  key = 0;
  for (size_t i = 4; i < 24; ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    key = key * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  return true;
}

std::string withCrc(std::string s) {
  filech::putU32(s, filech::crc32c(s.data(), s.size()));
  return s;
}

bool crcOk(const std::string& s) {
  if (s.size() < 4) return false;
  return filech::crc32c(s.data(), s.size() - 4) == filech::getU32(s.data() + s.size() - 4);
}

// The commit journal's reserved position key prefix (split so that \x01 is not read as \x01c).
const std::string kJournalPrefix = std::string("\x01") + "cursor:";

bool isJournalKey(const std::string& key) { return key.rfind(kJournalPrefix, 0) == 0; }

void putLoc(std::string& s, const Loc& loc) {
  filech::putU64(s, loc.seg);
  filech::putU64(s, loc.off);
  filech::putU64(s, loc.seq);
}

Loc getLoc(const char* p) {
  return {filech::getU64(p), filech::getU64(p + 8), filech::getU64(p + 16)};
}

std::string encodeJournal(const CursorLedger<Loc>& ledger) {
  // Merged ranges: the record stays small however many takes are in flight.
  auto ranges = ledger.mergedUncommitted();
  std::string s;
  s.reserve(40 + ranges.size() * 40);
  filech::putU32(s, 1);
  filech::putU64(s, ledger.nextPos());
  putLoc(s, ledger.nextLoc());
  filech::putU32(s, static_cast<uint32_t>(ranges.size()));
  for (const auto& r : ranges) {
    filech::putU64(s, r.begin);
    filech::putU64(s, r.end);
    putLoc(s, r.loc);
  }
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// FileCursor

FileCursor::FileCursor(FileChannel* channel, std::string name, uint64_t start, Loc loc)
    : channel_(channel), name_(std::move(name)), ledger_(start, loc) {}

Take FileCursor::take(size_t max_events, size_t max_bytes) {
  if (!channel_) return {};
  FileChannel& ch = *channel_;
  ch.take_attempt_->inc();

  FileChannel::TakeBuilder tb;
  tb.max_events = std::max<size_t>(max_events, 1);
  tb.max_bytes = max_bytes;
  auto rec = ledger_.gather(
      ch.tail_pos_,
      [&ch, &tb](uint64_t begin, uint64_t end, Loc& loc) {
        return ch.collect(begin, end, loc, tb);
      },
      [&tb] { return tb.full; });

  if (tb.events == 0) {
    // collect may have skipped lost events without handing any out.
    ledger_.recomputeLowWater();
    wants_ready_ = true;
    return {};
  }
  uint64_t id = ledger_.add(std::move(rec), tb.events);
  ch.take_success_->inc(tb.events);
  return makeTake(id, std::move(tb.slices), tb.events, tb.bytes);
}

uint64_t FileCursor::lag() const {
  if (!channel_) return 0;
  return ledger_.lag(channel_->tail_pos_);
}

void FileCursor::commitTake(uint64_t id) {
  if (!ledger_.commit(id)) return;
  if (!channel_) {
    // Detached: the take is settled; the cursor frees itself with its last one.
    if (!ledger_.hasOutstanding()) delete this;
    return;
  }
  channel_->commit_->inc();
  channel_->journalSoon(this);
  uint64_t old = ledger_.lowWater();
  ledger_.recomputeLowWater();
  if (ledger_.lowWater() != old) {
    channel_->cursorDirty(this);
    channel_->maybeFree();
  }
}

void FileCursor::rollbackTake(uint64_t id) {
  if (!channel_) {
    // Detached: the events are no longer the channel's business; only settle the take.
    if (ledger_.commit(id) && !ledger_.hasOutstanding()) delete this;
    return;
  }
  if (!ledger_.rollback(id)) return;
  channel_->rollback_->inc();
  if (wants_ready_) channel_->queueReady(this);
}

// ---------------------------------------------------------------------------------------------
// FileChannel: construction and start-up

FileChannel::FileChannel(const FileChannelConfig& config, const BuildContext& context,
                         FileOpsPtr ops)
    : config_(config), name_(context.name), ops_(std::move(ops)), metrics_(context.metrics) {
  if (!context.loop) {
    spdlog::critical("file channel '{}' built without a loop", name_);
    std::abort();
  }
  if (!ops_) ops_ = std::make_shared<PosixFileOps>();
  dir_ = config_.dir;
  if (dir_.empty()) {
    std::string data = context.agent ? context.agent->data_dir : std::string(".");
    dir_ = data + "/channels/" + name_;
  }
  if (!metrics_) metrics_ = std::make_shared<MetricSet>("CHANNEL", name_);
  put_attempt_ = &metrics_->counter("EventPutAttemptCount");
  put_success_ = &metrics_->counter("EventPutSuccessCount");
  put_refused_ = &metrics_->counter("PutRefusedCount");
  take_attempt_ = &metrics_->counter("EventTakeAttemptCount");
  take_success_ = &metrics_->counter("EventTakeSuccessCount");
  rollback_ = &metrics_->counter("RollbackCount");
  commit_ = &metrics_->counter("CommitCount");
  fsync_count_ = &metrics_->counter("FsyncCount");
  corrupt_ = &metrics_->counter("CorruptRecordCount");
  damaged_ = &metrics_->counter("DamagedSegmentCount");
  write_errors_ = &metrics_->counter("WriteErrorCount");
  events_lost_ = &metrics_->counter("EventsLostCount");

  async_ = new uv_async_t;
  uv_async_init(context.loop, async_, &FileChannel::onAsync);
  async_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(async_));
  checkpoint_timer_ = new uv_timer_t;
  uv_timer_init(context.loop, checkpoint_timer_);
  checkpoint_timer_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(checkpoint_timer_));

  ok_ = open();
  if (!ok_) return;

  metrics_->gauge(
      "ChannelSize", [this] { return static_cast<double>(tail_pos_ - heldLow()); }, this);
  metrics_->gauge(
      "ChannelBytes", [this] { return static_cast<double>(disk_bytes_); }, this);
  metrics_->gauge(
      "ChannelCapacity", [this] { return static_cast<double>(config_.max_bytes); }, this);
  metrics_->gauge(
      "ChannelFillPercentage", [this] { return fillPercentage(); }, this);
  metrics_->gauge(
      "FsyncLatencyMaxMs",
      [this] {
        return static_cast<double>(std::max(fsync_max_us_.load(), fsync_max_prev_us_.load())) /
               1000.0;
      },
      this);
  pending_config_ = config_;
  wcfg_ = config_;
  min_free_ = config_.min_free_bytes;
  writer_ = std::thread([this] { writerMain(); });
}

FileChannel::~FileChannel() {
  if (destroyed_) *destroyed_ = true;
  metrics_->clearGauges(this);
  if (writer_.joinable()) {
    // A simulated kill -9 loses the journal records still due at the end of this loop turn.
    if (crashed_) {
      journal_queue_.clear();
    } else {
      checkpoint();
    }
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    writer_.join();
  }
  for (auto& [name, c] : cursors_) {
    metrics_->clearGauges(c);
    c->channel_ = nullptr;
    if (!c->ledger_.hasOutstanding()) delete c;
  }
  for (auto& [key, seg] : segments_) {
    if (seg.read_fd >= 0) ops_->close(seg.read_fd);
  }
  if (active_fd_ >= 0) ops_->close(active_fd_);
  if (lock_fd_ >= 0) ops_->close(lock_fd_);
  async_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(async_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
  uv_close(reinterpret_cast<uv_handle_t*>(checkpoint_timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
}

std::string FileChannel::segPath(uint64_t key) const {
  char buf[40];
  std::snprintf(buf, sizeof buf, "seg-%020" PRIu64 ".log", key);
  return dir_ + "/" + buf;
}

bool FileChannel::open() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    spdlog::error("file channel '{}': cannot create directory {}: {}", name_, dir_, ec.message());
    return false;
  }
  lock_fd_ = ops_->open(dir_ + "/lock", O_RDWR | O_CREAT, 0644);
  if (lock_fd_ < 0) {
    spdlog::error("file channel '{}': cannot open {}/lock: {}", name_, dir_,
                  std::strerror(-lock_fd_));
    return false;
  }
  if (int rc = ops_->lockExclusive(lock_fd_); rc < 0) {
    if (rc == -EWOULDBLOCK) {
      spdlog::error(
          "file channel '{}': directory {} is in use by another sluice agent or channel (lock "
          "held on {}/lock); refusing to share it",
          name_, dir_, dir_);
    } else {
      spdlog::error("file channel '{}': cannot lock {}/lock: {}", name_, dir_, std::strerror(-rc));
    }
    ops_->close(lock_fd_);
    lock_fd_ = -1;
    return false;
  }

  std::vector<std::string> names;
  if (int rc = ops_->listDir(dir_, names); rc < 0) {
    spdlog::error("file channel '{}': cannot list {}: {}", name_, dir_, std::strerror(-rc));
    return false;
  }
  std::sort(names.begin(), names.end());
  uint64_t positions_seg = 0;
  bool have_positions = false;
  for (const auto& n : names) {
    uint64_t key = 0;
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) {
      ops_->unlink(dir_ + "/" + n);
    } else if (parseSegName(n, key)) {
      segments_[key].path = dir_ + "/" + n;
    } else if (n.compare(0, 7, "cursor-") == 0) {
      PersistedCursor pc;
      if (readPersistedCursor(dir_ + "/" + n, pc)) {
        persisted_[unescapeName(n.substr(7))] = pc;
      } else {
        spdlog::warn("file channel '{}': cursor file {}/{} is unreadable; ignored", name_, dir_, n);
      }
    } else if (n == "positions") {
      have_positions = readPositionsFile(positions_seg);
    }
  }

  // Open every segment (no reads) to learn its size; an unopenable one is moved aside.
  for (auto it = segments_.begin(); it != segments_.end();) {
    Segment& seg = it->second;
    int fd = ops_->open(seg.path, O_RDONLY, 0);
    uint64_t size = 0;
    int rc = fd < 0 ? fd : ops_->fileSize(fd, size);
    if (rc < 0) {
      if (fd >= 0) ops_->close(fd);
      uint64_t key = it->first;
      ++it;
      markDamaged(key, rc);
      continue;
    }
    seg.read_fd = fd;
    seg.size = size;
    ++it;
  }
  // Empty segments other than the last hold nothing.
  for (auto it = segments_.begin(); it != segments_.end();) {
    auto next = std::next(it);
    if (next != segments_.end() && it->second.size == 0) {
      if (it->second.read_fd >= 0) ops_->close(it->second.read_fd);
      ops_->unlink(it->second.path);
      segments_.erase(it);
    }
    it = next;
  }

  if (!segments_.empty()) {
    head_pos_ = segments_.begin()->first;
    uint64_t last = segments_.rbegin()->first;
    // Positions: the checkpoint, then (fallback, rare) any segment between it and the last,
    // then the last segment.
    if (!have_positions) positions_seg = head_pos_;
    tail_pos_ = last;
    for (auto it = segments_.lower_bound(positions_seg); it != segments_.end(); ++it) {
      if (it->first == last) break;
      scanSegment(it->first, false);  // a crash between a roll and its positions checkpoint
    }
    scanSegment(last, true);
  }
  mergeJournal();
  for (const auto& [name, pc] : persisted_) tail_pos_ = std::max(tail_pos_, pc.low);
  assign_pos_ = tail_pos_;
  if (segments_.empty()) head_pos_ = tail_pos_;
  disk_bytes_ = 0;
  for (const auto& [key, seg] : segments_) disk_bytes_ += seg.size;

  // The writer appends to the last segment.
  if (!segments_.empty()) {
    auto& [key, seg] = *segments_.rbegin();
    active_fd_ = ops_->open(seg.path, O_RDWR, 0);
    if (active_fd_ < 0) {
      spdlog::error("file channel '{}': cannot open {} for writing: {}", name_, seg.path,
                    std::strerror(-active_fd_));
      return false;
    }
    active_seg_ = key;
    active_size_ = seg.size;
    have_active_ = true;
  }
  writer_positions_ = positions_;
  uint64_t free_bytes = 0;
  if (ops_->statvfs(dir_, free_bytes) == 0) free_bytes_ = free_bytes;
  spdlog::info("file channel '{}': opened {} ({} segments, {} bytes, events {}..{})", name_, dir_,
               segments_.size(), disk_bytes_, head_pos_, tail_pos_);
  return true;
}

void FileChannel::scanSegment(uint64_t key, bool last) {
  Segment& seg = segments_[key];
  Loc loc{key, 0, key};
  uint64_t good = 0;
  while (loc.off < seg.size) {
    Rec rec;
    int r = readRecordFromDisk(seg, loc, rec, false);
    if (r < 0) {
      markDamaged(key, -EIO);
      return;
    }
    if (r > 0) {
      applyRecordPositions(rec.positions);
      if (last) tail_pos_ = rec.next.seq;
      good = rec.next.off;
      loc = rec.next;
      continue;
    }
    uint64_t seq = 0;
    uint64_t next = scanForward(seg, loc.off + 1, seq);
    if (next >= seg.size) {
      if (!last) {
        reportCorrupt(key, loc.off, "invalid record at the end of a segment");
        return;
      }
      // A torn tail: cut it off.
      spdlog::warn("file channel '{}': torn tail in {} at offset {} ({} bytes cut)", name_,
                   seg.path, loc.off, seg.size - loc.off);
      int fd = ops_->open(seg.path, O_RDWR, 0);
      if (fd >= 0) {
        ops_->ftruncate(fd, static_cast<off_t>(good));
        ops_->fsync(fd);
        ops_->close(fd);
      }
      seg.size = good;
      break;
    }
    reportCorrupt(key, loc.off, "invalid record");
    loc = {key, next, seq};
  }
}

void FileChannel::applyRecordPositions(const Positions& p) {
  for (const auto& [k, v] : p) positions_[k] = v;
}

bool FileChannel::readPersistedCursor(const std::string& file, PersistedCursor& out) {
  int fd = ops_->open(file, O_RDONLY, 0);
  if (fd < 0) return false;
  char buf[48];
  ssize_t n = ops_->pread(fd, buf, sizeof buf, 0);
  ops_->close(fd);
  if (n != 44) return false;
  std::string s(buf, 44);
  if (!crcOk(s) || filech::getU32(buf) != kCursorMagic || filech::getU32(buf + 4) != 1) {
    return false;
  }
  out.low = filech::getU64(buf + 8);
  out.loc.seg = filech::getU64(buf + 16);
  out.loc.off = filech::getU64(buf + 24);
  out.loc.seq = filech::getU64(buf + 32);
  return true;
}

bool FileChannel::readPositionsFile(uint64_t& seg) {
  int fd = ops_->open(dir_ + "/positions", O_RDONLY, 0);
  if (fd < 0) return false;
  uint64_t size = 0;
  std::string s;
  if (ops_->fileSize(fd, size) == 0 && size < (64u << 20)) {
    s.resize(size);
    if (ops_->pread(fd, s.data(), size, 0) != static_cast<ssize_t>(size)) s.clear();
  }
  ops_->close(fd);
  if (s.size() < 24 || !crcOk(s) || filech::getU32(s.data()) != kPositionsMagic) {
    spdlog::warn("file channel '{}': positions checkpoint unreadable; rebuilding from segments",
                 name_);
    return false;
  }
  seg = filech::getU64(s.data() + 8);
  uint32_t count = filech::getU32(s.data() + 16);
  size_t p = 20;
  size_t end = s.size() - 4;
  std::map<std::string, std::string> m;
  for (uint32_t i = 0; i < count; ++i) {
    std::string kv[2];
    for (auto& x : kv) {
      if (end - p < 4) return false;
      uint32_t len = filech::getU32(s.data() + p);
      p += 4;
      if (end - p < len) return false;
      x.assign(s.data() + p, len);
      p += len;
    }
    m[kv[0]] = kv[1];
  }
  positions_ = std::move(m);
  return true;
}

std::string FileChannel::positionsFileContent(uint64_t seg) const {
  std::string s;
  filech::putU32(s, kPositionsMagic);
  filech::putU32(s, 1);
  filech::putU64(s, seg);
  filech::putU32(s, static_cast<uint32_t>(writer_positions_.size()));
  for (const auto& [k, v] : writer_positions_) {
    filech::putU32(s, static_cast<uint32_t>(k.size()));
    s += k;
    filech::putU32(s, static_cast<uint32_t>(v.size()));
    s += v;
  }
  return withCrc(std::move(s));
}

// ---------------------------------------------------------------------------------------------
// Reading

int FileChannel::readFd(Segment& seg) {
  if (seg.read_fd < 0) seg.read_fd = ops_->open(seg.path, O_RDONLY, 0);
  return seg.read_fd;
}

int FileChannel::readRecordFromDisk(Segment& seg, const Loc& loc, Rec& out, bool events) {
  if (seg.size < loc.off || seg.size - loc.off < filech::kRecordHeader) return 0;
  int fd = readFd(seg);
  if (fd < 0) return -2;
  char hdr[filech::kRecordHeader];
  ssize_t n = ops_->pread(fd, hdr, sizeof hdr, static_cast<off_t>(loc.off));
  if (n < 0) return -1;
  if (n != static_cast<ssize_t>(sizeof hdr)) return 0;
  filech::RecordHeader h;
  if (!filech::parseHeader(hdr, h)) return 0;
  uint64_t room = seg.size - loc.off - filech::kRecordHeader;
  if (h.length > room || h.length > filech::kMaxRecordPayload || h.seq < loc.seq) return 0;
  std::string payload(h.length, '\0');
  n = ops_->pread(fd, payload.data(), h.length,
                  static_cast<off_t>(loc.off + filech::kRecordHeader));
  if (n < 0) return -1;
  if (n != static_cast<ssize_t>(h.length)) return 0;
  if (!filech::checkCrc(h, payload.data())) return 0;
  out.positions.clear();
  uint64_t count = 0;
  if (events) {
    auto batch = std::make_shared<Batch>();
    if (!filech::decodePayload(payload, *batch, out.positions)) return 0;
    count = batch->size();
    out.batch = std::move(batch);
  } else {
    uint32_t n = 0;
    if (!filech::scanPayload(payload, n, out.positions)) return 0;
    count = n;
    out.batch = nullptr;
  }
  out.loc = {loc.seg, loc.off, h.seq};
  out.next = {loc.seg, loc.off + filech::kRecordHeader + h.length, h.seq + count};
  return 1;
}

uint64_t FileChannel::scanForward(Segment& seg, uint64_t from, uint64_t& seq) {
  int fd = readFd(seg);
  if (fd < 0) return seg.size;
  constexpr size_t kChunk = 1 << 20;
  std::string buf;
  uint64_t off = from;
  while (off + filech::kRecordHeader <= seg.size) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(kChunk, seg.size - off));
    buf.resize(want);
    ssize_t n = ops_->pread(fd, buf.data(), want, static_cast<off_t>(off));
    if (n <= 0) return seg.size;
    for (size_t i = 0; i + 4 <= static_cast<size_t>(n); ++i) {
      if (filech::getU32(buf.data() + i) != filech::kRecordMagic) continue;
      Rec rec;
      if (readRecordFromDisk(seg, {0, off + i, 0}, rec, false) == 1) {
        seq = rec.loc.seq;
        return off + i;
      }
    }
    if (static_cast<size_t>(n) < 4) break;
    off += static_cast<uint64_t>(n) - 3;  // a magic may straddle chunks
  }
  return seg.size;
}

void FileChannel::reportCorrupt(uint64_t seg, uint64_t off, const char* why) {
  if (!reported_.insert({seg, off}).second) return;
  corrupt_->inc();
  spdlog::error(
      "file channel '{}': corrupt record in {} at offset {} ({}); skipped to the next "
      "valid record",
      name_, segPath(seg), off, why);
}

void FileChannel::reportLost(uint64_t begin, uint64_t end, const std::string& where) {
  // Several consumers cross the same gap: each event is counted once.
  uint64_t fresh = 0;
  uint64_t at = begin;
  auto it = lost_.upper_bound(begin);
  if (it != lost_.begin() && std::prev(it)->second > begin) --it;
  for (; at < end && it != lost_.end() && it->first < end; ++it) {
    if (it->first > at) fresh += it->first - at;
    at = std::max(at, it->second);
  }
  if (at < end) fresh += end - at;
  if (fresh == 0) return;
  // Merge [begin, end) into the disjoint ranges.
  uint64_t b = begin, e = end;
  auto lo = lost_.upper_bound(b);
  if (lo != lost_.begin() && std::prev(lo)->second >= b) --lo;
  while (lo != lost_.end() && lo->first <= e) {
    b = std::min(b, lo->first);
    e = std::max(e, lo->second);
    lo = lost_.erase(lo);
  }
  lost_.emplace(b, e);
  events_lost_->inc(fresh);
  spdlog::error(
      "file channel '{}': events {}..{} ({} events) are missing from the log ({}): lost to "
      "damage, skipped",
      name_, begin, end - 1, end - begin, where);
}

void FileChannel::markDamaged(uint64_t key, int error) {
  auto it = segments_.find(key);
  if (it == segments_.end()) return;
  damaged_->inc();
  Segment& seg = it->second;
  if (seg.read_fd >= 0) ops_->close(seg.read_fd);
  seg.read_fd = -1;
  if (writer_.joinable() && std::next(it) == segments_.end()) {
    // The writer appends here: keep it, skip what cannot be read.
    spdlog::error("file channel '{}': cannot read {}: {}; skipping it", name_, seg.path,
                  std::strerror(-error));
    return;
  }
  std::string aside = seg.path + ".damaged";
  int rc = ops_->rename(seg.path, aside);
  spdlog::error("file channel '{}': cannot read {}: {}; {} and skipped", name_, seg.path,
                std::strerror(-error), rc == 0 ? "moved aside to " + aside : "left in place");
  disk_bytes_ -= std::min(disk_bytes_, seg.size);
  segments_.erase(it);
  if (!segments_.empty()) head_pos_ = std::max(head_pos_, segments_.begin()->first);
}

void FileChannel::cacheInsert(const Rec& rec) {
  auto key = std::make_pair(rec.loc.seg, rec.loc.off);
  if (cache_.count(key)) return;
  uint64_t bytes = rec.batch->bytes() + 64 * (rec.batch->size() + 1);
  CacheEntry& e = cache_[key];
  e.rec = rec;
  e.rec.positions.clear();
  e.bytes = bytes;
  cache_bytes_ += bytes;
  cache_order_.push_back(key);
  while (cache_bytes_ > config_.read_cache_bytes && !cache_order_.empty()) {
    auto it = cache_.find(cache_order_.front());
    cache_order_.pop_front();
    if (it == cache_.end()) continue;
    cache_bytes_ -= it->second.bytes;
    cache_.erase(it);
  }
}

FileChannel::ReadResult FileChannel::readAt(Loc& loc, Rec& out) {
  for (;;) {
    auto it = segments_.find(loc.seg);
    if (it == segments_.end()) {
      auto nx = segments_.lower_bound(loc.seg);
      if (nx == segments_.end()) return ReadResult::End;
      loc = {nx->first, 0, nx->first};
      continue;
    }
    Segment& seg = it->second;
    if (loc.off >= seg.size) {
      auto nx = std::next(it);
      if (nx == segments_.end()) return ReadResult::End;
      loc = {nx->first, 0, nx->first};
      continue;
    }
    auto c = cache_.find({loc.seg, loc.off});
    if (c != cache_.end()) {
      out = c->second.rec;
      return ReadResult::Ok;
    }
    int r = readRecordFromDisk(seg, loc, out);
    if (r == -2) {
      // Cannot open it now (EMFILE, ENOMEM...): not damage; the take tries again later.
      spdlog::warn("file channel '{}': cannot open {} to read; retrying later", name_, seg.path);
      return ReadResult::Retry;
    }
    if (r < 0) {
      uint64_t key = loc.seg;
      markDamaged(key, -EIO);
      if (segments_.count(key)) loc.off = seg.size;  // kept (being written): skip its rest
      continue;
    }
    if (r == 0) {
      reportCorrupt(loc.seg, loc.off, "bad magic, length or CRC");
      uint64_t seq = loc.seq;
      uint64_t next = scanForward(seg, loc.off + 1, seq);
      loc = {loc.seg, next, seq};
      continue;
    }
    out.positions.clear();
    cacheInsert(out);
    return ReadResult::Ok;
  }
}

uint64_t FileChannel::eventBytesRange(const Batch& b, uint32_t begin, uint32_t end) const {
  if (begin == 0 && end == b.size()) return b.bytes();
  uint64_t n = 0;
  for (uint32_t i = begin; i < end; ++i) n += eventBytes(b[i]);
  return n;
}

uint64_t FileChannel::collect(uint64_t pos, uint64_t end, Loc& loc, TakeBuilder& tb) {
  while (pos < end && !tb.full) {
    Rec r;
    ReadResult rr = readAt(loc, r);
    if (rr == ReadResult::Retry) break;
    if (rr != ReadResult::Ok) {
      reportLost(pos, end, "past the end of the log");
      return end;
    }
    uint64_t n = r.batch->size();
    uint64_t rend = r.loc.seq + n;
    loc = r.loc;
    if (rend <= pos) {
      loc = r.next;
      continue;
    }
    if (r.loc.seq > pos) {
      // Events lost to damage (a corrupt record, a segment cut short, emptied or deleted): the
      // next record found starts past them, so they cannot be delivered.
      reportLost(pos, std::min(r.loc.seq, end), "before " + segPath(r.loc.seg));
      pos = std::min(r.loc.seq, end);
      if (pos >= end) break;
    }
    const Batch& batch = *r.batch;
    auto b = static_cast<uint32_t>(pos - r.loc.seq);
    auto stop = static_cast<uint32_t>(std::min<uint64_t>(n, end - r.loc.seq));
    uint32_t avail = stop - b;
    auto cap = static_cast<uint32_t>(std::min<size_t>(avail, tb.max_events - tb.events));
    size_t budget = tb.max_bytes > tb.bytes ? tb.max_bytes - tb.bytes : 0;
    uint32_t k = 0;
    uint64_t bytes = 0;
    if (b == 0 && cap == n && batch.bytes() <= budget) {
      k = cap;
      bytes = batch.bytes();
    } else {
      while (k < cap) {
        uint64_t e = eventBytes(batch[b + k]);
        if (bytes + e > budget && !(k == 0 && tb.events == 0)) break;
        bytes += e;
        ++k;
      }
    }
    if (k == 0) {
      tb.full = true;
      break;
    }
    Slice* last = tb.slices.empty() ? nullptr : &tb.slices.back();
    if (last && last->batch == r.batch && last->end == b) {
      last->end = b + k;
    } else {
      tb.slices.push_back({r.batch, b, b + k});
    }
    tb.events += k;
    tb.bytes += bytes;
    pos += k;
    if (pos == rend) loc = r.next;
    if (k < avail || tb.events >= tb.max_events) tb.full = true;
  }
  return pos;
}

// ---------------------------------------------------------------------------------------------
// Channel interface

bool FileChannel::hasRoom(size_t events, size_t bytes) const {
  uint64_t need = estimate(events, bytes);
  uint64_t used = disk_bytes_ + queued_bytes_;
  bool empty = tail_pos_ == heldLow() && inflight_ == 0;
  bool room = (used + need <= config_.max_bytes) || (empty && need <= config_.max_bytes);
  uint64_t free_bytes = free_bytes_.load();
  uint64_t after = free_bytes > queued_bytes_ + need ? free_bytes - queued_bytes_ - need : 0;
  space_refused_ = after < config_.min_free_bytes;
  space_refused_free_ = free_bytes;
  if (space_refused_) room = false;
  // Bounds the memory of what waits for the writer (a slow or failing disk).
  if (inflight_ > 0 && queued_bytes_ + need > kMaxQueuedBytes) room = false;
  if (!room) space_wanted_ = true;
  return room;
}

bool FileChannel::put(std::shared_ptr<const Batch> batch, PutOptions options) {
  size_t n = batch ? batch->size() : 0;
  if (n == 0 && options.positions.empty()) {
    if (options.on_durable) {
      durable_queue_.push_back(std::move(options.on_durable));
      schedule();
    }
    return true;
  }
  if (!batch) batch = std::make_shared<Batch>();
  put_attempt_->inc(n);
  if (n > 0 && !hasRoom(n, batch->bytes())) {
    put_refused_->inc();
    return false;
  }
  Job job;
  job.kind = Job::Kind::Append;
  job.id = next_put_id_++;
  job.seq = assign_pos_;
  job.reserved = estimate(n, batch->bytes());
  job.batch = std::move(batch);
  job.positions = std::move(options.positions);
  if (options.on_durable) durable_[job.id] = std::move(options.on_durable);
  assign_pos_ += n;
  queued_bytes_ += job.reserved;
  ++inflight_;
  put_success_->inc(n);
  enqueue(std::move(job));
  updateRef();
  return true;
}

uint64_t FileChannel::addSpaceListener(std::function<void()> fn) {
  uint64_t id = next_listener_id_++;
  listeners_.push_back({id, std::move(fn), false});
  return id;
}

void FileChannel::removeSpaceListener(uint64_t handle) {
  for (size_t i = 0; i < listeners_.size(); ++i) {
    if (listeners_[i].id != handle) continue;
    if (firing_listeners_) {
      listeners_[i].removed = true;
    } else {
      listeners_.erase(listeners_.begin() + static_cast<ptrdiff_t>(i));
    }
    return;
  }
}

Cursor& FileChannel::cursor(const std::string& consumer) {
  auto it = cursors_.find(consumer);
  if (it != cursors_.end()) return *it->second;
  uint64_t start = head_pos_;
  Loc loc{head_pos_, 0, head_pos_};
  if (!segments_.empty()) loc = {segments_.begin()->first, 0, segments_.begin()->first};
  auto p = persisted_.find(consumer);
  if (p != persisted_.end() && p->second.exact && journalUsable(p->second)) {
    // A saved Loc is a hint: the segment it names may be gone (a range taken just as its
    // segment rolled carries the old segment's end). Such a Loc is replaced by the start of the
    // segment that holds the position.
    PersistedCursor& pc = p->second;
    auto fix = [this](uint64_t pos, Loc& loc) {
      if (!segments_.count(loc.seg)) loc = locate(pos);
    };
    fix(pc.low, pc.loc);
    fix(pc.next, pc.next_loc);
    for (auto& r : pc.uncommitted) fix(r.begin, r.loc);
    auto* c = new FileCursor(this, consumer, pc.low, pc.loc);
    c->ledger_.restore(pc.next, pc.next_loc, pc.uncommitted);
    persisted_.erase(p);
    cursors_.emplace(consumer, c);
    metrics_->gauge(
        "ConsumerLag_" + consumer, [c] { return static_cast<double>(c->lag()); }, c);
    cursorDirty(c);
    return *c;
  }
  if (p != persisted_.end()) {
    // Segments go only after every cursor file passed them: a consumer whose events begin
    // before the oldest segment lost them (a segment deleted, emptied or moved aside).
    if (p->second.low < head_pos_)
      reportLost(p->second.low, head_pos_, "before the oldest segment");
    if (p->second.low >= head_pos_) {
      start = p->second.low;
      loc = segments_.count(p->second.loc.seg) ? p->second.loc : locate(start);
    }
    persisted_.erase(p);
  }
  auto* c = new FileCursor(this, consumer, start, loc);
  cursors_.emplace(consumer, c);
  metrics_->gauge(
      "ConsumerLag_" + consumer, [c] { return static_cast<double>(c->lag()); }, c);
  cursorDirty(c);
  journal(consumer, encodeJournal(c->ledger_));
  return *c;
}

void FileChannel::dropCursor(const std::string& consumer) {
  journal(consumer, "");  // tombstone: a cursor of that name made later starts afresh
  Job job;
  job.kind = Job::Kind::Unlink;
  job.path = dir_ + "/cursor-" + escapeName(consumer);
  if (persisted_.erase(consumer)) enqueue(job);
  auto it = cursors_.find(consumer);
  if (it == cursors_.end()) {
    maybeFree();
    return;
  }
  FileCursor* c = it->second;
  cursors_.erase(it);
  metrics_->clearGauges(c);
  ready_queue_.erase(std::remove(ready_queue_.begin(), ready_queue_.end(), c), ready_queue_.end());
  journal_queue_.erase(std::remove(journal_queue_.begin(), journal_queue_.end(), c),
                       journal_queue_.end());
  std::replace(firing_ready_.begin(), firing_ready_.end(), c, static_cast<FileCursor*>(nullptr));
  c->channel_ = nullptr;
  c->on_ready_ = nullptr;
  if (!c->ledger_.hasOutstanding()) delete c;
  enqueue(job);
  maybeFree();
}

ChannelStats FileChannel::stats() const {
  ChannelStats s;
  s.events = tail_pos_ - heldLow();
  s.bytes = disk_bytes_;
  s.capacity_bytes = config_.max_bytes;
  s.location = dir_;
  s.free_bytes = free_bytes_.load();
  s.min_free_bytes = config_.min_free_bytes;
  uint64_t queued = queued_bytes_ + config_.min_free_bytes;
  s.refusing_for_space =
      s.free_bytes < queued || (space_refused_ && s.free_bytes <= space_refused_free_);
  return s;
}

bool FileChannel::reconfigure(const FileChannelConfig& config) {
  // Everything but the directory applies in place (a new channel on the same directory would be
  // refused by the lock the old one holds).
  if (config.dir != config_.dir) return false;
  config_ = config;
  min_free_ = config.min_free_bytes;
  {
    std::lock_guard lock(mutex_);
    pending_config_ = config;
  }
  cv_.notify_one();
  if (space_wanted_) {
    space_wanted_ = false;
    space_queued_ = true;
    schedule();
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Freeing and cursor persistence

uint64_t FileChannel::heldLow() const {
  if (cursors_.empty() && persisted_.empty()) return head_pos_;
  uint64_t low = tail_pos_;
  for (const auto& [name, c] : cursors_) low = std::min(low, c->ledger_.lowWater());
  for (const auto& [name, p] : persisted_) low = std::min(low, p.low);
  return std::max(low, head_pos_);
}

void FileChannel::maybeFree() {
  if (cursors_.empty() && persisted_.empty()) return;
  uint64_t low = heldLow();
  bool freed = false;
  while (segments_.size() > 1) {
    auto it = segments_.begin();
    auto nx = std::next(it);
    if (nx->first > low) break;
    if (!freed) checkpoint();  // the cursors that passed it are on disk before it goes
    freed = true;
    Segment& seg = it->second;
    if (seg.read_fd >= 0) ops_->close(seg.read_fd);
    Job job;
    job.kind = Job::Kind::Unlink;
    job.path = seg.path;
    enqueue(std::move(job));
    disk_bytes_ -= std::min(disk_bytes_, seg.size);
    head_pos_ = nx->first;
    segments_.erase(it);
  }
  if (freed && space_wanted_) {
    space_wanted_ = false;
    space_queued_ = true;
    schedule();
  }
}

void FileChannel::cursorDirty(FileCursor* c) {
  c->dirty_ = true;
  if (checkpoint_armed_) return;
  checkpoint_armed_ = true;
  uv_timer_start(
      checkpoint_timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<FileChannel*>(t->data);
        self->checkpoint_armed_ = false;
        self->checkpoint();
      },
      static_cast<uint64_t>(config_.checkpoint_interval.count()), 0);
}

void FileChannel::journalSoon(FileCursor* c) {
  if (c->journal_pending_) return;
  c->journal_pending_ = true;
  journal_queue_.push_back(c);
  schedule();
}

void FileChannel::flushJournals() {
  auto queue = std::move(journal_queue_);
  journal_queue_.clear();
  for (FileCursor* c : queue) {
    c->journal_pending_ = false;
    journal(c->name_, encodeJournal(c->ledger_));
  }
}

void FileChannel::journal(const std::string& consumer, std::string state) {
  PutOptions options;
  options.positions.emplace_back(kJournalPrefix + consumer, std::move(state));
  put(nullptr, std::move(options));
}

bool FileChannel::journalUsable(const PersistedCursor& pc) const {
  if (pc.low < head_pos_ || pc.next > tail_pos_) return false;
  for (const auto& r : pc.uncommitted) {
    if (r.begin < head_pos_ || r.end > pc.next) return false;
  }
  return true;
}

Loc FileChannel::locate(uint64_t pos) const {
  // Segments are named by their first event: the one holding pos is the last named <= pos.
  auto it = segments_.upper_bound(pos);
  if (it == segments_.begin()) return {pos, 0, pos};
  --it;
  return {it->first, 0, it->first};
}

// A persisted cursor's low water: the first uncommitted range, else its next position.
void FileChannel::setLowFromJournal(PersistedCursor& pc) {
  pc.low = pc.next;
  pc.loc = pc.next_loc;
  for (const auto& r : pc.uncommitted) {
    if (r.begin < pc.low) {
      pc.low = r.begin;
      pc.loc = r.loc;
    }
  }
}

// Start-up: a journal entry newer than (or as new as) a cursor file replaces it.
void FileChannel::mergeJournal() {
  for (const auto& [key, value] : positions_) {
    if (!isJournalKey(key) || value.empty()) continue;
    std::string name = key.substr(kJournalPrefix.size());
    const char* p = value.data();
    size_t fixed = 4 + 8 + 24 + 4;
    bool ok = value.size() >= fixed && filech::getU32(p) == 1;
    PersistedCursor pc;
    if (ok) {
      pc.exact = true;
      pc.next = filech::getU64(p + 4);
      pc.next_loc = getLoc(p + 12);
      uint32_t n = filech::getU32(p + 36);
      ok = value.size() == fixed + static_cast<size_t>(n) * 40;
      for (uint32_t i = 0; ok && i < n; ++i) {
        const char* r = p + fixed + static_cast<size_t>(i) * 40;
        CursorLedger<Loc>::Range range{filech::getU64(r), filech::getU64(r + 8), getLoc(r + 16)};
        if (range.begin >= range.end || range.end > pc.next) ok = false;
        pc.uncommitted.push_back(range);
      }
      setLowFromJournal(pc);
    }
    if (!ok) {
      spdlog::warn(
          "file channel '{}': commit journal entry of consumer '{}' does not parse; its "
          "cursor file is used",
          name_, name);
      continue;
    }
    auto it = persisted_.find(name);
    if (it != persisted_.end() && pc.low < it->second.low) {
      // The cursor file is newer than this journal entry (written at a checkpoint whose journal
      // record did not make it): everything below its low water is committed too. Both are
      // facts, so keep the journal's exact state above the file's low water.
      const PersistedCursor& file = it->second;
      if (file.low >= pc.next) continue;  // the journal knows nothing the file does not
      std::vector<CursorLedger<Loc>::Range> kept;
      for (auto r : pc.uncommitted) {
        if (r.end <= file.low) continue;
        if (r.begin < file.low) r = {file.low, r.end, file.loc};
        kept.push_back(r);
      }
      pc.uncommitted = std::move(kept);
      setLowFromJournal(pc);
    }
    persisted_[name] = std::move(pc);
  }
}

std::map<std::string, std::string> FileChannel::positions() const {
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : positions_) {
    if (!isJournalKey(key)) out.emplace(key, value);
  }
  return out;
}

void FileChannel::checkpoint() {
  // A cursor file must never reach the disk ahead of the journal record of a commit it covers
  // (the writer runs jobs in order): queue the due journal records first.
  flushJournals();
  if (checkpoint_armed_) {
    uv_timer_stop(checkpoint_timer_);
    checkpoint_armed_ = false;
  }
  for (auto& [name, c] : cursors_) {
    if (c->dirty_) writeCursor(c);
  }
}

void FileChannel::writeCursor(FileCursor* c) {
  c->dirty_ = false;
  c->ledger_.recomputeLowWater();
  if (c->persisted_low_ == c->ledger_.lowWater()) return;
  c->persisted_low_ = c->ledger_.lowWater();
  std::string s;
  filech::putU32(s, kCursorMagic);
  filech::putU32(s, 1);
  filech::putU64(s, c->ledger_.lowWater());
  filech::putU64(s, c->ledger_.lowLoc().seg);
  filech::putU64(s, c->ledger_.lowLoc().off);
  filech::putU64(s, c->ledger_.lowLoc().seq);
  Job job;
  job.kind = Job::Kind::WriteFile;
  job.path = dir_ + "/cursor-" + escapeName(c->name_);
  job.content = withCrc(std::move(s));
  job.overwrite = true;
  enqueue(std::move(job));
}

// ---------------------------------------------------------------------------------------------
// Deferred callbacks

void FileChannel::queueReady(FileCursor* cursor) {
  if (cursor->ready_queued_) return;
  cursor->wants_ready_ = false;
  cursor->ready_queued_ = true;
  ready_queue_.push_back(cursor);
  schedule();
}

void FileChannel::schedule() {
  dispatch_pending_ = true;
  updateRef();
  uv_async_send(async_);
}

void FileChannel::updateRef() {
  // Puts waiting for a disk that keeps failing do not hold the loop: a stopping agent's loop
  // ends, and destroying the channel stops the writer (those puts were never acknowledged).
  bool want = (inflight_ > 0 && !write_failing_.load()) || dispatch_pending_;
  if (want == referenced_) return;
  referenced_ = want;
  if (want) {
    uv_ref(reinterpret_cast<uv_handle_t*>(async_));
  } else {
    uv_unref(reinterpret_cast<uv_handle_t*>(async_));
  }
}

void FileChannel::onAsync(uv_async_t* handle) {
  auto* self = static_cast<FileChannel*>(handle->data);
  if (self) self->dispatch();
}

void FileChannel::signalLoop() {
  {
    std::lock_guard lock(mutex_);
    writer_signal_ = true;
  }
  uv_async_send(async_);
}

void FileChannel::dispatch() {
  dispatch_pending_ = false;
  flushJournals();
  std::vector<Done> done;
  bool signal = false;
  {
    std::lock_guard lock(mutex_);
    done.swap(done_);
    signal = writer_signal_;
    writer_signal_ = false;
  }
  bool new_segment = false;
  for (auto& d : done) {
    auto it = segments_.find(d.loc.seg);
    if (it == segments_.end()) {
      it = segments_.emplace(d.loc.seg, Segment{d.seg_path, 0, -1}).first;
      new_segment = true;
    }
    if (d.next_off > it->second.size) {
      disk_bytes_ += d.next_off - it->second.size;
      it->second.size = d.next_off;
    }
    if (segments_.size() == 1) head_pos_ = std::min(head_pos_, d.seq);
    tail_pos_ = d.seq + d.events;
    queued_bytes_ -= std::min(queued_bytes_, d.reserved);
    --inflight_;
    Rec rec;
    rec.batch = std::move(d.batch);
    rec.loc = d.loc;
    rec.next = {d.loc.seg, d.next_off, d.seq + d.events};
    cacheInsert(rec);
    applyRecordPositions(d.positions);
    auto cb = durable_.find(d.id);
    if (cb != durable_.end()) {
      durable_queue_.push_back(std::move(cb->second));
      durable_.erase(cb);
    }
  }
  if (!done.empty()) {
    for (auto& [name, c] : cursors_) {
      if (c->wants_ready_) queueReady(c);
    }
  }
  // A roll may leave every cursor past the previous segment (journal and positions-only records
  // roll segments too).
  if (new_segment) maybeFree();
  if ((!done.empty() || signal) && space_wanted_) {
    space_wanted_ = false;
    space_queued_ = true;
  }
  dispatch_pending_ = false;
  updateRef();

  bool destroyed = false;
  destroyed_ = &destroyed;
  auto durable = std::move(durable_queue_);
  durable_queue_.clear();
  for (auto& fn : durable) {
    fn();
    if (destroyed) return;
  }
  firing_ready_.swap(ready_queue_);
  for (size_t i = 0; i < firing_ready_.size(); ++i) {
    FileCursor* c = firing_ready_[i];
    if (!c) continue;
    c->ready_queued_ = false;
    if (!c->on_ready_) continue;
    auto fn = c->on_ready_;
    fn();
    if (destroyed) return;
  }
  firing_ready_.clear();
  if (space_queued_) {
    space_queued_ = false;
    firing_listeners_ = true;
    size_t n = listeners_.size();
    for (size_t i = 0; i < n; ++i) {
      if (listeners_[i].removed || !listeners_[i].fn) continue;
      auto fn = listeners_[i].fn;
      fn();
      if (destroyed) return;
    }
    firing_listeners_ = false;
    listeners_.erase(std::remove_if(listeners_.begin(), listeners_.end(),
                                    [](const Listener& l) { return l.removed; }),
                     listeners_.end());
  }
  destroyed_ = nullptr;
}

double FileChannel::fillPercentage() const {
  if (!config_.max_bytes) return 0.0;
  return std::min(100.0, 100.0 * static_cast<double>(disk_bytes_) / config_.max_bytes);
}

// ---------------------------------------------------------------------------------------------
// Writer thread

void FileChannel::enqueue(Job job) {
  {
    std::lock_guard lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

bool FileChannel::backoff(uint64_t& delay_ms) {
  std::unique_lock lock(mutex_);
  cv_.wait_for(lock, Millis(delay_ms), [this] { return stopping_; });
  delay_ms = std::min(delay_ms * 2, kMaxBackoffMs);
  return !stopping_;
}

void FileChannel::recordFsync(double ms) {
  fsync_count_->inc();
  auto now = std::chrono::steady_clock::now();
  if (now - fsync_window_ >= std::chrono::seconds(10)) {
    fsync_max_prev_us_ = fsync_max_us_.load();
    fsync_max_us_ = 0;
    fsync_window_ = now;
  }
  auto us = static_cast<uint64_t>(ms * 1000.0);
  if (us > fsync_max_us_.load()) fsync_max_us_ = us;
}

void FileChannel::refreshFree() {
  uint64_t free_bytes = 0;
  if (ops_->statvfs(dir_, free_bytes) != 0) return;
  uint64_t old = free_bytes_.exchange(free_bytes);
  uint64_t threshold = min_free_.load();
  if ((old < threshold + (1u << 20)) != (free_bytes < threshold + (1u << 20))) signalLoop();
}

bool FileChannel::writeAll(int fd, std::string_view data, uint64_t offset) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n =
        ops_->pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n <= 0) {
      spdlog::error("file channel '{}': write failed: {}", name_,
                    n < 0 ? std::strerror(static_cast<int>(-n)) : "no progress");
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

bool FileChannel::writeMetaOnce(const Job& job) {
  if (job.kind == Job::Kind::Unlink) {
    int rc = ops_->unlink(job.path);
    return rc == 0 || rc == -ENOENT;
  }
  std::string tmp = job.path + ".tmp";
  int fd = ops_->open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  bool ok = fd >= 0;
  if (ok) {
    ok = writeAll(fd, job.content, 0) && ops_->fsync(fd) == 0;
    ops_->close(fd);
    if (ok) ok = ops_->rename(tmp, job.path) == 0;
    if (ok) ok = ops_->fsyncDir(dir_) == 0;
  }
  if (!ok && job.overwrite) {
    // A full volume has no block for a new file: a cursor file (fixed size, CRC-checked, one
    // sector) is then overwritten where it is, which needs none. Torn, it reads as unreadable
    // and the consumer starts again from the oldest segment: delivered twice, never lost.
    ops_->unlink(tmp);
    int in_place = ops_->open(job.path, O_WRONLY, 0);
    if (in_place >= 0) {
      ok = writeAll(in_place, job.content, 0) && ops_->fsync(in_place) == 0;
      ops_->close(in_place);
    }
  }
  if (!ok) spdlog::error("file channel '{}': cannot write {}; retrying", name_, job.path);
  return ok;
}

void FileChannel::runMetaBehind(std::vector<Job>& jobs, size_t from) {
  {
    std::lock_guard lock(mutex_);
    for (auto& job : jobs_) jobs.push_back(std::move(job));
    jobs_.clear();
  }
  // Metadata jobs keep their order among themselves (an unlink never overtakes the cursor file
  // written for it); each is tried once here, a failed one and those after it wait for the next
  // round.
  size_t out = from;
  bool blocked = false;
  for (size_t i = from; i < jobs.size(); ++i) {
    if (jobs[i].kind != Job::Kind::Append && !blocked) {
      if (writeMetaOnce(jobs[i])) continue;
      write_errors_->inc();
      blocked = true;
    }
    if (out != i) jobs[out] = std::move(jobs[i]);
    ++out;
  }
  jobs.resize(out);
}

void FileChannel::writeMeta(const Job& job) {
  uint64_t delay = static_cast<uint64_t>(std::max<int64_t>(1, wcfg_.retry_backoff.count()));
  while (!writeMetaOnce(job)) {
    write_errors_->inc();
    signalLoop();
    if (!backoff(delay)) return;
  }
}

bool FileChannel::ensureSegment(uint64_t seq, uint64_t record_bytes) {
  // A segment is named by its first event number; one holding only event-less records (positions)
  // is not rolled onto the same number, it grows past segment_bytes instead.
  if (have_active_ && (active_size_ == 0 || seq == active_seg_ ||
                       active_size_ + record_bytes <= wcfg_.segment_bytes)) {
    return true;
  }
  if (have_active_ && unsynced_) {
    if (ops_->fdatasync(active_fd_) != 0) return false;
    unsynced_ = false;
  }
  // Positions as of the new segment's start, so start-up only scans the last segment.
  Job positions;
  positions.kind = Job::Kind::WriteFile;
  positions.path = dir_ + "/positions";
  positions.content = positionsFileContent(seq);
  if (!writeMetaOnce(positions)) return false;
  std::string path = segPath(seq);
  int fd = ops_->open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    spdlog::error("file channel '{}': cannot create {}: {}", name_, path, std::strerror(-fd));
    return false;
  }
  if (ops_->fsyncDir(dir_) != 0) {
    ops_->close(fd);
    return false;
  }
  if (active_fd_ >= 0) ops_->close(active_fd_);
  active_fd_ = fd;
  active_seg_ = seq;
  active_size_ = 0;
  have_active_ = true;
  return true;
}

void FileChannel::writeGroup(std::vector<Job>& jobs, size_t& index) {
  size_t first = index;
  size_t end = first;
  while (end < jobs.size() && jobs[end].kind == Job::Kind::Append) ++end;
  if (abandoned_) {
    // Stopping after a put was given up: nothing after it is written, or the log would hold a
    // gap in event numbers and positions past events that are not there.
    index = end;
    return;
  }
  // Every record of the group, encoded once into one buffer; writes take slices of it.
  std::string all;
  uint64_t expected = 0;
  for (size_t j = first; j < end; ++j) expected += jobs[j].reserved;
  all.reserve(expected + expected / 8);
  std::vector<size_t> offs;
  offs.reserve(end - first + 1);
  for (size_t j = first; j < end; ++j) {
    offs.push_back(all.size());
    filech::encodeRecord(all, jobs[j].seq, *jobs[j].batch, jobs[j].positions);
  }
  offs.push_back(all.size());
  const size_t count = end - first;
  auto recSize = [&offs](size_t k) { return offs[k + 1] - offs[k]; };
  bool batch_policy = wcfg_.fsync != "interval";
  size_t k = 0;
  while (k < count) {
    uint64_t delay = static_cast<uint64_t>(std::max<int64_t>(1, wcfg_.retry_backoff.count()));
    bool ok = false;
    std::string_view buf;
    size_t m = k;
    uint64_t start = 0;
    for (;;) {
      if (ensureSegment(jobs[first + k].seq, recSize(k))) {
        m = k + 1;
        while (m < count && active_size_ + (offs[m + 1] - offs[k]) <= wcfg_.segment_bytes) ++m;
        buf = std::string_view(all).substr(offs[k], offs[m] - offs[k]);
        start = active_size_;
        ok = writeAll(active_fd_, buf, start);
        if (ok && batch_policy) {
          auto t0 = std::chrono::steady_clock::now();
          int rc = ops_->fdatasync(active_fd_);
          recordFsync(
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                  .count());
          if (rc != 0) {
            spdlog::error("file channel '{}': fdatasync failed: {}", name_, std::strerror(-rc));
            ok = false;
          }
        }
        if (ok) break;
        // Back to the last good offset; the whole group is written again.
        ops_->ftruncate(active_fd_, static_cast<off_t>(start));
      }
      write_failing_ = true;
      write_errors_->inc();
      signalLoop();
      // Cursor files and deletions queued behind this write must not wait for it: deleting
      // consumed segments may be the only way the space comes back.
      runMetaBehind(jobs, end);
      if (!backoff(delay)) {
        spdlog::error("file channel '{}': stopping with {} puts not written (never acknowledged)",
                      name_, count - k);
        abandoned_ = true;
        index = end;
        return;
      }
    }
    if (!batch_policy) unsynced_ = true;
    if (write_failing_.exchange(false)) signalLoop();
    std::vector<Done> done;
    uint64_t off = start;
    for (size_t j = k; j < m; ++j) {
      Job& job = jobs[first + j];
      Done d;
      d.id = job.id;
      d.seq = job.seq;
      d.events = job.batch->size();
      d.reserved = job.reserved;
      d.loc = {active_seg_, off, job.seq};
      off += recSize(j);
      d.next_off = off;
      d.seg_path = segPath(active_seg_);
      for (const auto& [key, value] : job.positions) writer_positions_[key] = value;
      d.positions = std::move(job.positions);
      d.batch = std::move(job.batch);
      done.push_back(std::move(d));
    }
    active_size_ = off;
    {
      std::lock_guard lock(mutex_);
      for (auto& d : done) done_.push_back(std::move(d));
    }
    uv_async_send(async_);
    k = m;
  }
  index = end;
}

void FileChannel::writerMain() {
  last_sync_ = std::chrono::steady_clock::now();
  fsync_window_ = last_sync_;
  std::unique_lock lock(mutex_);
  for (;;) {
    auto timeout = Millis(1000);
    if (unsynced_) {
      auto due = last_sync_ + wcfg_.fsync_interval;
      auto left = std::chrono::duration_cast<Millis>(due - std::chrono::steady_clock::now());
      timeout = std::max(Millis(0), std::min(timeout, left));
    }
    cv_.wait_for(lock, timeout, [this] { return !jobs_.empty() || stopping_; });
    bool stop = stopping_ && jobs_.empty();
    wcfg_ = pending_config_;
    bool interval_policy = wcfg_.fsync == "interval";
    std::vector<Job> jobs(std::make_move_iterator(jobs_.begin()),
                          std::make_move_iterator(jobs_.end()));
    jobs_.clear();
    lock.unlock();
    size_t i = 0;
    while (i < jobs.size()) {
      if (jobs[i].kind == Job::Kind::Append) {
        writeGroup(jobs, i);
      } else {
        writeMeta(jobs[i]);
        ++i;
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (interval_policy && unsynced_ && (stop || now - last_sync_ >= wcfg_.fsync_interval)) {
      auto t0 = now;
      if (ops_->fdatasync(active_fd_) == 0) {
        unsynced_ = false;
        last_sync_ = std::chrono::steady_clock::now();
        recordFsync(std::chrono::duration<double, std::milli>(last_sync_ - t0).count());
      } else {
        write_errors_->inc();
      }
    } else if (!unsynced_) {
      last_sync_ = now;
    }
    refreshFree();
    lock.lock();
    if (stop) break;
  }
}

// ---------------------------------------------------------------------------------------------

std::shared_ptr<FileChannel> makeFileChannel(const FileChannelConfig& config,
                                             const BuildContext& context, FileOpsPtr ops) {
  auto channel = std::make_shared<FileChannel>(config, context, std::move(ops));
  if (!channel->ok()) return nullptr;
  return channel;
}

void registerFileChannel(Registry& registry) {
  OptionTable<FileChannelConfig> table;
  table
      .path("dir", &FileChannelConfig::dir, "",
            "Directory of the log; empty: <agent.data_dir>/channels/<name>")
      .size("segment_bytes", &FileChannelConfig::segment_bytes, "64MiB", 4096, 4ull << 30,
            "Size at which a segment file is rolled")
      .size("max_bytes", &FileChannelConfig::max_bytes, "8GiB", 64 * 1024, 1ull << 50,
            "Most bytes the log may use on disk; puts wait beyond it")
      .size("min_free_bytes", &FileChannelConfig::min_free_bytes, "512MiB", 0, 1ull << 50,
            "Free space to leave on the volume; puts wait below it")
      .choice("fsync", &FileChannelConfig::fsync, {"batch", "interval"}, "batch",
              "batch: a put completes after fdatasync; interval: after write, synced every "
              "fsync_interval (power loss may lose that interval)")
      .duration("fsync_interval", &FileChannelConfig::fsync_interval, "1s", Millis(10),
                Millis(60000), "How often `fsync: interval` syncs")
      .duration("checkpoint_interval", &FileChannelConfig::checkpoint_interval, "1s", Millis(1),
                Millis(60000), "Most time a committed cursor position waits to be written")
      .size("read_cache_bytes", &FileChannelConfig::read_cache_bytes, "16MiB", 0, 1ull << 32,
            "Recently written or read batches kept in memory for consumers")
      .duration("retry_backoff", &FileChannelConfig::retry_backoff, "100ms", Millis(1),
                Millis(5000), "First wait before a failed disk write is retried (doubles)");
  registry.addChannel<FileChannelConfig, FileChannel>(
      "file", "Durable channel: a segmented log on disk with a cursor per consumer",
      std::move(table),
      [](const FileChannelConfig& config, const BuildContext& context) {
        return makeFileChannel(config, context);
      },
      [](FileChannel& channel, const FileChannelConfig& config) {
        return channel.reconfigure(config);
      });
}

}  // namespace sluice

#include "sources/spooldir/spooldir_source.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>

namespace sluice {

namespace {

constexpr uint64_t kMaxLineBytes = uint64_t{64} << 20;
constexpr uint64_t kStateFlushMs = 1000;
constexpr uint64_t kDurableCheckMs = 2;

struct StateWrite {
  uv_work_t req{};
  std::string path;
  std::string content;
  std::string error;
  bool ok = false;
  std::function<void(StateWrite&)> after;
};

}  // namespace

const OptionTable<SpooldirConfig>& spooldirOptionTable() {
  static const OptionTable<SpooldirConfig> table = [] {
    using C = SpooldirConfig;
    OptionTable<C> t;
    t.path("path", &C::path, "",
           "directory to spool files from (required); a relative path is resolved against the "
           "configuration file's directory")
        .string("completed_suffix", &C::completed_suffix, ".COMPLETED",
                "appended to a file's name once every line is in the channels")
        .choice("delete_policy", &C::delete_policy, {"never", "immediate"}, "never",
                "never: rename with completed_suffix; immediate: delete the completed file")
        .string("failed_suffix", &C::failed_suffix, ".FAILED",
                "appended to the name of a file that cannot be spooled (changed, unreadable)")
        .regex("include_pattern", &C::include_pattern, false,
               "RE2 regex, full match on the file's basename; empty: every file")
        .regex("ignore_pattern", &C::ignore_pattern, false,
               "RE2 regex, full match on the basename; matching files are skipped")
        .choice("consume_order", &C::consume_order, {"oldest", "youngest", "random"}, "oldest",
                "which file next: oldest or youngest mtime first, or random")
        .boolean("recursive", &C::recursive, false, "also spool files in subdirectories")
        .boolean("file_header", &C::file_header, false,
                 "add a header with the file's full path to each event")
        .string("file_header_key", &C::file_header_key, "file", "name of the path header")
        .boolean("basename_header", &C::basename_header, false,
                 "add a header with the file's basename to each event")
        .string("basename_header_key", &C::basename_header_key, "basename",
                "name of the basename header")
        .integer("batch_size", &C::batch_size, 1000, 1, 1000000,
                 "lines per batch offered to the channels")
        .size("max_line_bytes", &C::max_line_bytes, "1MiB", 1, kMaxLineBytes,
              "longest line kept in one event; longer lines follow on_long_line")
        .choice("on_long_line", &C::on_long_line, {"split", "truncate"}, "split",
                "split: cut a long line into max_line_bytes events; truncate: keep its start")
        .duration("poll_interval", &C::poll_interval, "500ms", Millis(10), Millis(3600000),
                  "how often the directory is scanned for new files")
        .duration("min_age", &C::min_age, "5s", Millis(0), Millis(86400000),
                  "a file is taken only once unchanged (ctime) for this long and not open for "
                  "writing; 0: at once")
        .duration("max_settle", &C::max_settle, "5m", Millis(10), Millis(86400000),
                  "longest wait for a taken file to settle at its end; a file still changing "
                  "then is moved aside with failed_suffix (its complete lines are put)")
        .boolean("watch", &C::watch, true,
                 "also watch the directory (inotify via libuv) to pick up files at once")
        .string("input_charset", &C::input_charset, "",
                "iconv charset of the files, converted to UTF-8 (ASCII-compatible newline); "
                "empty: bytes as they are")
        .choice("on_decode_error", &C::on_decode_error, {"replace", "fail"}, "replace",
                "with input_charset: replace bad bytes with U+FFFD, or fail the file")
        .string("state_dir", &C::state_dir, "",
                "where the position is kept when the channels keep none; empty: "
                "<agent.data_dir>/spooldir/<source name>");
    return t;
  }();
  return table;
}

SpooldirSource::SpooldirSource(SpooldirConfig config, std::string state_dir)
    : config_(std::move(config)), state_path_(std::move(state_dir) + "/position") {
  scan_.completed_suffix = config_.completed_suffix;
  scan_.failed_suffix = config_.failed_suffix;
  scan_.include_pattern = config_.include_pattern;
  scan_.ignore_pattern = config_.ignore_pattern;
  scan_.recursive = config_.recursive;
  scan_.order = config_.consume_order;
  seed_ = std::random_device{}();
}

SpooldirSource::~SpooldirSource() {
  if (open_handles_ > 0 || state_inflight_) {
    spdlog::critical("spooldir source destroyed with open handles: stop() did not finish");
    std::abort();
  }
  if (fd_ >= 0) ::close(fd_);
}

void SpooldirSource::start(SourceContext& ctx) {
  ctx_ = &ctx;
  loop_ = ctx.loop();
  started_ = true;
  key_ = "spooldir/" + ctx.name();
  MetricSet& m = ctx.metrics();
  counters_.lines = &m.counter("LineCount");
  counters_.bytes = &m.counter("ByteCount");
  counters_.files_completed = &m.counter("FilesCompletedCount");
  counters_.files_failed = &m.counter("FilesFailedCount");
  counters_.files_grown = &m.counter("FilesGrownCount");
  counters_.files_replaced = &m.counter("FilesReplacedCount");
  counters_.files_unsettled = &m.counter("FilesUnsettledCount");
  counters_.lines_truncated = &m.counter("LinesTruncatedCount");
  counters_.lines_split = &m.counter("LinesSplitCount");
  counters_.decode_replaced = &m.counter("DecodeReplacementCount");

  if (config_.completed_suffix.empty() || config_.failed_suffix.empty()) {
    // An empty suffix would make completed files look new again. The option table has no
    // per-value check, so the source refuses to spool (loudly) instead of re-reading for ever.
    spdlog::error(
        "spooldir source '{}': completed_suffix and failed_suffix must not be empty; "
        "not spooling {}",
        ctx.name(), config_.path);
    disabled_ = true;
  }
  if (!config_.input_charset.empty()) {
    std::string error;
    if (!converter_.open(config_.input_charset, error)) {
      // The option table cannot know iconv's charsets; a bad one is loud, and files pass as is.
      spdlog::error("spooldir source '{}': {}; lines are passed on unconverted", ctx.name(), error);
    }
  }

  // Where to resume: the channels' durable position, else our own state file.
  std::vector<spool::Position> found;
  auto durable = ctx.durablePositions(key_);
  positions_kept_ = !durable.empty() || ctx.keepsPositions().value_or(false);
  if (durable.empty()) {
    if (auto s = spool::readStateFile(state_path_)) durable.push_back(*s);
  }
  for (const auto& v : durable) {
    if (auto p = spool::decodePosition(v)) found.push_back(*p);
  }
  // With several channels the oldest wins; a file that still sits at its path comes first.
  // Present: its inode number is still at its path, on the same device or (a remount changes
  // the device number) with a fingerprint to check when it is opened (startFile).
  auto present = [](const spool::Position& p) {
    struct stat st {};
    if (::stat(p.path.c_str(), &st) != 0) return false;
    spool::FileId id = spool::fileIdOf(st);
    return id.ino == p.id.ino && (id.dev == p.id.dev || p.fp_len > 0);
  };
  for (const auto& p : found) {
    bool better = !resume_ || (present(p) && !present(*resume_)) ||
                  (present(p) == present(*resume_) && p.offset < resume_->offset);
    if (better) resume_ = p;
  }
  if (resume_ && !present(*resume_)) {
    // Completed (renamed or deleted) before the restart, or taken away: nothing to resume. A new
    // file under its name is a new file.
    struct stat st {};
    if (::lstat(resume_->path.c_str(), &st) == 0) {
      noteReplacedBeforeRestart(*resume_);
    } else if (resume_->offset < resume_->id.size) {
      spdlog::warn(
          "spooldir source '{}': {} was read up to byte {} of {} before the restart and is no "
          "longer at its path; its remaining lines are not read",
          ctx.name(), resume_->path, resume_->offset, resume_->id.size);
    } else {
      spdlog::debug("spooldir source '{}': {}, the last file spooled, was completed", ctx.name(),
                    resume_->path);
    }
    resume_.reset();
  } else if (resume_ && resume_->offset < resume_->id.size) {
    spdlog::info("spooldir source '{}': resuming {} at byte {}", ctx.name(), resume_->path,
                 resume_->offset);
  } else if (resume_) {
    spdlog::info("spooldir source '{}': every line of {} was put before the restart; completing it",
                 ctx.name(), resume_->path);
  }

  for (uv_timer_t* t : {&poll_timer_, &durable_timer_, &state_timer_, &settle_timer_}) {
    uv_timer_init(loop_, t);
    t->data = this;
    ++open_handles_;
  }
  uv_idle_init(loop_, &turn_);
  turn_.data = this;
  ++open_handles_;
  if (config_.watch) {
    uv_fs_event_init(loop_, &watch_);
    watch_.data = this;
    ++open_handles_;
    int rc = uv_fs_event_start(
        &watch_,
        [](uv_fs_event_t* h, const char*, int, int) {
          static_cast<SpooldirSource*>(h->data)->kick();
        },
        config_.path.c_str(), 0);
    if (rc == 0) {
      watching_ = true;
    } else {
      spdlog::warn("spooldir source '{}': cannot watch {}: {}; polling every {}", ctx.name(),
                   config_.path, uv_strerror(rc), formatDuration(config_.poll_interval));
    }
  }
  uint64_t poll = static_cast<uint64_t>(config_.poll_interval.count());
  uv_timer_start(
      &poll_timer_, [](uv_timer_t* t) { static_cast<SpooldirSource*>(t->data)->kick(); }, poll,
      poll);
  uv_timer_start(
      &state_timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<SpooldirSource*>(t->data);
        self->refreshPositionsKept();
        if (self->state_dirty_ && self->nonDurable()) self->writeState();
      },
      kStateFlushMs, kStateFlushMs);
  spdlog::info("spooldir source '{}': spooling {}", ctx.name(), config_.path);
  kick();
}

void SpooldirSource::kick() {
  if (stopping_ || disabled_ || paused_ || turning_) return;
  if (phase_ == Phase::AwaitDurable) return;
  turning_ = true;
  uv_idle_start(&turn_, [](uv_idle_t* h) { static_cast<SpooldirSource*>(h->data)->turn(); });
}

void SpooldirSource::stopTurn() {
  if (!turning_) return;
  turning_ = false;
  uv_idle_stop(&turn_);
}

void SpooldirSource::turn() {
  if (stopping_ || paused_) {
    stopTurn();
    return;
  }
  switch (phase_) {
    case Phase::Idle:
      if (!openNext()) stopTurn();
      return;
    case Phase::Settling:
    case Phase::AwaitDurable:
      stopTurn();
      return;
    case Phase::Reading:
      pump();
      return;
  }
}

bool SpooldirSource::openNext() {
  if (queue_.empty()) {
    std::string error;
    auto found = spool::scanDirectory(config_.path, scan_, seed_++, error);
    if (!error.empty() && error != last_scan_error_) {
      spdlog::warn("spooldir source '{}': {}", ctx_->name(), error);
    }
    last_scan_error_ = error;
    // Forget the files said to be waiting that are gone (the set would grow for ever).
    std::set<std::string> still;
    for (const auto& c : found) {
      if (waiting_logged_.count(c.path)) still.insert(c.path);
    }
    waiting_logged_.swap(still);
    int64_t now = spool::wallNowNs();
    int64_t min_age_ns = static_cast<int64_t>(config_.min_age.count()) * 1000000;
    for (auto& c : found) {
      if (ignored_.count(c.path)) continue;
      // The file that was being read before a restart goes first, however recently it changed:
      // taking another file first would move the one position key away from it, and a second
      // restart would read it again from its start. Its settling is waited for at its end.
      if (resume_ && c.path == resume_->path) {
        queue_.push_front(std::move(c.path));
        continue;
      }
      if (now - c.ctime_ns < min_age_ns) continue;  // changed lately: a later scan takes it
      queue_.push_back(std::move(c.path));
    }
  }
  while (!queue_.empty()) {
    std::string path = std::move(queue_.front());
    queue_.pop_front();
    if (startFile(path)) return true;
  }
  return false;
}

bool SpooldirSource::startFile(const std::string& path) {
  if (test_hook_) test_hook_(TestPoint::BeforeOpen, path);
  // O_NONBLOCK: whatever was renamed in since the scan (a FIFO waits for a writer in a blocking
  // open) must not hold the loop. It changes nothing for regular files.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return false;  // moved away since the scan
    // Only errors that say something about the file quarantine it; the others (a write lease
    // held by another process: EWOULDBLOCK under O_NONBLOCK; out of descriptors or memory; a
    // signal) pass, and a later scan tries again.
    if (err != EACCES && err != EPERM && err != ELOOP && err != ENXIO && err != EIO) {
      if (waiting_logged_.insert(path).second) {
        spdlog::warn("spooldir source '{}': cannot open {} now: {}; trying again later",
                     ctx_->name(), path, std::strerror(err));
      }
      return false;
    }
    std::string why = std::string("cannot open: ") + std::strerror(err);
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) quarantine(path, spool::fileIdOf(st), why);
    return false;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    // Neither kept nor moved aside: it is tried again at the next scans, said and counted once.
    if (waiting_logged_.insert(path).second) {
      counters_.files_failed->inc();
      spdlog::error("spooldir source '{}': cannot stat {} after opening it: {}; trying again later",
                    ctx_->name(), path, std::strerror(err));
    }
    return false;
  }
  spool::FileId id = spool::fileIdOf(st);
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    quarantine(path, id, "is not a regular file (a FIFO, socket or device renamed in)");
    return false;
  }
  bool resuming = resume_ && resume_->path == path;
  if (!resuming && settleWaitMs(fd, spool::ctimeNs(st), path) > 0) {
    ::close(fd);  // still being written: a later scan takes it
    return false;
  }
  uint64_t start_off = 0;
  bool grew = false;
  if (resuming) {
    spool::Position r = *resume_;
    resume_.reset();
    if (!sameFile(r, fd, id)) {
      noteReplacedBeforeRestart(r);  // read as a new file, from its start
    } else if (id.size < r.id.size || (id.size == r.id.size && id.mtime_ns != r.id.mtime_ns)) {
      ::close(fd);
      quarantine(path, id,
                 "changed after it was placed (shrank or was rewritten since the position "
                 "saved before the restart)");
      return false;
    } else {
      start_off = r.offset;
      grew = id.size > r.id.size;
    }
  }
  fd_ = fd;
  path_ = path;
  basename_ = path.substr(path.rfind('/') + 1);
  id_ = id;
  ctime_ns_ = spool::ctimeNs(st);
  grew_ = false;
  settle_since_.reset();
  fp_len_ = 0;
  fp_hash_ = 0;
  waiting_logged_.erase(path);
  read_off_ = start_off;
  buf_len_ = 0;
  buf_pos_ = 0;
  buf_off_ = start_off;
  held_.clear();
  discarding_ = false;
  offered_this_file_ = false;
  batch_.clear();
  batch_end_ = start_off;
  offered_end_ = start_off;
  phase_ = Phase::Reading;
  if (grew) noteGrowth(start_off);
  if (start_off > 0) {
    spdlog::info("spooldir source '{}': reading {} from byte {}", ctx_->name(), path, start_off);
  } else {
    spdlog::debug("spooldir source '{}': reading {}", ctx_->name(), path);
  }
  return true;
}

uint64_t SpooldirSource::settleWaitMs(int fd, int64_t ctime_ns, const std::string& path) {
  int64_t now = spool::wallNowNs();
  if (ctime_ns - now > config_.poll_interval.count() * int64_t{1000000} && !future_logged_) {
    future_logged_ = true;
    spdlog::warn(
        "spooldir source '{}': {} changed {} ms in the future by this host's clock (a clock "
        "stepped back, or a file server's clock ahead); it is taken only once that time plus "
        "min_age has passed (said once)",
        ctx_->name(), path, (ctime_ns - now) / 1000000);
  }
  int64_t age_ms = (now - ctime_ns) / 1000000;
  if (age_ms < config_.min_age.count())
    return static_cast<uint64_t>(config_.min_age.count() - age_ms);
  spool::Writers writers = spool::probeWriters(fd);
  if (writers == spool::Writers::Unknown && !lease_unknown_logged_) {
    lease_unknown_logged_ = true;
    spdlog::warn(
        "spooldir source '{}': cannot tell whether {} is open for writing (no lease: another "
        "owner without CAP_LEASE, fs.leases-enable off, or a file system without leases); only "
        "min_age keeps files still written from being taken (said once)",
        ctx_->name(), path);
  }
  if (writers != spool::Writers::Some) return 0;
  if (waiting_logged_.insert(path).second) {
    spdlog::info(
        "spooldir source '{}': {} is open for writing by another process; waiting until it is "
        "closed (files written in place belong to the tail source)",
        ctx_->name(), path);
  }
  return static_cast<uint64_t>(config_.poll_interval.count());
}

bool SpooldirSource::sameFile(const spool::Position& r, int fd, const spool::FileId& id) {
  if (id.ino != r.id.ino) return false;
  if (r.fp_len == 0) return id.dev == r.id.dev;       // no fingerprint: the inode alone
  if (id.size < r.fp_len) return id.dev == r.id.dev;  // shrank below it: failed as shrunk
  auto h = spool::fingerprint(fd, r.fp_len);
  return h && *h == r.fp_hash;
}

spool::Position SpooldirSource::positionAt(uint64_t offset) {
  spool::Position p{path_, id_, offset};
  uint64_t len = std::min(offset, spool::kFingerprintBytes);
  if (len != fp_len_) {
    auto h = len == 0 ? std::optional<uint64_t>(0) : spool::fingerprint(fd_, len);
    // Unreadable (it shrank meanwhile, which fails the file soon): no fingerprint, the inode
    // alone decides at a restart.
    fp_len_ = h ? len : 0;
    fp_hash_ = h.value_or(0);
    if (!h) return p;
  }
  p.fp_len = fp_len_;
  p.fp_hash = fp_hash_;
  return p;
}

void SpooldirSource::noteReplacedBeforeRestart(const spool::Position& r) {
  if (r.offset >= r.id.size) return;  // that file was finished: nothing of it is missing
  counters_.files_replaced->inc();
  spdlog::warn(
      "spooldir source '{}': {} was read up to byte {} of {} before the restart and has been "
      "replaced by another file; its remaining lines are not read, the new file is read as a new "
      "file",
      ctx_->name(), r.path, r.offset, r.id.size);
}

void SpooldirSource::noteGrowth(uint64_t from_size) {
  if (grew_) return;
  grew_ = true;
  counters_.files_grown->inc();
  spdlog::warn(
      "spooldir source '{}': {} grew after it was taken (from {} bytes); reading its new lines "
      "too (files written in place belong to the tail source)",
      ctx_->name(), path_, from_size);
}

SpooldirSource::Change SpooldirSource::refreshSize() {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    failFile(std::string("cannot stat: ") + std::strerror(errno));
    return Change::Failed;
  }
  spool::FileId now = spool::fileIdOf(st);
  ctime_ns_ = spool::ctimeNs(st);
  if (now.size < id_.size) {
    failFile("shrank while it was being spooled (size " + std::to_string(id_.size) + " -> " +
             std::to_string(now.size) + ")");
    return Change::Failed;
  }
  if (now.size == id_.size && now.mtime_ns != id_.mtime_ns) {
    failFile("was rewritten in place while it was being spooled (same size, new mtime)");
    return Change::Failed;
  }
  if (now.size == id_.size) return Change::Same;
  noteGrowth(id_.size);
  id_.size = now.size;
  id_.mtime_ns = now.mtime_ns;
  return Change::Grew;
}

void SpooldirSource::pump() {
  for (int i = 0; i < kReadsPerTurn; ++i) {
    Step s = processBuffer();
    if (s != Step::Ok) return;
    if (refreshSize() == Change::Failed) return;
    if (read_off_ >= id_.size) {
      finishReading();
      return;
    }
    // Keep the unprocessed tail (a partial line), then read the next chunk after it.
    size_t keep = buf_len_ - buf_pos_;
    if (buf_pos_ > 0) {
      std::memmove(buf_.get(), buf_.get() + buf_pos_, keep);
      buf_off_ += buf_pos_;
      buf_pos_ = 0;
      buf_len_ = keep;
    }
    size_t want = static_cast<size_t>(std::min<uint64_t>(kReadChunkBytes, id_.size - read_off_));
    if (buf_cap_ < keep + want) {
      size_t cap = std::max(keep + want, kReadChunkBytes);
      auto bigger = std::make_unique<char[]>(cap);
      if (keep > 0) std::memcpy(bigger.get(), buf_.get(), keep);
      buf_ = std::move(bigger);
      buf_cap_ = cap;
    }
    ssize_t n;
    do {
      n = ::pread(fd_, buf_.get() + keep, want, static_cast<off_t>(read_off_));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      failFile(std::string("cannot read: ") + std::strerror(errno));
      return;
    }
    if (n == 0) {
      failFile("shrank while it was being spooled");
      return;
    }
    buf_len_ = keep + static_cast<size_t>(n);
    read_off_ += static_cast<uint64_t>(n);
    counters_.bytes->inc(static_cast<uint64_t>(n));
    chunk_ts_ = nowNs();
  }
}

SpooldirSource::Step SpooldirSource::processBuffer() {
  const size_t max = static_cast<size_t>(config_.max_line_bytes);
  const bool split = config_.on_long_line == "split";
  while (true) {
    if (batch_.size() >= config_.batch_size && !offerBatch()) return Step::Paused;
    if (buf_pos_ >= buf_len_) return Step::Ok;
    const char* start = buf_.get() + buf_pos_;
    size_t avail = buf_len_ - buf_pos_;
    const auto* nl = static_cast<const char*>(std::memchr(start, '\n', avail));
    if (discarding_) {
      // Truncate: drop the rest of a long line; it is emitted (its start) at its newline.
      if (nl == nullptr) {
        buf_pos_ = buf_len_;
        return Step::Ok;
      }
      buf_pos_ += static_cast<size_t>(nl - start) + 1;
      discarding_ = false;
      std::string line = std::move(held_);
      held_.clear();
      if (emitLine(line, buf_off_ + buf_pos_) == Step::Failed) return Step::Failed;
      continue;
    }
    if (nl == nullptr) {
      // An unfinished line: wait for more unless it is already too long. One byte of slack,
      // so a line of exactly max bytes plus "\r\n" is not cut before its '\r'.
      if (avail <= max + 1) return Step::Ok;
      if (split) {
        counters_.lines_split->inc();
        buf_pos_ += max;
        if (emitLine(std::string_view(start, max), buf_off_ + buf_pos_) == Step::Failed) {
          return Step::Failed;
        }
        continue;
      }
      held_.assign(start, max);
      counters_.lines_truncated->inc();
      discarding_ = true;
      buf_pos_ = buf_len_;
      return Step::Ok;
    }
    size_t len = static_cast<size_t>(nl - start);
    uint64_t line_off = buf_off_ + buf_pos_;
    buf_pos_ += len + 1;
    std::string_view line(start, len);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    Step s = line.size() > max ? emitLong(line, line_off, buf_off_ + buf_pos_)
                               : emitLine(line, buf_off_ + buf_pos_);
    if (s == Step::Failed) return s;
  }
}

SpooldirSource::Step SpooldirSource::emitLong(std::string_view line, uint64_t start_off,
                                              uint64_t end_off) {
  const size_t max = static_cast<size_t>(config_.max_line_bytes);
  if (config_.on_long_line != "split") {
    counters_.lines_truncated->inc();
    return emitLine(line.substr(0, max), end_off);
  }
  for (size_t off = 0; off < line.size(); off += max) {
    bool last = off + max >= line.size();
    if (off > 0) counters_.lines_split->inc();
    if (emitLine(line.substr(off, max), last ? end_off : start_off + off + max) == Step::Failed) {
      return Step::Failed;
    }
  }
  return Step::Ok;
}

SpooldirSource::Step SpooldirSource::emitLine(std::string_view line, uint64_t end_off) {
  if (converter_.isOpen()) {
    uint64_t replaced = 0;
    bool ok = converter_.convert(line, converted_, config_.on_decode_error == "replace", replaced);
    if (replaced > 0) counters_.decode_replaced->inc(replaced);
    if (!ok) {
      failFile("a line ending at byte " + std::to_string(end_off) + " is not valid " +
               config_.input_charset);
      return Step::Failed;
    }
    line = converted_;
  }
  uint32_t i = batch_.add(line, chunk_ts_);
  if (config_.file_header) batch_.setHeader(i, config_.file_header_key, path_);
  if (config_.basename_header) batch_.setHeader(i, config_.basename_header_key, basename_);
  batch_end_ = end_off;
  counters_.lines->inc();
  return Step::Ok;
}

bool SpooldirSource::offerBatch() {
  std::string value = spool::encodePosition(positionAt(batch_end_));
  if (ctx_->offerWithPositions(batch_, {{key_, value}}) == OfferResult::Full) {
    paused_ = true;
    stopTurn();
    return false;
  }
  batch_.clear();
  offered_end_ = batch_end_;
  offered_this_file_ = true;
  state_content_ = std::move(value);
  state_dirty_ = true;
  if (!probe_started_) {
    probe_started_ = true;
    probe_deadline_ = uv_now(loop_) + static_cast<uint64_t>(probe_wait_.count());
  }
  return true;
}

void SpooldirSource::finishReading() {
  // The end is the end only once the file has settled; until then the complete lines go out and
  // the unfinished last one waits.
  if (uint64_t wait = settleWaitMs(fd_, ctime_ns_, path_); wait > 0) {
    uint64_t now = uv_now(loop_);
    if (!settle_since_) settle_since_ = now;
    uint64_t max_settle = static_cast<uint64_t>(config_.max_settle.count());
    if (now - *settle_since_ >= max_settle) {
      giveUpSettling();
      return;
    }
    wait = std::min(wait, *settle_since_ + max_settle - now);
    if (!batch_.empty() && !offerBatch()) return;  // resume() comes back here
    phase_ = Phase::Settling;
    stopTurn();
    uv_timer_start(
        &settle_timer_,
        [](uv_timer_t* t) {
          auto* self = static_cast<SpooldirSource*>(t->data);
          if (self->phase_ != Phase::Settling) return;
          self->phase_ = Phase::Reading;
          self->kick();
        },
        wait, 0);
    return;
  }
  // The last line may have no newline.
  if (discarding_) {
    discarding_ = false;
    std::string line = std::move(held_);
    held_.clear();
    if (emitLine(line, id_.size) == Step::Failed) return;
  } else if (buf_pos_ < buf_len_) {
    std::string_view line(buf_.get() + buf_pos_, buf_len_ - buf_pos_);
    uint64_t line_off = buf_off_ + buf_pos_;
    buf_pos_ = buf_len_;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    Step s = line.size() > config_.max_line_bytes ? emitLong(line, line_off, id_.size)
                                                  : emitLine(line, id_.size);
    if (s == Step::Failed) return;
  }
  batch_end_ = id_.size;
  if (!batch_.empty() || offered_end_ != id_.size || !offered_this_file_) {
    if (!offerBatch()) return;  // resume() offers it again and comes back here
  }
  phase_ = Phase::AwaitDurable;
  stopTurn();
  uv_timer_start(
      &durable_timer_, [](uv_timer_t* t) { static_cast<SpooldirSource*>(t->data)->checkDurable(); },
      kDurableCheckMs, kDurableCheckMs);
  checkDurable();
}

void SpooldirSource::giveUpSettling() {
  if (!batch_.empty() && !offerBatch()) return;  // resume() comes back here
  counters_.files_unsettled->inc();
  failFile("kept changing at its end for longer than max_settle (" +
           formatDuration(config_.max_settle) + "): a live log belongs to the tail source; its " +
           "complete lines up to byte " + std::to_string(offered_end_) + " are put, the rest of " +
           "the file is kept");
}

void SpooldirSource::refreshPositionsKept() {
  if (!positions_kept_ && ctx_ && !ctx_->durablePositions(key_).empty()) positions_kept_ = true;
}

bool SpooldirSource::nonDurable() {
  if (auto known = ctx_->keepsPositions()) return !*known;
  return !positions_kept_ && probe_started_ && uv_now(loop_) >= probe_deadline_;
}

void SpooldirSource::checkDurable() {
  if (phase_ != Phase::AwaitDurable || stopping_) return;
  std::string final_value = spool::encodePosition(positionAt(id_.size));
  auto durable = ctx_->durablePositions(key_);
  if (!durable.empty()) positions_kept_ = true;
  // The context's answer wins (the channels may have changed at a reload); else what was learnt.
  if (ctx_->keepsPositions().value_or(positions_kept_)) {
    for (const auto& v : durable) {
      if (v != final_value) return;  // a channel has not made the end of the file durable yet
    }
    if (durable.empty()) return;
  } else if (!nonDurable()) {
    return;  // perhaps a file channel still writing its first put: wait for the probe window
  }
  uv_timer_stop(&durable_timer_);
  // The last look before completing: lines written since the end was reached go out first.
  Change change = refreshSize();
  if (change == Change::Failed) return;
  if (change == Change::Grew) {
    phase_ = Phase::Reading;
    kick();
    return;
  }
  completeFile();
}

void SpooldirSource::closeFile() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  batch_.clear();
  held_.clear();
  discarding_ = false;
  buf_len_ = buf_pos_ = 0;
  if (buf_cap_ > 4 * kReadChunkBytes) {
    buf_.reset();
    buf_cap_ = 0;
  }
  phase_ = Phase::Idle;
}

void SpooldirSource::completeFile() {
  std::string path = path_;
  spool::FileId id = id_;
  bool remove = config_.delete_policy == "immediate";
  // Deleting first moves the file to a hidden name (never scanned), so that what is deleted is
  // checked to be the file that was read.
  std::string base =
      remove ? path.substr(0, path.size() - basename_.size()) + "." + basename_ : path;
  if (test_hook_) test_hook_(TestPoint::BeforeComplete, path);
  spool::Renamed r = spool::renameIfSame(path, id, base, config_.completed_suffix);
  using Result = spool::Renamed::Result;
  std::optional<std::string> to;
  if (r.result == Result::Moved) to = r.to;
  std::string error = r.error;
  struct stat st {};
  bool same = to && ::fstat(fd_, &st) == 0 && spool::fileIdOf(st) == id;
  closeFile();
  if (r.put_back_failed) notePutBackFailed(path, r);
  if (r.result == Result::Gone) {
    // Every line of it is in the channels; someone moved or deleted it meanwhile.
    counters_.files_completed->inc();
    spdlog::warn("spooldir source '{}': {} was read whole but is no longer at its path ({})",
                 ctx_->name(), path, error);
  } else if (r.result == Result::Replaced) {
    // Every line of the file read is in the channels; the file now at the path is another one.
    counters_.files_completed->inc();
    counters_.files_replaced->inc();
    spdlog::warn(
        "spooldir source '{}': {} was replaced by another file after it was read; the file read "
        "is not renamed and the new one is read as a new file",
        ctx_->name(), path);
  } else if (!to) {
    spdlog::error("spooldir source '{}': cannot {} completed {}: {}; it is skipped until restart",
                  ctx_->name(), remove ? "delete" : "rename", path, error);
    ignored_.insert(path);
    counters_.files_completed->inc();
  } else if (!same) {
    // Written to between the last look and the rename: what came after is not in the channels.
    counters_.files_failed->inc();
    std::string why = "changed after it was completed (size " + std::to_string(id.size) + " -> " +
                      std::to_string(static_cast<uint64_t>(st.st_size)) + "): the bytes after " +
                      std::to_string(id.size) + " are not spooled";
    auto failed = spool::renameUnique(*to, path, config_.failed_suffix, error);
    if (failed) {
      spdlog::error("spooldir source '{}': {} {}; moved to {}", ctx_->name(), path, why, *failed);
    } else {
      spdlog::error("spooldir source '{}': {} {}; left as {} ({})", ctx_->name(), path, why, *to,
                    error);
    }
  } else {
    if (remove && ::unlink(to->c_str()) != 0) {
      spdlog::error("spooldir source '{}': cannot delete completed {} (moved to {}): {}",
                    ctx_->name(), path, *to, std::strerror(errno));
    } else if (!remove && *to != path + config_.completed_suffix) {
      spdlog::warn("spooldir source '{}': the name {} was used before; completed as {}",
                   ctx_->name(), path, *to);
    }
    counters_.files_completed->inc();
  }
  if (nonDurable()) writeState();
  kick();
}

void SpooldirSource::failFile(const std::string& why) {
  std::string path = path_;
  spool::FileId id = id_;
  spool::Position finished = positionAt(id_.size);
  closeFile();
  if (quarantine(path, id, why)) {
    // The durable position still names this file mid-way; after a restart a new file dropped
    // under the same name would look like this one replaced while being read. Mark it finished
    // (best effort: a refused offer changes nothing, and no resume() is awaited for it).
    Batch none;
    std::string value = spool::encodePosition(finished);
    if (ctx_->offerWithPositions(none, {{key_, value}}) == OfferResult::Accepted) {
      state_content_ = std::move(value);
      state_dirty_ = true;
    }
  }
  kick();
}

bool SpooldirSource::quarantine(const std::string& path, const spool::FileId& id,
                                const std::string& why) {
  counters_.files_failed->inc();
  spool::Renamed r = spool::renameIfSame(path, id, path, config_.failed_suffix);
  using Result = spool::Renamed::Result;
  if (r.put_back_failed) notePutBackFailed(path, r);
  if (r.result == Result::Moved) {
    spdlog::error("spooldir source '{}': {} {}; moved to {}", ctx_->name(), path, why, r.to);
    return true;
  }
  if (r.result == Result::Gone) {
    spdlog::error("spooldir source '{}': {} {}; it is no longer at its path ({})", ctx_->name(),
                  path, why, r.error);
    return false;
  }
  if (r.result == Result::Replaced) {
    spdlog::error(
        "spooldir source '{}': {} {}; it is no longer at its path (a new file there is read as "
        "a new file)",
        ctx_->name(), path, why);
    return false;
  }
  spdlog::error("spooldir source '{}': {} {}; cannot move it aside ({}): skipped until restart",
                ctx_->name(), path, why, r.error);
  ignored_.insert(path);
  return false;
}

void SpooldirSource::notePutBackFailed(const std::string& path, const spool::Renamed& r) {
  // The file renamed over ours while ours was moved now sits under a suffixed name, which is
  // never scanned: it is not spooled unless someone renames it back.
  counters_.files_failed->inc();
  spdlog::error(
      "spooldir source '{}': a new file was renamed over {} while it was being moved to {}; {}: "
      "the new file is left as {} and is not spooled",
      ctx_->name(), path, r.to, r.error, r.to);
}

void SpooldirSource::resume() {
  if (!started_ || stopping_ || !paused_) return;
  paused_ = false;
  if (!batch_.empty() || (phase_ == Phase::Reading && batch_end_ != offered_end_)) {
    if (!offerBatch()) return;
  }
  kick();
}

void SpooldirSource::writeState() {
  if (state_inflight_) return;  // the state timer or stop() writes what changed meanwhile
  state_inflight_ = true;
  state_dirty_ = false;
  auto* w = new StateWrite;
  w->req.data = w;
  w->path = state_path_;
  w->content = state_content_ + "\n";
  w->after = [this](StateWrite& done) {
    state_inflight_ = false;
    if (!done.ok) {
      spdlog::warn("spooldir source '{}': cannot write {}: {}", ctx_->name(), done.path,
                   done.error);
      state_dirty_ = true;
    }
    if (stopping_) {
      if (state_dirty_ && done.ok) {
        writeState();
        return;
      }
      maybeDone();
    }
  };
  uv_queue_work(
      loop_, &w->req,
      [](uv_work_t* req) {
        auto* w = static_cast<StateWrite*>(req->data);
        w->ok = spool::writeStateFile(w->path, w->content, w->error);
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<StateWrite> w(static_cast<StateWrite*>(req->data));
        w->after(*w);
      });
}

void SpooldirSource::stop(std::function<void()> done) {
  if (stopping_) {
    spdlog::error("spooldir source: stop() called twice; ignored");
    return;
  }
  stopping_ = true;
  if (!started_) {
    done();
    return;
  }
  done_ = std::move(done);
  // What was read but not accepted is dropped: the position has not moved past it, so it is
  // read again after the restart.
  if (fd_ >= 0) closeFile();
  turning_ = false;
  closeHandle(reinterpret_cast<uv_handle_t*>(&turn_));
  closeHandle(reinterpret_cast<uv_handle_t*>(&poll_timer_));
  closeHandle(reinterpret_cast<uv_handle_t*>(&durable_timer_));
  closeHandle(reinterpret_cast<uv_handle_t*>(&state_timer_));
  closeHandle(reinterpret_cast<uv_handle_t*>(&settle_timer_));
  if (config_.watch) closeHandle(reinterpret_cast<uv_handle_t*>(&watch_));
  if (state_dirty_ && nonDurable()) writeState();
}

void SpooldirSource::closeHandle(uv_handle_t* handle) {
  if (uv_is_closing(handle)) return;
  uv_close(handle, [](uv_handle_t* h) {
    auto* self = static_cast<SpooldirSource*>(h->data);
    --self->open_handles_;
    self->maybeDone();
  });
}

void SpooldirSource::maybeDone() {
  if (!stopping_ || open_handles_ > 0 || state_inflight_ || !done_) return;
  auto done = std::move(done_);  // done may destroy this source
  done_ = nullptr;
  done();
}

bool SpooldirSource::idle() const {
  return phase_ == Phase::Idle && queue_.empty() && !paused_ && fd_ < 0;
}

ConfigErrors validateSpooldirConfig(const SpooldirConfig& cfg) {
  ConfigErrors errors;
  struct stat st {};
  if (cfg.path.empty()) {
    errors.emplace_back("path", "is required: the directory to spool files from");
  } else if (::stat(cfg.path.c_str(), &st) != 0) {
    errors.emplace_back("path",
                        "cannot use spool directory " + cfg.path + ": " + std::strerror(errno));
  } else if (!S_ISDIR(st.st_mode)) {
    errors.emplace_back("path", cfg.path + " is not a directory");
  } else if (::access(cfg.path.c_str(), R_OK | X_OK) != 0) {
    errors.emplace_back("path",
                        "cannot read spool directory " + cfg.path + ": " + std::strerror(errno));
  } else if (::access(cfg.path.c_str(), W_OK) != 0) {
    errors.emplace_back("path", "cannot rename files in spool directory " + cfg.path +
                                    " (completed files would be read again after a restart): " +
                                    std::strerror(errno));
  }
  if (cfg.max_settle < cfg.min_age) {
    errors.emplace_back("max_settle", "must not be shorter than min_age (" +
                                          formatDuration(cfg.min_age) +
                                          "): every file that grows would be moved aside");
  }
  for (const char* key : {"completed_suffix", "failed_suffix"}) {
    const std::string& v =
        std::string(key) == "completed_suffix" ? cfg.completed_suffix : cfg.failed_suffix;
    if (v.empty()) {
      errors.emplace_back(key, "must not be empty (finished files would look new again)");
    }
  }
  return errors;
}

void registerSpooldirSource(Registry& registry) {
  registry.addSource<SpooldirConfig>(
      "spooldir",
      "Reads files dropped into a directory line by line, then renames them with "
      "completed_suffix; resumes mid-file after a crash from the channels' durable position.",
      spooldirOptionTable(),
      [](const SpooldirConfig& cfg, const BuildContext& b) -> SourcePtr {
        std::string state_dir = cfg.state_dir;
        if (state_dir.empty()) {
          std::string data_dir = b.agent ? b.agent->data_dir : std::string(".");
          state_dir = data_dir + "/spooldir/" + b.name;
        }
        return std::make_unique<SpooldirSource>(cfg, state_dir);
      },
      &validateSpooldirConfig);
}

}  // namespace sluice

#include "sources/tail/tail_source.h"

#include <dirent.h>
#include <fcntl.h>
#include <glob.h>
#include <re2/re2.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

namespace sluice {

namespace {

constexpr uint64_t kMaxLineBytes = uint64_t{64} << 20;
// Bytes read per loop turn across all files, in read_bytes chunks.
constexpr uint64_t kChunksPerTurn = 4;
constexpr int kStateVersion = 1;

constexpr uint64_t kFnvBasis = 1469598103934665603ull;

uint64_t fnv1a(const char* data, size_t n, uint64_t h = kFnvBasis) {
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex64(uint64_t v) {
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(v));
  return out;
}

uint64_t parseHex64(const std::string& s) { return std::strtoull(s.c_str(), nullptr, 16); }

bool hasGlobChars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

std::string dirOf(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// pread that retries on EINTR; returns bytes read or -errno.
ssize_t preadAll(int fd, char* buf, size_t n, uint64_t off) {
  for (;;) {
    ssize_t r = ::pread(fd, buf, n, static_cast<off_t>(off));
    if (r >= 0) return r;
    if (errno != EINTR) return -errno;
  }
}

// Hash of the first n bytes of fd; false when fewer than n bytes could be read.
bool hashPrefix(int fd, uint64_t n, uint64_t& out) {
  std::string buf(n, '\0');
  uint64_t got = 0;
  while (got < n) {
    ssize_t r = preadAll(fd, buf.data() + got, n - got, got);
    if (r <= 0) return false;
    got += static_cast<uint64_t>(r);
  }
  out = fnv1a(buf.data(), n);
  return true;
}

// A growable byte buffer without the zero-filling of std::string::resize.
class ByteBuf {
 public:
  char* data() { return data_.get(); }
  const char* data() const { return data_.get(); }
  size_t size() const { return len_; }
  bool empty() const { return len_ == 0; }
  // Makes room for n more bytes at the end; returns where they go.
  char* grow(size_t n) {
    if (len_ + n > cap_) {
      size_t cap = std::max(len_ + n, cap_ * 2);
      std::unique_ptr<char[]> p(new char[cap]);
      if (len_) std::memcpy(p.get(), data_.get(), len_);
      data_ = std::move(p);
      cap_ = cap;
    }
    return data_.get() + len_;
  }
  void commit(size_t n) { len_ += n; }
  void consume(size_t n) {
    if (n >= len_) {
      len_ = 0;
    } else if (n > 0) {
      std::memmove(data_.get(), data_.get() + n, len_ - n);
      len_ -= n;
    }
  }
  void clear() { len_ = 0; }
  // Frees the memory when the buffer is empty and large (an idle file keeps nothing).
  void shrink() {
    if (len_ == 0 && cap_ > 0) {
      data_.reset();
      cap_ = 0;
    }
  }

 private:
  std::unique_ptr<char[]> data_;
  size_t cap_ = 0, len_ = 0;
};

struct SavedFile {
  uint64_t dev = 0, ino = 0, fp = 0, fpl = 0, off = 0;
  std::string path;
};

}  // namespace

const OptionTable<TailConfig>& tailOptionTable() {
  static const OptionTable<TailConfig> table = [] {
    OptionTable<TailConfig> t;
    t.pathList("paths", &TailConfig::paths, true,
               "files to follow: paths or glob(3) patterns (wildcards in the file name part are "
               "watched with inotify; elsewhere only polled)")
        .choice("start_at", &TailConfig::start_at, {"beginning", "end"}, "beginning",
                "where to start a file found at the very first start (no saved state); files "
                "that appear later are always read from their beginning")
        .path("state_file", &TailConfig::state_file, "",
              "where positions are saved when no channel keeps them; default "
              "<agent.data_dir>/tail/<source name>.json")
        .size("fingerprint_bytes", &TailConfig::fingerprint_bytes, "1KiB", 1, 64 * 1024,
              "leading bytes hashed into a file's identity (with device and inode)")
        .size("max_line_bytes", &TailConfig::max_line_bytes, "1MiB", 1, kMaxLineBytes,
              "longest line kept in one event; longer lines follow on_long_line")
        .choice("on_long_line", &TailConfig::on_long_line, {"split", "truncate"}, "split",
                "split: cut a long line into max_line_bytes events; truncate: keep its start")
        .duration("partial_line_timeout", &TailConfig::partial_line_timeout, "5s", Millis(1),
                  Millis(86400000),
                  "a last line without newline is emitted once the file was idle this long")
        .regex("multiline_start", &TailConfig::multiline_start, false,
               "RE2: a line matching it starts a new event; other lines join the previous one")
        .regex("multiline_continuation", &TailConfig::multiline_continuation, false,
               "RE2: a line matching it joins the previous event; others start a new one")
        .integer("multiline_max_lines", &TailConfig::multiline_max_lines, 500, 1, 1000000,
                 "most lines in one multi-line event")
        .size("multiline_max_bytes", &TailConfig::multiline_max_bytes, "1MiB", 1, kMaxLineBytes,
              "most bytes in one multi-line event")
        .duration("multiline_flush_timeout", &TailConfig::multiline_flush_timeout, "1s", Millis(1),
                  Millis(3600000), "a multi-line event is emitted when no line came for this long")
        .integer("max_open_files", &TailConfig::max_open_files, 256, 1, 65536,
                 "most files held open; further files wait for a free slot")
        .duration("poll_interval", &TailConfig::poll_interval, "1s", Millis(1), Millis(3600000),
                  "how often the globs are expanded and open files are checked (the stat poll; "
                  "inotify only makes it faster)")
        .duration("rotate_wait", &TailConfig::rotate_wait, "5s", Millis(0), Millis(86400000),
                  "a rotated or deleted file is closed once read to its end and idle this long")
        .integer("batch_size", &TailConfig::batch_size, 1000, 1, 1000000,
                 "events per batch; a smaller batch is offered as soon as every file is read "
                 "to its end")
        .size("read_bytes", &TailConfig::read_bytes, "256KiB", 4096, 16 * 1024 * 1024,
              "bytes read from a file per read call (4 calls per loop turn at most)")
        .string("path_header", &TailConfig::path_header, "",
                "header that carries the file's path (for example: file); empty: none")
        .boolean("watch", &TailConfig::watch, true,
                 "watch the directories with inotify; false: rely on the poll alone");
    return t;
  }();
  return table;
}

// ---------------------------------------------------------------------------------------------

class TailSource::Impl {
 public:
  Impl(TailConfig cfg, std::string state_path)
      : cfg_(std::move(cfg)), state_path_(std::move(state_path)) {}
  ~Impl() {
    if (open_handles_ > 0) {
      spdlog::critical("tail source destroyed with {} open handles: stop() did not finish",
                       open_handles_);
      std::abort();
    }
    for (auto& f : files_) closeFd(*f);
  }

  struct File {
    std::string path;
    uint64_t dev = 0, ino = 0;
    int fd = -1;
    uint64_t fp = kFnvBasis, fpl = 0;  // fingerprint and the leading bytes it covers
    uint64_t read_offset = 0;          // next byte to read
    ByteBuf buf;                       // bytes [buf_start, read_offset), not yet cut into lines
    uint64_t buf_start = 0;
    uint64_t emitted = 0;  // end of the last event handed to the batch: the saved position
    bool known = false;    // its offset is settled (it belongs in the saved positions)
    bool discarding = false;
    std::string ml;  // pending multi-line event
    uint64_t ml_lines = 0, ml_end = 0;
    bool ml_active = false;
    uint64_t last_line_ms = 0, last_growth_ms = 0;
    bool detached = false;  // no longer matched by the globs (renamed away or deleted)
    bool at_eof = false;
    bool check_before_read = true;  // look for a truncation before reading on
    bool seen = false;
    bool deferred = false;  // a possible copy of a file being truncated: wait
    uint64_t defer_until_ms = 0;
    bool has_pred = false;  // a rotated file at the same path is read to its end first
    uint64_t pred_dev = 0, pred_ino = 0;
  };
  struct Hint {
    uint64_t fp = 0, fpl = 0, off = 0;
    std::string path;
    uint64_t expires_ms = 0;
  };

  void start(SourceContext& ctx) {
    ctx_ = &ctx;
    loop_ = ctx.loop();
    started_ = true;
    key_ = "tail/" + ctx.name();
    MetricSet& m = ctx.metrics();
    lines_ = &m.counter("LineCount");
    bytes_ = &m.counter("ByteCount");
    rotations_ = &m.counter("RotationCount");
    truncations_ = &m.counter("TruncationCount");
    truncated_lines_ = &m.counter("LinesTruncatedCount");
    split_lines_ = &m.counter("LinesSplitCount");
    files_opened_ = &m.counter("FileOpenCount");
    files_closed_ = &m.counter("FileCloseCount");
    read_errors_ = &m.counter("ReadErrorCount");
    state_errors_ = &m.counter("StateWriteErrorCount");
    dropped_ = &m.counter("DroppedEventCount");
    m.gauge(
        "OpenFileCount", [this] { return static_cast<double>(openFiles()); }, this);
    m.gauge(
        "TrackedFileCount", [this] { return static_cast<double>(files_.size()); }, this);

    for (uv_timer_t* t : {&pump_timer_, &tick_timer_}) {
      uv_timer_init(loop_, t);
      t->data = this;
      ++open_handles_;
    }
    restore();
    initialScan();
    if (cfg_.watch) startWatchers();
    uint64_t tick = static_cast<uint64_t>(cfg_.poll_interval.count());
    tick = std::min<uint64_t>(tick, static_cast<uint64_t>(cfg_.partial_line_timeout.count()) / 2);
    if (multiline()) {
      tick =
          std::min<uint64_t>(tick, static_cast<uint64_t>(cfg_.multiline_flush_timeout.count()) / 2);
    }
    tick = std::max<uint64_t>(tick, 5);
    uv_timer_start(
        &tick_timer_, [](uv_timer_t* t) { static_cast<Impl*>(t->data)->onTick(); }, tick, tick);
    schedulePump();
  }

  void resume() {
    if (!started_ || stopping_ || !paused_) return;
    paused_ = false;
    if (!offerBatch()) return;
    schedulePump();
  }

  void stop(std::function<void()> done) {
    if (stopping_) {
      spdlog::error("tail source: stop() called twice; ignored");
      return;
    }
    stopping_ = true;
    if (!started_) {
      done();
      return;
    }
    done_ = std::move(done);
    uv_timer_stop(&pump_timer_);
    uv_timer_stop(&tick_timer_);
    ctx_->metrics().clearGauges(this);
    // What is in the batch goes once more; partial lines and pending multi-line events stay
    // unread: the saved positions are before them, so the next run reads them again.
    if (!batch_.empty()) {
      paused_ = false;
      if (!offerBatch()) {
        dropped_->inc(batch_.size());
        spdlog::warn(
            "tail source '{}': {} events not accepted at stop; they are read again at the next "
            "start",
            ctx_->name(), batch_.size());
        batch_.clear();
      }
    }
    for (auto& f : files_) closeFd(*f);
    for (auto& w : watchers_) closeHandle(reinterpret_cast<uv_handle_t*>(w.get()));
    closeHandle(reinterpret_cast<uv_handle_t*>(&pump_timer_));
    closeHandle(reinterpret_cast<uv_handle_t*>(&tick_timer_));
    if (stateFileWanted()) writeState();
  }

  size_t openFiles() const {
    size_t n = 0;
    for (const auto& f : files_) n += f->fd >= 0;
    return n;
  }
  size_t trackedFiles() const { return files_.size(); }
  bool isOpen(const std::string& path) const {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return false;
    for (const auto& f : files_) {
      if (f->fd >= 0 && f->dev == static_cast<uint64_t>(st.st_dev) &&
          f->ino == static_cast<uint64_t>(st.st_ino)) {
        return true;
      }
    }
    return false;
  }
  bool caughtUp() {
    if (paused_ || !batch_.empty()) return false;
    for (const auto& found : expandGlobs()) {
      File* f = findByInode(static_cast<uint64_t>(found.st.st_dev),
                            static_cast<uint64_t>(found.st.st_ino));
      if (!f || f->fd < 0) return false;  // not found or not opened yet
    }
    for (const auto& f : files_) {
      if (f->deferred) return false;
      if (f->fd < 0) continue;
      if (!f->at_eof) return false;
      if (f->buf.size() && std::memchr(f->buf.data(), '\n', f->buf.size())) return false;
      struct stat st {};
      if (::fstat(f->fd, &st) == 0 && static_cast<uint64_t>(st.st_size) != f->read_offset) {
        return false;
      }
      // Truncated and written again to the same size: only the fingerprint tells.
      if (f->fpl > 0 && !fingerprintMatches(f->fd, f->fp, f->fpl)) return false;
    }
    return true;
  }
  const std::string& key() const { return key_; }

  std::string positionsValue() const {
    nlohmann::json files = nlohmann::json::array();
    for (const auto& f : files_) {
      if (!f->known) continue;
      files.push_back({{"dev", f->dev},
                       {"ino", f->ino},
                       {"fp", hex64(f->fp)},
                       {"fpl", f->fpl},
                       {"off", f->emitted},
                       {"path", f->path}});
    }
    nlohmann::json hints = nlohmann::json::array();
    for (const auto& h : hints_) {
      hints.push_back({{"fp", hex64(h.fp)}, {"fpl", h.fpl}, {"off", h.off}, {"path", h.path}});
    }
    nlohmann::json doc = {{"v", kStateVersion}, {"files", files}, {"hints", hints}};
    return doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }

 private:
  bool multiline() const { return cfg_.multiline_start.re || cfg_.multiline_continuation.re; }
  uint64_t now() const { return uv_now(loop_); }

  // ---- saved state ---------------------------------------------------------------------------

  static bool parseState(const std::string& text, std::vector<SavedFile>& files,
                         std::vector<SavedFile>& hints) {
    auto doc = nlohmann::json::parse(text, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) return false;
    try {
      for (const auto& e : doc.value("files", nlohmann::json::array())) {
        SavedFile s;
        s.dev = e.at("dev").get<uint64_t>();
        s.ino = e.at("ino").get<uint64_t>();
        s.fp = parseHex64(e.at("fp").get<std::string>());
        s.fpl = e.at("fpl").get<uint64_t>();
        s.off = e.at("off").get<uint64_t>();
        s.path = e.at("path").get<std::string>();
        files.push_back(std::move(s));
      }
      for (const auto& e : doc.value("hints", nlohmann::json::array())) {
        SavedFile s;
        s.fp = parseHex64(e.at("fp").get<std::string>());
        s.fpl = e.at("fpl").get<uint64_t>();
        s.off = e.at("off").get<uint64_t>();
        s.path = e.value("path", "");
        hints.push_back(std::move(s));
      }
    } catch (const std::exception&) {
      return false;  // start-up only: never on the data path
    }
    return true;
  }

  // Reads the saved positions: from the channels when one keeps them, else the state file.
  void restore() {
    std::vector<SavedFile> files, hints;
    auto values = ctx_->durablePositions(key_);
    if (!values.empty()) {
      using_channel_ = true;
      // Several channels: resume every file from the oldest of their offsets.
      for (const auto& v : values) {
        std::vector<SavedFile> f, h;
        if (!parseState(v, f, h)) {
          spdlog::error("tail source '{}': unreadable positions in a channel; ignored",
                        ctx_->name());
          continue;
        }
        have_state_ = true;
        for (auto& s : f) {
          auto it = std::find_if(files.begin(), files.end(), [&](const SavedFile& o) {
            return o.dev == s.dev && o.ino == s.ino && o.fp == s.fp && o.fpl == s.fpl;
          });
          if (it == files.end()) {
            files.push_back(s);
          } else {
            it->off = std::min(it->off, s.off);
          }
        }
        for (auto& s : h) hints.push_back(s);
      }
    } else if (!state_path_.empty()) {
      FILE* fp = std::fopen(state_path_.c_str(), "rb");
      if (fp) {
        std::string text;
        char buf[65536];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, fp)) > 0) text.append(buf, n);
        std::fclose(fp);
        if (parseState(text, files, hints)) {
          have_state_ = true;
        } else {
          spdlog::error("tail source '{}': state file {} is unreadable; starting afresh",
                        ctx_->name(), state_path_);
        }
      }
    }
    saved_ = std::move(files);
    for (auto& h : hints) {
      hints_.push_back({h.fp, h.fpl, h.off, h.path, 0});
    }
    spdlog::info(
        "tail source '{}': {} saved file positions ({})", ctx_->name(), saved_.size(),
        using_channel_ ? "from the channels" : (have_state_ ? "from the state file" : "none"));
    // A file channel that holds no positions yet (new, or just put in place of a memory
    // channel) keeps them from the first put on: no state file then.
    if (ctx_->keepsPositions().value_or(false)) using_channel_ = true;
  }

  // ---- discovery -------------------------------------------------------------------------------

  struct Found {
    std::string path;
    struct stat st;
  };

  std::vector<Found> expandGlobs() {
    std::vector<Found> out;
    std::set<std::string> seen;
    for (const auto& pattern : cfg_.paths) {
      glob_t g{};
      int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
      if (rc == 0) {
        for (size_t i = 0; i < g.gl_pathc; ++i) {
          std::string p = g.gl_pathv[i];
          if (!seen.insert(p).second) continue;
          Found f{p, {}};
          if (::stat(p.c_str(), &f.st) != 0 || !S_ISREG(f.st.st_mode)) continue;
          out.push_back(std::move(f));
        }
      }
      ::globfree(&g);
    }
    return out;
  }

  bool matchedByGlobs(const File& f) {
    for (const auto& found : expandGlobs()) {
      if (static_cast<uint64_t>(found.st.st_dev) == f.dev &&
          static_cast<uint64_t>(found.st.st_ino) == f.ino) {
        return true;
      }
    }
    return false;
  }

  File* findByInode(uint64_t dev, uint64_t ino) {
    for (auto& f : files_) {
      if (f->dev == dev && f->ino == ino) return f.get();
    }
    return nullptr;
  }

  // Whether the first fpl bytes of the file at fd hash to fp.
  static bool fingerprintMatches(int fd, uint64_t fp, uint64_t fpl) {
    if (fpl == 0) return true;
    uint64_t h = 0;
    return hashPrefix(fd, fpl, h) && h == fp;
  }

  bool openFile(File& f) {
    int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
      spdlog::warn("tail source '{}': cannot open {}: {}", ctx_->name(), f.path,
                   std::strerror(errno));
      return false;
    }
    struct stat st {};
    ::fstat(fd, &st);
    if (static_cast<uint64_t>(st.st_dev) != f.dev || static_cast<uint64_t>(st.st_ino) != f.ino) {
      ::close(fd);  // replaced between stat and open: the next scan sees the new file
      return false;
    }
    f.fd = fd;
    files_opened_->inc();
    return true;
  }

  void closeFd(File& f) {
    if (f.fd >= 0) {
      ::close(f.fd);
      f.fd = -1;
      if (files_closed_) files_closed_->inc();
    }
  }

  // Sets up a newly found file: its start offset from a hint, start_at, or 0.
  File* addFile(const Found& found, bool initial) {
    auto f = std::make_unique<File>();
    f->path = found.path;
    f->dev = static_cast<uint64_t>(found.st.st_dev);
    f->ino = static_cast<uint64_t>(found.st.st_ino);
    f->last_growth_ms = now();
    if (openFiles() >= cfg_.max_open_files) {
      if (!warned_limit_) {
        warned_limit_ = true;
        spdlog::warn("tail source '{}': max_open_files ({}) reached; {} waits for a free slot",
                     ctx_->name(), cfg_.max_open_files, found.path);
      }
      return nullptr;  // found again by a later scan
    }
    if (!openFile(*f)) return nullptr;
    // A rotated file that used this path is read to its end first.
    for (auto& o : files_) {
      if (o->detached && o->fd >= 0 && o->path == f->path) {
        f->has_pred = true;
        f->pred_dev = o->dev;
        f->pred_ino = o->ino;
      }
    }
    uint64_t size = static_cast<uint64_t>(found.st.st_size);
    File* raw = f.get();
    files_.push_back(std::move(f));
    if (!initial) {
      // A truncation not noticed yet (logrotate may have truncated the original between the
      // last check and this glob) must leave its hint before the copy is judged.
      for (auto& o : files_) {
        if (o.get() != raw && o->fd >= 0 && !o->deferred) checkTruncation(*o);
      }
      struct stat st {};
      if (::fstat(raw->fd, &st) == 0) size = static_cast<uint64_t>(st.st_size);
    }
    if (applyHint(*raw, size)) return raw;
    if (initial && !have_state_ && cfg_.start_at == "end") {
      settle(*raw, size);
      return raw;
    }
    if (!initial && possibleCopy(*raw)) {
      raw->deferred = true;
      raw->defer_until_ms = now() + static_cast<uint64_t>(cfg_.rotate_wait.count());
      return raw;
    }
    settle(*raw, 0);
    return raw;
  }

  // The file's reading starts at `off`.
  void settle(File& f, uint64_t off) {
    f.read_offset = f.buf_start = f.emitted = off;
    f.buf.clear();
    f.known = true;
    f.deferred = false;
    f.at_eof = false;
    f.fp = kFnvBasis;
    f.fpl = 0;
    if (off > 0) {
      // Starting past bytes not read (start_at: end, a copy): they count as read.
      uint64_t n = std::min<uint64_t>(cfg_.fingerprint_bytes, off);
      uint64_t h = 0;
      if (hashPrefix(f.fd, n, h)) {
        f.fp = h;
        f.fpl = n;
      }
    }
  }

  // A new file whose first bytes are those of a truncated file (the copy copytruncate made)
  // continues from where that file was read.
  bool applyHint(File& f, uint64_t size) {
    for (size_t i = 0; i < hints_.size(); ++i) {
      const Hint& h = hints_[i];
      if (h.fpl == 0 || size < h.fpl || size < h.off) continue;
      if (!fingerprintMatches(f.fd, h.fp, h.fpl)) continue;
      spdlog::info("tail source '{}': {} holds the start of truncated {}; reading it from {}",
                   ctx_->name(), f.path, h.path, h.off);
      uint64_t off = h.off;
      hints_.erase(hints_.begin() + static_cast<long>(i));
      settle(f, off);
      return true;
    }
    return false;
  }

  // Whether a new file may be a copy of a file being followed (copytruncate copies, then
  // truncates): its bytes so far are a prefix of that file's, or it is too short yet to be
  // compared with a truncated file's fingerprint.
  bool possibleCopy(File& f) {
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) return false;
    uint64_t size = static_cast<uint64_t>(st.st_size);
    for (const auto& h : hints_) {
      if (h.fpl > 0 && size < std::max(h.fpl, h.off)) return true;
    }
    for (auto& o : files_) {
      if (o.get() == &f || o->fd < 0 || o->deferred) continue;
      uint64_t len = o->fpl;
      if (len == 0) {
        // Nothing read from it yet (its new generation after a truncation, say): logrotate may
        // copy it before this source reads it, and truncate it after. Compare with what it holds.
        struct stat ost {};
        if (::fstat(o->fd, &ost) != 0 || ost.st_size <= 0) continue;
        len = std::min<uint64_t>(cfg_.fingerprint_bytes, static_cast<uint64_t>(ost.st_size));
      }
      uint64_t n = std::min(size, len);
      uint64_t a = 0, b = 0;
      if (n == 0) return true;
      if (!hashPrefix(f.fd, n, a)) continue;
      // The other file shrank, or its start changed, since it was last checked: it is being
      // truncated (logrotate truncates right after the copy). Wait for that truncation's hint.
      if (!hashPrefix(o->fd, n, b)) return true;
      if (a == b) return true;
      if (o->fpl > 0 && !fingerprintMatches(o->fd, o->fp, o->fpl)) return true;
    }
    return false;
  }

  // Decides about a file that waits as a possible copy.
  void reconsiderDeferred(File& f) {
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) return;
    if (applyHint(f, static_cast<uint64_t>(st.st_size))) return;
    if (now() >= f.defer_until_ms || !possibleCopy(f)) settle(f, 0);
  }

  // Extends the running fingerprint with bytes just read at file offset `at`: the fingerprint
  // only ever covers bytes this source has read, so a file replaced before it was read is not
  // mistaken for the old one.
  void extendFingerprint(File& f, const char* data, uint64_t n, uint64_t at) {
    if (f.fpl >= cfg_.fingerprint_bytes || at > f.fpl || at + n <= f.fpl) return;
    uint64_t skip = f.fpl - at;
    uint64_t take = std::min<uint64_t>(cfg_.fingerprint_bytes - f.fpl, n - skip);
    f.fp = fnv1a(data + skip, take, f.fp);
    f.fpl += take;
  }

  void initialScan() {
    auto found = expandGlobs();
    std::vector<bool> matched(saved_.size(), false);
    std::vector<bool> taken(found.size(), false);
    // Saved files still at a matching path.
    for (size_t i = 0; i < found.size(); ++i) {
      for (size_t s = 0; s < saved_.size(); ++s) {
        if (matched[s] || saved_[s].dev != static_cast<uint64_t>(found[i].st.st_dev) ||
            saved_[s].ino != static_cast<uint64_t>(found[i].st.st_ino)) {
          continue;
        }
        matched[s] = true;
        // A saved file with no fingerprint (it was empty) proves nothing about identity: its
        // inode may have been reused by a new file, for example a copy that copytruncate made,
        // which must get its hint. Nothing of it was read, so it is treated as a new file.
        if (saved_[s].fpl == 0 && saved_[s].off == 0) break;
        if (resumeSaved(found[i], saved_[s], false)) taken[i] = true;
        break;
      }
    }
    // Saved files renamed away while the agent was down: look in their directory.
    for (size_t s = 0; s < saved_.size(); ++s) {
      if (matched[s]) continue;
      if (findRenamed(saved_[s])) continue;
      // Gone, or its content replaced: a copy of it may still show up.
      hints_.push_back({saved_[s].fp, saved_[s].fpl, saved_[s].off, saved_[s].path, 0});
    }
    uint64_t expires = now() + static_cast<uint64_t>(cfg_.rotate_wait.count());
    for (auto& h : hints_) h.expires_ms = expires;
    for (size_t i = 0; i < found.size(); ++i) {
      if (!taken[i] && !findByInode(static_cast<uint64_t>(found[i].st.st_dev),
                                    static_cast<uint64_t>(found[i].st.st_ino))) {
        addFile(found[i], true);
      }
    }
    saved_.clear();
    initial_done_ = true;
    last_scan_ms_ = now();
  }

  // Opens a saved file and resumes it at its offset; false when its content is not the same.
  bool resumeSaved(const Found& found, const SavedFile& s, bool detached) {
    auto f = std::make_unique<File>();
    f->path = found.path;
    f->dev = s.dev;
    f->ino = s.ino;
    f->last_growth_ms = now();
    if (!openFile(*f)) return false;
    uint64_t size = static_cast<uint64_t>(found.st.st_size);
    if (size < s.fpl || !fingerprintMatches(f->fd, s.fp, s.fpl)) {
      closeFd(*f);
      hints_.push_back({s.fp, s.fpl, s.off, s.path, 0});
      return false;  // same inode, other content: a new file (and maybe a copy somewhere)
    }
    if (size < s.off) {
      truncations_->inc();
      spdlog::warn(
          "tail source '{}': {} is shorter ({}) than its saved position ({}); reading "
          "it from the start",
          ctx_->name(), found.path, size, s.off);
      hints_.push_back({s.fp, s.fpl, s.off, s.path, 0});
      f->read_offset = f->buf_start = f->emitted = 0;
      f->fp = kFnvBasis;
      f->fpl = 0;
    } else {
      f->read_offset = f->buf_start = f->emitted = s.off;
      f->fp = s.fp;
      f->fpl = s.fpl;
    }
    f->known = true;
    f->detached = detached;
    spdlog::info("tail source '{}': resuming {} at {}", ctx_->name(), found.path, f->emitted);
    files_.push_back(std::move(f));
    return true;
  }

  bool findRenamed(const SavedFile& s) {
    std::string dir = dirOf(s.path);
    DIR* d = ::opendir(dir.c_str());
    if (!d) return false;
    bool ok = false;
    while (dirent* e = ::readdir(d)) {
      if (e->d_ino != s.ino) continue;
      Found found{dir + "/" + e->d_name, {}};
      if (::stat(found.path.c_str(), &found.st) != 0 || !S_ISREG(found.st.st_mode)) continue;
      if (static_cast<uint64_t>(found.st.st_dev) != s.dev ||
          static_cast<uint64_t>(found.st.st_ino) != s.ino) {
        continue;
      }
      ok = resumeSaved(found, s, true);
      if (ok) {
        rotations_->inc();
        spdlog::info("tail source '{}': {} was rotated to {} while stopped", ctx_->name(), s.path,
                     found.path);
      }
      break;
    }
    ::closedir(d);
    return ok;
  }

  void scan() {
    last_scan_ms_ = now();
    // Truncations first: a copy that copytruncate made is then recognised by the hint.
    for (auto& f : files_) {
      if (f->fd >= 0 && !f->deferred) checkTruncation(*f);
    }
    auto found = expandGlobs();
    for (auto& f : files_) f->seen = false;
    for (const auto& fd : found) {
      File* f =
          findByInode(static_cast<uint64_t>(fd.st.st_dev), static_cast<uint64_t>(fd.st.st_ino));
      if (f) {
        if (f->path != fd.path) {
          spdlog::info("tail source '{}': {} is now {}", ctx_->name(), f->path, fd.path);
          f->path = fd.path;
        }
        f->seen = true;
        f->detached = false;
        continue;
      }
      File* added = addFile(fd, false);
      if (added) added->seen = true;
    }
    for (auto& f : files_) {
      if (f->seen || f->detached) continue;
      f->detached = true;
      rotations_->inc();
      spdlog::info("tail source '{}': {} was rotated or deleted; reading it to its end",
                   ctx_->name(), f->path);
    }
  }

  void checkTruncation(File& f) {
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) return;
    uint64_t size = static_cast<uint64_t>(st.st_size);
    bool shrunk = size < f.read_offset;
    bool replaced = !shrunk && f.fpl > 0 && !fingerprintMatches(f.fd, f.fp, f.fpl);
    if (!shrunk && !replaced) return;
    restartTruncated(f, size);
  }

  // The file was truncated (or its content replaced): hand over what was read, leave a hint
  // for a copy, and read it again from 0.
  void restartTruncated(File& f, uint64_t size) {
    truncations_->inc();
    // What was read is handed over; a partial line is dropped (copytruncate keeps it in the
    // copy, which continues from `emitted`).
    if (f.ml_active) flushMultiline(f);
    if (f.fpl > 0) {
      hints_.push_back({f.fp, f.fpl, f.emitted, f.path,
                        now() + static_cast<uint64_t>(cfg_.rotate_wait.count())});
    }
    spdlog::info(
        "tail source '{}': {} was truncated (size {}, read up to {}); reading it from "
        "the start",
        ctx_->name(), f.path, size, f.read_offset);
    f.discarding = false;
    settle(f, 0);
    f.last_growth_ms = now();
    // A copy that waited for this truncation can start now.
    for (auto& o : files_) {
      if (o->deferred) reconsiderDeferred(*o);
    }
  }

  // Timeouts: deferred copies, hints, partial lines, multi-line events, finished rotated files.
  void housekeeping() {
    uint64_t t = now();
    for (auto& f : files_) {
      // No truncation came (or the file differs by now): a file of its own.
      if (f->deferred) reconsiderDeferred(*f);
    }
    hints_.erase(std::remove_if(hints_.begin(), hints_.end(),
                                [&](const Hint& h) { return h.expires_ms <= t; }),
                 hints_.end());
    for (auto& f : files_) {
      if (f->fd < 0 || f->deferred || !f->at_eof) continue;
      if (f->ml_active &&
          t - f->last_line_ms >= static_cast<uint64_t>(cfg_.multiline_flush_timeout.count())) {
        flushMultiline(*f);
      }
      if (!f->buf.empty() &&
          t - f->last_growth_ms >= static_cast<uint64_t>(cfg_.partial_line_timeout.count())) {
        flushPartial(*f);
      }
    }
    // Rotated files read to their end and idle: done.
    for (size_t i = 0; i < files_.size();) {
      File& f = *files_[i];
      bool done = false;
      if (f.detached && f.fd < 0) {
        done = true;
      } else if (f.detached && f.at_eof &&
                 t - f.last_growth_ms >= static_cast<uint64_t>(cfg_.rotate_wait.count())) {
        struct stat st {};
        if (::fstat(f.fd, &st) == 0 && static_cast<uint64_t>(st.st_size) > f.read_offset) {
          f.at_eof = false;
        } else if (matchedByGlobs(f)) {
          f.detached = false;  // missed by a glob that raced with a rename: still followed
        } else {
          if (f.ml_active) flushMultiline(f);
          if (!f.buf.empty()) flushPartial(f);
          spdlog::info("tail source '{}': finished rotated {} at {}", ctx_->name(), f.path,
                       f.read_offset);
          done = true;
        }
      }
      if (done) {
        for (auto& o : files_) {
          if (o->has_pred && o->pred_dev == f.dev && o->pred_ino == f.ino) o->has_pred = false;
        }
        closeFd(f);
        files_.erase(files_.begin() + static_cast<long>(i));
        continue;
      }
      ++i;
    }
  }

  // ---- reading ---------------------------------------------------------------------------------

  void schedulePump() {
    if (stopping_ || paused_ || uv_is_active(reinterpret_cast<uv_handle_t*>(&pump_timer_))) {
      return;
    }
    uv_timer_start(
        &pump_timer_, [](uv_timer_t* t) { static_cast<Impl*>(t->data)->pump(); }, 0, 0);
  }

  void onTick() {
    if (paused_ || stopping_) return;
    if (now() - last_scan_ms_ >= static_cast<uint64_t>(cfg_.poll_interval.count())) {
      scan_needed_ = true;
    }
    if (scan_needed_) {
      scan_needed_ = false;
      scan();
    }
    housekeeping();
    for (auto& f : files_) {
      if (f->fd >= 0 && f->at_eof) f->at_eof = false;  // the poll: look for growth
    }
    pump();
    maybeWriteState();
  }

  bool predecessorReading(const File& f) {
    if (!f.has_pred) return false;
    for (auto& o : files_) {
      if (o->dev == f.pred_dev && o->ino == f.pred_ino && o->fd >= 0) return !o->at_eof;
    }
    return false;
  }

  void pump() {
    if (paused_ || stopping_) return;
    if (scan_needed_) {
      scan_needed_ = false;
      scan();
    }
    ts_ = nowNs();
    uint64_t budget = kChunksPerTurn * cfg_.read_bytes;
    bool more = false;
    size_t n = files_.size();
    for (size_t k = 0; k < n && !more; ++k) {
      File& f = *files_[(next_file_ + k) % n];
      if (f.fd < 0 || f.deferred) continue;
      if (predecessorReading(f)) continue;
      if (!splitLines(f)) return;
      if (f.check_before_read && !f.at_eof) {
        // It was at its end: make sure it was not truncated before reading on at the old offset.
        f.check_before_read = false;
        checkTruncation(f);
      }
      while (!f.at_eof) {
        if (budget == 0) {
          more = true;
          next_file_ = (next_file_ + k) % n;
          break;
        }
        ssize_t r = readChunk(f);
        if (r < 0) {
          read_errors_->inc();
          spdlog::warn("tail source '{}': reading {}: {}", ctx_->name(), f.path,
                       std::strerror(static_cast<int>(-r)));
          f.at_eof = true;
          break;
        }
        budget -= std::min<uint64_t>(budget, static_cast<uint64_t>(r));
        if (!splitLines(f)) return;
      }
    }
    if (more) {
      schedulePump();
      return;
    }
    for (auto& f : files_) {
      if (f->buf.empty()) f->buf.shrink();
    }
    offerBatch();
  }

  ssize_t readChunk(File& f) {
    size_t want = static_cast<size_t>(cfg_.read_bytes);
    char* dst = f.buf.grow(want);
    ssize_t r = preadAll(f.fd, dst, want, f.read_offset);
    if (r < 0) return r;
    if (r == 0) {
      f.at_eof = true;
      f.check_before_read = true;
      return 0;
    }
    if (f.fpl > 0 && !fingerprintMatches(f.fd, f.fp, f.fpl)) {
      // Truncated and written again past read_offset since the last look (a copytruncate
      // while the file was read half-way, or racing with this pread): the bytes just read are
      // the new content's, at the old offset. Drop them; the file starts over at 0 and its copy
      // (if any) continues from `emitted` through the hint.
      struct stat st {};
      uint64_t size = ::fstat(f.fd, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
      restartTruncated(f, size);
      return r;
    }
    f.buf.commit(static_cast<size_t>(r));
    extendFingerprint(f, dst, static_cast<uint64_t>(r), f.read_offset);
    f.read_offset += static_cast<uint64_t>(r);
    f.last_growth_ms = now();
    bytes_->inc(static_cast<uint64_t>(r));
    if (static_cast<size_t>(r) < want) f.at_eof = true;
    if (f.at_eof) f.check_before_read = true;
    return r;
  }

  // Cuts the complete lines out of the file's buffer; false when a batch was refused (the rest
  // stays buffered until resume()).
  bool splitLines(File& f) {
    const size_t max = static_cast<size_t>(cfg_.max_line_bytes);
    const bool truncate = cfg_.on_long_line == "truncate";
    size_t pos = 0;
    bool ok = true;
    while (ok && pos < f.buf.size()) {
      const char* data = f.buf.data() + pos;
      size_t avail = f.buf.size() - pos;
      const char* nl = static_cast<const char*>(std::memchr(data, '\n', avail));
      if (f.discarding) {
        if (!nl) {
          pos = f.buf.size();
          break;
        }
        pos += static_cast<size_t>(nl - data) + 1;
        f.discarding = false;
        if (f.ml_active) {
          f.ml_end = f.buf_start + pos;
        } else {
          f.emitted = f.buf_start + pos;
        }
        continue;
      }
      if (nl) {
        size_t len = static_cast<size_t>(nl - data);
        size_t line_len = len > 0 && data[len - 1] == '\r' ? len - 1 : len;
        uint64_t end = f.buf_start + pos + len + 1;
        if (line_len <= max) {
          ok = onLine(f, std::string_view(data, line_len), end);
        } else if (truncate) {
          truncated_lines_->inc();
          ok = onLine(f, std::string_view(data, max), end);
        } else {
          size_t off = 0;
          while (line_len - off > max) {
            onLine(f, std::string_view(data + off, max), f.buf_start + pos + off + max);
            split_lines_->inc();
            off += max;
          }
          ok = onLine(f, std::string_view(data + off, line_len - off), end);
        }
        pos += len + 1;
        continue;
      }
      // No newline: a partial line, unless it is already too long.
      if (avail <= max) break;
      if (truncate) {
        truncated_lines_->inc();
        ok = onLine(f, std::string_view(data, max), f.buf_start + pos + max);
        f.discarding = true;
        pos = f.buf.size();
      } else {
        split_lines_->inc();
        ok = onLine(f, std::string_view(data, max), f.buf_start + pos + max);
        pos += max;
      }
    }
    f.buf.consume(pos);
    f.buf_start += pos;
    return ok;
  }

  // Emits the held partial line of an idle file.
  void flushPartial(File& f) {
    if (f.discarding) {
      f.discarding = false;
      if (!f.ml_active) f.emitted = f.read_offset;
    } else if (!f.buf.empty()) {
      size_t len = f.buf.size();
      if (len > 0 && f.buf.data()[len - 1] == '\r') --len;
      onLine(f, std::string_view(f.buf.data(), len), f.read_offset);
    }
    f.buf.consume(f.buf.size());
    f.buf_start = f.read_offset;
  }

  // One line ending at file offset `end`; false when the batch was refused.
  bool onLine(File& f, std::string_view line, uint64_t end) {
    lines_->inc();
    if (!multiline()) return addEvent(f, line, end);
    f.last_line_ms = now();
    bool starts;
    if (cfg_.multiline_start.re) {
      starts = RE2::PartialMatch(line, *cfg_.multiline_start.re);
    } else {
      starts = !RE2::PartialMatch(line, *cfg_.multiline_continuation.re);
    }
    bool ok = true;
    if (f.ml_active && !starts &&
        (f.ml_lines + 1 > cfg_.multiline_max_lines ||
         f.ml.size() + 1 + line.size() > cfg_.multiline_max_bytes)) {
      starts = true;  // the bound is reached: this line starts the next event
    }
    if (!f.ml_active || starts) {
      if (f.ml_active) ok = flushMultiline(f);
      f.ml.assign(line);
      f.ml_lines = 1;
      f.ml_active = true;
    } else {
      f.ml.push_back('\n');
      f.ml.append(line);
      ++f.ml_lines;
    }
    f.ml_end = end;
    return ok;
  }

  bool flushMultiline(File& f) {
    f.ml_active = false;
    bool ok = addEvent(f, f.ml, f.ml_end);
    f.ml.clear();
    f.ml_lines = 0;
    return ok;
  }

  // Adds an event; offers the batch when full. False when paused (the event is in the batch).
  bool addEvent(File& f, std::string_view body, uint64_t end) {
    uint32_t i = batch_.add(body, ts_ ? ts_ : nowNs());
    if (!cfg_.path_header.empty()) batch_.setHeader(i, cfg_.path_header, f.path);
    f.emitted = end;
    if (paused_) return false;
    if (batch_.size() >= cfg_.batch_size) return offerBatch();
    return true;
  }

  bool offerBatch() {
    if (paused_) return false;
    if (batch_.empty()) return true;
    std::string value = positionsValue();
    if (ctx_->offerWithPositions(batch_, {{key_, value}}) == OfferResult::Full) {
      paused_ = true;
      return false;
    }
    batch_.clear();
    // Kept in channel mode too: a reload can leave the source with memory channels only, and
    // the state file then starts from here.
    acked_state_ = std::move(value);
    state_dirty_ = true;
    if (first_accept_ms_ == 0) first_accept_ms_ = now() + 1;
    return true;
  }

  // ---- state file ------------------------------------------------------------------------------

  bool stateFileWanted() {
    // The context's answer follows the channels across reloads (file channel in or out).
    if (auto known = ctx_->keepsPositions(); known && *known != using_channel_) {
      using_channel_ = *known;
      spdlog::info("tail source '{}': {}", ctx_->name(),
                   using_channel_ ? "the channels keep positions; no state file"
                                  : "no channel keeps positions now; keeping a state file");
    }
    if (using_channel_ || state_path_.empty() || !state_dirty_) return false;
    // A channel that keeps positions has them durable by now: it is the source of truth.
    if (ctx_->keepsPositions().value_or(false) || !ctx_->durablePositions(key_).empty()) {
      using_channel_ = true;
      spdlog::info("tail source '{}': the channels keep positions; no state file", ctx_->name());
      return false;
    }
    return true;
  }

  void maybeWriteState() {
    if (state_writing_ || first_accept_ms_ == 0) return;
    // With a context that cannot tell whether a channel keeps positions, the first write waits
    // a second, so that a durable channel has had time to show it does (its put completes
    // after fsync).
    if (!ctx_->keepsPositions().has_value() && now() < first_accept_ms_ + 1000) return;
    if (now() - last_state_ms_ < static_cast<uint64_t>(cfg_.poll_interval.count())) return;
    if (stateFileWanted()) writeState();
  }

  struct StateJob {
    uv_work_t req{};
    Impl* self = nullptr;
    std::string path, content, error;
  };

  void writeState() {
    if (state_writing_) {
      state_again_ = true;
      return;
    }
    state_writing_ = true;
    state_dirty_ = false;
    last_state_ms_ = now();
    auto* job = new StateJob;
    job->self = this;
    job->path = state_path_;
    job->content = acked_state_;
    job->req.data = job;
    ++open_handles_;  // the job counts like a handle: stop waits for it
    uv_queue_work(
        loop_, &job->req,
        [](uv_work_t* req) {
          auto* j = static_cast<StateJob*>(req->data);
          j->error = writeFileAtomically(j->path, j->content);
        },
        [](uv_work_t* req, int) {
          auto* j = static_cast<StateJob*>(req->data);
          Impl* self = j->self;
          if (!j->error.empty()) {
            self->state_errors_->inc();
            self->state_dirty_ = true;
            spdlog::error("tail source '{}': writing state file {}: {}", self->ctx_->name(),
                          j->path, j->error);
          }
          delete j;
          self->state_writing_ = false;
          if (self->stopping_ && self->state_again_ && self->state_dirty_) {
            self->state_again_ = false;
            --self->open_handles_;
            self->writeState();
            return;
          }
          self->onClosed();
        });
  }

  // Runs on the thread pool: write aside, fsync, rename, fsync the directory.
  static std::string writeFileAtomically(const std::string& path, const std::string& content) {
    std::string dir = dirOf(path);
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    std::string tmp = path + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) return std::string("open: ") + std::strerror(errno);
    size_t done = 0;
    while (done < content.size()) {
      ssize_t w = ::write(fd, content.data() + done, content.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        std::string e = std::string("write: ") + std::strerror(errno);
        ::close(fd);
        return e;
      }
      done += static_cast<size_t>(w);
    }
    if (::fsync(fd) != 0) {
      std::string e = std::string("fsync: ") + std::strerror(errno);
      ::close(fd);
      return e;
    }
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      return std::string("rename: ") + std::strerror(errno);
    }
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
    return {};
  }

  // ---- watching and handles --------------------------------------------------------------------

  void startWatchers() {
    std::set<std::string> dirs;
    for (const auto& p : cfg_.paths) {
      std::string dir = dirOf(p);
      if (hasGlobChars(dir)) continue;  // polled only
      dirs.insert(dir);
    }
    for (const auto& dir : dirs) {
      auto w = std::make_unique<uv_fs_event_t>();
      uv_fs_event_init(loop_, w.get());
      w->data = this;
      ++open_handles_;
      int rc = uv_fs_event_start(
          w.get(),
          [](uv_fs_event_t* h, const char*, int events, int) {
            auto* self = static_cast<Impl*>(h->data);
            if (events & UV_RENAME) self->scan_needed_ = true;
            for (auto& f : self->files_) f->at_eof = false;
            self->schedulePump();
          },
          dir.c_str(), 0);
      if (rc != 0) {
        spdlog::warn("tail source '{}': cannot watch {}: {}; polling only", ctx_->name(), dir,
                     uv_strerror(rc));
      }
      watchers_.push_back(std::move(w));
    }
  }

  void closeHandle(uv_handle_t* h) {
    if (uv_is_closing(h)) return;
    uv_close(h, [](uv_handle_t* handle) { static_cast<Impl*>(handle->data)->onClosed(); });
  }

  void onClosed() {
    --open_handles_;
    if (stopping_ && open_handles_ == 0 && done_) {
      auto done = std::move(done_);
      done_ = nullptr;
      done();  // may destroy the source
    }
  }

  TailConfig cfg_;
  std::string state_path_;
  SourceContext* ctx_ = nullptr;
  uv_loop_t* loop_ = nullptr;
  std::string key_;
  std::vector<std::unique_ptr<File>> files_;
  std::vector<Hint> hints_;
  std::vector<SavedFile> saved_;
  Batch batch_;
  int64_t ts_ = 0;
  size_t next_file_ = 0;

  uv_timer_t pump_timer_{};
  uv_timer_t tick_timer_{};
  std::vector<std::unique_ptr<uv_fs_event_t>> watchers_;
  int open_handles_ = 0;

  bool started_ = false;
  bool stopping_ = false;
  bool paused_ = false;
  bool scan_needed_ = false;
  bool initial_done_ = false;
  bool have_state_ = false;
  bool using_channel_ = false;
  bool warned_limit_ = false;
  uint64_t last_scan_ms_ = 0;

  std::string acked_state_;
  bool state_dirty_ = false;
  bool state_writing_ = false;
  bool state_again_ = false;
  uint64_t first_accept_ms_ = 0;
  uint64_t last_state_ms_ = 0;

  Counter* lines_ = nullptr;
  Counter* bytes_ = nullptr;
  Counter* rotations_ = nullptr;
  Counter* truncations_ = nullptr;
  Counter* truncated_lines_ = nullptr;
  Counter* split_lines_ = nullptr;
  Counter* files_opened_ = nullptr;
  Counter* files_closed_ = nullptr;
  Counter* read_errors_ = nullptr;
  Counter* state_errors_ = nullptr;
  Counter* dropped_ = nullptr;
  std::function<void()> done_;
};

// ---------------------------------------------------------------------------------------------

TailSource::TailSource(TailConfig config, std::string state_file)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(state_file))) {}
TailSource::~TailSource() = default;
void TailSource::start(SourceContext& ctx) { impl_->start(ctx); }
void TailSource::resume() { impl_->resume(); }
void TailSource::stop(std::function<void()> done) { impl_->stop(std::move(done)); }
size_t TailSource::openFiles() const { return impl_->openFiles(); }
size_t TailSource::trackedFiles() const { return impl_->trackedFiles(); }
bool TailSource::isOpen(const std::string& path) const { return impl_->isOpen(path); }
bool TailSource::caughtUp() { return impl_->caughtUp(); }
std::string TailSource::positionsValue() const { return impl_->positionsValue(); }
std::string TailSource::positionsKey() const { return impl_->key(); }

void registerTailSource(Registry& registry) {
  registry.addSource<TailConfig>(
      "tail",
      "Follows growing files (globs), across rename and copytruncate rotation, truncation and "
      "deletion; each line (or multi-line event) becomes an event. Positions travel with the "
      "events into a file channel, else go to a state file.",
      tailOptionTable(), [](const TailConfig& config, const BuildContext& b) -> SourcePtr {
        std::string state = config.state_file;
        if (state.empty() && b.agent && !b.agent->data_dir.empty()) {
          state = b.agent->data_dir + "/tail/" + b.name + ".json";
        }
        return std::make_unique<TailSource>(config, state);
      });
}

}  // namespace sluice

#pragma once
// The `spooldir` source: files dropped into a directory are read line by line, then renamed with
// completed_suffix (or deleted); Flume's Spooling Directory source.
//
// Contract with the spooler: a file is complete when it appears (write it elsewhere and rename
// it in). One file is read at a time, in consume_order.
//
// Positions and crashes. Every offer carries one position key, "spooldir/<source name>", whose
// value names the file (path, device, inode, size, mtime, a fingerprint of its first bytes) and
// the byte offset after the last line of the batch (spool_files.h). At a restart the file it
// names goes first, exempt from min_age and the writer probe (its end still waits to settle),
// so that no other file's offer moves the key away from a half-read file. With a file channel that
// value is durable in the same write as the lines, so after kill -9 the source resumes at exactly
// that offset: nothing lost, nothing put twice. A file is completed (renamed or deleted) only once
// the channels' durable position for it says end of file; a crash between that put and the rename
// leaves a file whose durable position is its end, and the restarted source just completes it.
//
// Whether the channels keep positions the context says (SourceContext::keepsPositions: a file
// channel among them). When they do not (memory channels), the source keeps its own state file,
// <state_dir>/position (written aside, fsynced, renamed, in the thread pool), and completes
// files once their last batch is accepted. A context that cannot tell (test doubles) leaves it
// to be learnt: as soon as durablePositions() shows the key, they do; until then completing a
// file waits up to kDurableProbeWait after the first accepted put.
//
// When a file is taken. A file is opened only once it has settled: its ctime (set by every
// write, chmod and rename) is at least min_age old, and no other process has it open for writing
// (a read-lease probe, spool_files.h; where it cannot tell, min_age alone decides). Opens are
// O_NONBLOCK and the type is checked with fstat on the descriptor, so a FIFO renamed in after
// the scan cannot hold the loop; anything but a regular file is quarantined. Open errors that
// say something about the file (EACCES, EPERM, ELOOP, ENXIO, EIO) quarantine it; the others (a
// write lease held elsewhere, no descriptors or memory) are tried again at a later scan.
//
// Files that change. A file that grows after it was taken (while read, at its end, or at the
// last look before completion) is read on: its new lines are shipped, FilesGrownCount counts it
// and a warning names it. At its end a file is completed only once it has settled again;
// meanwhile the source waits (phase Settling) without emitting its unfinished last line, but no
// longer than max_settle: a file still changing then is quarantined (FilesUnsettledCount) so
// that it cannot hold back every other file for ever. A file
// that shrinks or is modified in place (same size, new mtime), one unreadable, a non-regular
// file, a line that cannot be converted under on_decode_error: fail, and a file that changed
// between the last look and the completion rename (checked with fstat after it) are logged,
// counted in FilesFailedCount and renamed with failed_suffix; the source carries on.
//
// Identity. Completion and quarantine move the file by the identity of the open descriptor
// (device + inode, spool::renameIfSame): a file renamed over the one being read is not renamed
// nor deleted but read later as a new file (FilesReplacedCount). A name reused after an earlier
// file of that name was completed is ingested normally and completed as
// `<name>.<n><completed_suffix>` (rename never overwrites: renameat2 RENAME_NOREPLACE).
// delete_policy immediate first moves the file to a hidden name, checks it, then unlinks it.
//
// Lines are bytes: cut on '\n', a trailing '\r' stripped, a last line without newline delivered,
// no line rejected for its encoding. Lines longer than max_line_bytes are split into pieces (each
// piece's end is an exact resume offset) or truncated (the line's position is its newline).
//
// The loop is never held long: one turn (a uv_idle callback) reads at most kReadsPerTurn chunks
// of kReadChunkBytes with pread. Regular-file reads and the directory scan are synchronous on the
// loop thread (page-cache speed; see docs/spooldir.md); nothing waits on another process. A refused
// offer (Full) parks the batch and stops reading until resume(). Memory: one batch plus one chunk
// plus one partial line.

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "agent/options.h"
#include "agent/registry.h"
#include "agent/source.h"
#include "sources/spooldir/charset.h"
#include "sources/spooldir/spool_files.h"

namespace sluice {

struct SpooldirConfig {
  std::string path;
  std::string completed_suffix = ".COMPLETED";
  std::string failed_suffix = ".FAILED";
  std::string delete_policy = "never";
  Regex include_pattern;
  Regex ignore_pattern;
  std::string consume_order = "oldest";
  bool recursive = false;
  bool file_header = false;
  std::string file_header_key = "file";
  bool basename_header = false;
  std::string basename_header_key = "basename";
  uint64_t batch_size = 1000;
  uint64_t max_line_bytes = uint64_t{1} << 20;
  std::string on_long_line = "split";
  Millis poll_interval{500};
  Millis min_age{5000};
  Millis max_settle{300000};
  bool watch = true;
  std::string input_charset;
  std::string on_decode_error = "replace";
  std::string state_dir;
  bool operator==(const SpooldirConfig&) const = default;
};

const OptionTable<SpooldirConfig>& spooldirOptionTable();

class SpooldirSource final : public Source {
 public:
  static constexpr size_t kReadChunkBytes = 256 * 1024;
  static constexpr int kReadsPerTurn = 4;
  static constexpr Millis kDurableProbeWait{2000};

  // `state_dir`: where the position is kept when the channels keep none.
  SpooldirSource(SpooldirConfig config, std::string state_dir);
  ~SpooldirSource() override;
  SpooldirSource(const SpooldirSource&) = delete;
  SpooldirSource& operator=(const SpooldirSource&) = delete;

  void start(SourceContext& ctx) override;
  void resume() override;
  void stop(std::function<void()> done) override;

  // For tests: no file open, nothing queued, not waiting for durability.
  bool idle() const;
  // For tests: with a context that cannot tell whether the channels keep positions, how long
  // to wait for them to show a position before deciding they keep none (default
  // kDurableProbeWait).
  void setDurableProbeWait(Millis wait) { probe_wait_ = wait; }
  const std::string& positionKey() const { return key_; }
  // For tests: called with the path just before a file is opened, and just before a read file
  // is renamed or deleted as completed (to race them).
  enum class TestPoint { BeforeOpen, BeforeComplete };
  void setTestHook(std::function<void(TestPoint, const std::string&)> hook) {
    test_hook_ = std::move(hook);
  }

 private:
  enum class Phase { Idle, Reading, Settling, AwaitDurable };
  enum class Step { Ok, Paused, Failed };
  enum class Change { Same, Grew, Failed };
  struct Counters {
    Counter* lines = nullptr;
    Counter* bytes = nullptr;
    Counter* files_completed = nullptr;
    Counter* files_failed = nullptr;
    Counter* files_grown = nullptr;
    Counter* files_replaced = nullptr;
    Counter* files_unsettled = nullptr;
    Counter* lines_truncated = nullptr;
    Counter* lines_split = nullptr;
    Counter* decode_replaced = nullptr;
  };

  void kick();
  void stopTurn();
  void turn();
  bool openNext();
  // Opens `path` and makes it current; false when it was skipped or failed.
  bool startFile(const std::string& path);
  // How long until the open file `fd` (ctime `ctime_ns`) has settled; 0: it has.
  uint64_t settleWaitMs(int fd, int64_t ctime_ns, const std::string& path);
  void pump();
  // fstat of the current file: a grown file is read on; a shrunk or rewritten one is failed.
  Change refreshSize();
  void noteGrowth(uint64_t from_size);
  // A file whose position survived a restart is another inode now: counted if it was mid-way.
  void noteReplacedBeforeRestart(const spool::Position& r);
  // Whether the file opened as `fd` (`id`) at a resumed position's path is the file `r` names:
  // the same inode number, and the same first bytes (fingerprint) or, without one, device.
  static bool sameFile(const spool::Position& r, int fd, const spool::FileId& id);
  // The position of the current file at `offset`, with its fingerprint (cached per length).
  spool::Position positionAt(uint64_t offset);
  Step processBuffer();
  Step emitLine(std::string_view line, uint64_t end_off);
  Step emitLong(std::string_view line, uint64_t start_off, uint64_t end_off);
  bool offerBatch();
  void finishReading();
  // The file kept changing at its end for max_settle: its complete lines are put, then it is
  // quarantined (a live log, which the tail source is for) so that the other files go on.
  void giveUpSettling();
  void checkDurable();
  void completeFile();
  void failFile(const std::string& why);
  // Counts and renames the file `id` found at `path` aside, only while `path` still names it;
  // false when it was not moved.
  bool quarantine(const std::string& path, const spool::FileId& id, const std::string& why);
  // Counts and logs a file renamed over ours that could not be put back (spool::renameIfSame).
  void notePutBackFailed(const std::string& path, const spool::Renamed& r);
  void closeFile();
  void refreshPositionsKept();
  bool nonDurable();
  void writeState();
  void maybeDone();
  void closeHandle(uv_handle_t* handle);

  SpooldirConfig config_;
  std::string state_path_;
  spool::ScanOptions scan_;
  SourceContext* ctx_ = nullptr;
  uv_loop_t* loop_ = nullptr;
  std::string key_;
  Counters counters_;
  spool::Utf8Converter converter_;
  std::string converted_;
  uint32_t seed_ = 0;
  Millis probe_wait_ = kDurableProbeWait;

  uv_idle_t turn_{};
  uv_timer_t poll_timer_{};
  uv_timer_t durable_timer_{};
  uv_timer_t state_timer_{};
  uv_timer_t settle_timer_{};
  uv_fs_event_t watch_{};
  bool watching_ = false;
  bool turning_ = false;
  int open_handles_ = 0;

  Phase phase_ = Phase::Idle;
  std::deque<std::string> queue_;
  std::set<std::string> ignored_;  // could not be renamed aside: never read again in this run
  std::optional<spool::Position> resume_;
  std::string last_scan_error_;
  // Files said to be waiting (for a writer, or an open to be retried); pruned at each scan.
  std::set<std::string> waiting_logged_;
  bool lease_unknown_logged_ = false;  // the lease probe could not tell (said once)
  bool future_logged_ = false;         // a ctime in the future (said once)
  std::function<void(TestPoint, const std::string&)> test_hook_;

  // The current file.
  std::string path_;
  std::string basename_;
  int fd_ = -1;
  spool::FileId id_;
  int64_t ctime_ns_ = 0;
  bool grew_ = false;                     // grew after it was taken (counted once)
  std::optional<uint64_t> settle_since_;  // uv_now when its end was first found unsettled
  uint64_t fp_len_ = 0;                   // the cached fingerprint: its length and hash
  uint64_t fp_hash_ = 0;
  uint64_t read_off_ = 0;  // next byte to read
  std::unique_ptr<char[]> buf_;
  size_t buf_cap_ = 0;
  size_t buf_len_ = 0;
  size_t buf_pos_ = 0;    // first unprocessed byte of buf_
  uint64_t buf_off_ = 0;  // file offset of buf_[0]
  std::string held_;      // truncate: the kept start of a long line, until its newline
  bool discarding_ = false;
  bool offered_this_file_ = false;

  Batch batch_;
  uint64_t batch_end_ = 0;    // file offset after the last line in batch_
  uint64_t offered_end_ = 0;  // file offset covered by the last accepted offer
  int64_t chunk_ts_ = 0;
  bool paused_ = false;  // an offer was refused; waiting for resume()

  bool positions_kept_ = false;
  bool probe_started_ = false;
  uint64_t probe_deadline_ = 0;  // uv_now
  std::string state_content_;
  bool state_dirty_ = false;
  bool state_inflight_ = false;

  bool started_ = false;
  bool disabled_ = false;  // bad suffix configuration: never spools
  bool stopping_ = false;
  std::function<void()> done_;
};

// What the option table cannot check: the spool directory exists, is a directory, and can be
// read and renamed in; the suffixes are not empty. Run by `sluice check`, reload and run.
ConfigErrors validateSpooldirConfig(const SpooldirConfig& cfg);

void registerSpooldirSource(Registry& registry);

}  // namespace sluice

#pragma once
// The `file` channel: a durable, segmented, append-only log on disk with one persisted cursor per
// consumer. What a put was acknowledged for (on_durable) survives kill -9 and, with the default
// `fsync: batch`, power loss.
//
// Directory layout (default <agent.data_dir>/channels/<name>)
// ---------------------------------------------------------
//   lock                          flock(LOCK_EX|LOCK_NB) held for the channel's life: a second
//                                 agent on the same directory is refused with a clear error.
//   seg-<20-digit seq>.log        segments; the number is the event number (seq) of the first
//                                 record the segment holds (or will hold, when it is empty).
//   cursor-<consumer>             one per consumer (name hex-escaped outside [A-Za-z0-9_.-]).
//   positions                     checkpoint of the source positions (see below).
//   *.tmp                         a metadata file being written aside; removed at start-up.
//   seg-*.log.damaged             a segment that could not be read, moved aside and counted.
//
// Event numbers: every event put gets a global number (seq), contiguous across records and
// segments and never reused (after a restart numbering continues from the tail).
//
// Record format (all integers little-endian, sized)
// --------------------------------------------------
//   u32 magic 0x43524c53 ("SLRC") | u32 length (of payload) | u32 crc32c(seq + payload) |
//   u64 seq (of the first event) | payload
//   payload = u32 event count, then per event: i64 timestamp_ns, u32 header count,
//             (u32 len, key, u32 len, value) per header, u32 len, body;
//             then u32 position count, (u32 len, key, u32 len, value) per position.
// One record holds one put (a whole batch and its source positions), so positions become
// durable atomically with the events they cover. Records never span segments; a segment is
// rolled when the next record would take it past `segment_bytes` (a single record larger than
// that gets a segment of its own). CRC-32C comes from ISA-L (crc32_iscsi).
//
// Cursor file: u32 magic "SLCU" | u32 version 1 | u64 low water (smallest event number the
// consumer has not committed) | u64 segment seq | u64 offset | u64 record seq (the record that
// holds the low water) | u32 crc32c of everything before it. Written as `<file>.tmp`, fsynced,
// renamed over the old one, directory fsynced. Cursor files are coalesced: a dirty cursor is
// written at most every `checkpoint_interval`, at stop, and always before a segment it passed is
// deleted (the writer thread runs metadata jobs in order, retrying each until it succeeds, so an
// unlink queued after a cursor write never overtakes it). Metadata jobs never wait behind a
// failing data write: while one is retried, the cursor files and deletions queued behind it run
// (in their order), because deleting consumed segments may be the only way a full volume gets
// space back. A cursor file that cannot be written aside (no block for a new file) is
// overwritten in place (44 bytes, one sector, CRC-checked). A cursor file may so get ahead of a
// journal record still waiting to be written; start-up merges the two (below), and commits
// whose journal record never reached the disk may be delivered again, as after a crash.
// Between two cursor files the commit journal (below) holds every commit.
//
// Commit journal: the commits of a consumer in one loop turn (and the creation or removal of a
// cursor) append one small positions-only record to the log under the reserved key
// "\x01cursor:<consumer>", holding the cursor's exact state: u32 version 1 | u64 next position |
// Loc of next (u64 segment, offset, record seq) | u32 count | per range not committed below next
// (rolled back or outstanding; adjacent ranges written as one): u64 begin, u64 end, Loc of
// begin. It rides the writer's group commit like any put, and the
// positions machinery below keeps its latest value across segment rolls, so at start-up the
// cursor resumes from the newest of the journal and its cursor file: what a consumer committed
// (once that journal record is on disk: the end of its loop turn plus one group commit; a cursor
// file is never written ahead of it, and start-up merges the two) is never delivered to
// it again, even when it committed out of order. Cursor files remain the checkpoint that
// segment deletion waits for. An empty value is a tombstone (the cursor was dropped).
//
// Positions file: u32 magic "SLPO" | u32 version 1 | u64 segment seq S | u32 count |
// (u32 len, key, u32 len, value)... | u32 crc32c. The latest value of every key put in records
// before segment S. Written by the writer just before it creates segment S, so start-up rebuilds
// positions() from this file plus a scan of the last segment only.
//
// Writer thread and durability
// ----------------------------
// put() (loop thread) reserves the record's estimated bytes against capacity, gives the batch an
// event number and queues it. The writer takes everything queued, encodes it, appends it with
// one pwrite per segment touched, then (policy `batch`) one fdatasync for the group, and hands
// completions back with uv_async_send. Only then, on the loop, do the events become visible to
// cursors and do on_durable callbacks run.
//   fsync: batch     (default) the put completes after fdatasync: power loss loses nothing that
//                    was acknowledged; kill -9 loses nothing either.
//   fsync: interval  the put completes after write(); fdatasync every `fsync_interval`. kill -9
//                    loses nothing acknowledged (the page cache survives); power loss may lose
//                    up to the last interval of acknowledged puts (the torn tail is cut off).
// A failed or short pwrite, ENOSPC, EIO, or a failed fdatasync: the writer truncates the segment
// back to the last good offset, bumps WriteErrorCount and retries the whole group with backoff
// (`retry_backoff` doubling up to 5 s). Puts wait; nothing acknowledged is lost; the process
// never exits over it. Hand-off is a mutex-guarded queue and one uv_async_t, referenced while
// puts are in flight, except while data writes fail: a stopping agent's loop then ends, and the
// channel's destructor stops the writer at once (the puts not written were never acknowledged;
// everything durable stays on disk). Once a put is given up at stop, no later put (events,
// positions or journal) is written: the log never holds a gap, nor positions past events that
// are not there.
//
// Reading
// -------
// A take reads records back with pread into fresh Batches (shared_ptr<const Batch>) and hands
// out slices, with the same semantics as the memory channel (several takes outstanding,
// commits in any order, rolled-back ranges first, lag). A small read cache (`read_cache_bytes`)
// keeps recently written and recently read batches, so a consumer that keeps up never touches
// the disk; the backlog is never held in memory. Each cursor carries the location (segment,
// offset) of the record it reads next; nothing indexes the whole backlog.
// A segment is deleted once every cursor (live, or persisted and not yet reopened) has a low
// water past it and it is not the segment being written.
//
// Start-up (cost independent of the backlog)
// ------------------------------------------
// Lists the directory, reads the cursor and positions files, opens the segments (open + fstat,
// no reads) and scans only the last segment to find the tail. A record that does not verify
// (bad magic, impossible length, bad CRC, bad payload): if a valid record follows, the bad bytes
// are skipped (CorruptRecordCount, logged with segment and offset); if none follows, it is a torn
// tail and the segment is truncated there. Older segments are checked the same way lazily, when
// a cursor reads them. A segment that cannot be opened or read (EIO) is renamed `.damaged`,
// counted (DamagedSegmentCount) and skipped: never a crash loop.
// Events lost to damage: event numbers are contiguous, so a reader that finds the next record
// starting past the event it wants (records cut off or skipped, a segment deleted, emptied or
// moved aside), or a cursor file whose low water lies before the oldest segment (segments go
// only after every cursor file passed them), has found events that are gone. They are counted
// once per event however many consumers cross the gap (EventsLostCount) and the range is logged;
// `sluice channel inspect` lists every such gap. Found lazily, like corrupt records.
//
// Capacity: hasRoom() is false when the log on disk plus what is queued plus the put would pass
// `max_bytes`, or when the volume's free space minus what is queued would drop under
// `min_free_bytes` (free space is refreshed by the writer with statvfs), or when more than 8 MiB
// of puts already wait for the writer (a slow or failing disk must not fill memory). An empty
// channel accepts one batch of any size under max_bytes (as the memory channel does). Space
// listeners fire when a segment is deleted or free space comes back.
//
// Threads: everything except the writer runs on the loop thread. Reads (pread) of old records
// happen on the loop thread; the read cache makes them rare for consumers that keep up.
//
// Metrics: ChannelSize, ChannelBytes (on disk), ChannelCapacity (max_bytes),
// ChannelFillPercentage, EventPutAttemptCount, EventPutSuccessCount, PutRefusedCount,
// EventTakeAttemptCount, EventTakeSuccessCount, CommitCount (takes committed), RollbackCount,
// FsyncCount, FsyncLatencyMaxMs
// (largest fdatasync of the last 10 s), CorruptRecordCount, DamagedSegmentCount,
// EventsLostCount, WriteErrorCount, and ConsumerLag_<consumer> per consumer.

#include <uv.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "agent/channel.h"
#include "agent/cursor_ledger.h"
#include "agent/metrics.h"
#include "agent/options.h"
#include "agent/registry.h"
#include "channels/file/file_ops.h"
#include "channels/file/record.h"

namespace sluice {

struct FileChannelConfig {
  std::string dir;  // empty: <agent.data_dir>/channels/<name>
  uint64_t segment_bytes = 64ull << 20;
  uint64_t max_bytes = 8ull << 30;
  uint64_t min_free_bytes = 512ull << 20;
  std::string fsync = "batch";  // batch | interval
  Millis fsync_interval{1000};
  Millis checkpoint_interval{1000};
  uint64_t read_cache_bytes = 16ull << 20;
  Millis retry_backoff{100};
  bool operator==(const FileChannelConfig&) const = default;
};

class FileChannel;

namespace filech {
// Where a record lives. seq is the event number of the record's first event.
struct Loc {
  uint64_t seg = 0;
  uint64_t off = 0;
  uint64_t seq = 0;
};
}  // namespace filech

class FileCursor final : public Cursor {
 public:
  Take take(size_t max_events, size_t max_bytes) override;
  uint64_t lag() const override;
  void setOnReady(std::function<void()> fn) override { on_ready_ = std::move(fn); }
  uint64_t lowWaterMark() const { return ledger_.lowWater(); }

 protected:
  void commitTake(uint64_t id) override;
  void rollbackTake(uint64_t id) override;

 private:
  friend class FileChannel;
  using Loc = filech::Loc;

  FileCursor(FileChannel* channel, std::string name, uint64_t start, Loc loc);

  FileChannel* channel_;
  std::string name_;
  CursorLedger<Loc> ledger_;  // each range's Loc is the record holding its begin
  uint64_t persisted_low_ = UINT64_MAX;
  bool dirty_ = false;
  bool wants_ready_ = false;
  bool ready_queued_ = false;
  bool journal_pending_ = false;  // a commit's journal record waits for the end of the turn
  std::function<void()> on_ready_;
};

class FileChannel final : public Channel {
 public:
  // Use makeFileChannel: it returns null when the directory cannot be opened or is locked.
  FileChannel(const FileChannelConfig& config, const BuildContext& context, FileOpsPtr ops);
  ~FileChannel() override;
  FileChannel(const FileChannel&) = delete;
  FileChannel& operator=(const FileChannel&) = delete;

  bool ok() const { return ok_; }
  const std::string& dir() const { return dir_; }

  bool hasRoom(size_t events, size_t bytes) const override;
  bool put(std::shared_ptr<const Batch> batch, PutOptions options = {}) override;
  std::map<std::string, std::string> positions() const override;
  bool keepsPositions() const override { return true; }
  uint64_t addSpaceListener(std::function<void()> fn) override;
  void removeSpaceListener(uint64_t handle) override;
  Cursor& cursor(const std::string& consumer) override;
  void dropCursor(const std::string& consumer) override;
  ChannelStats stats() const override;

  // Applies every option but `dir` in place (the writer picks them up before its next group);
  // false when the directory changes.
  bool reconfigure(const FileChannelConfig& config);
  const FileChannelConfig& config() const { return config_; }
  const MetricSetPtr& metrics() const { return metrics_; }
  // Queues the writes of every dirty cursor now (tests; stop does it too).
  void checkpoint();
  // Tests: the destructor then behaves like kill -9 as far as cursors go (no final checkpoint, and
  // the journal records still due at the end of the current loop turn are lost: those commits
  // may be delivered again after the restart).
  void simulateCrashForTest() { crashed_ = true; }
  // Tests: commits whose journal record waits for the end of the loop turn.
  bool journalDueForTest() const { return !journal_queue_.empty(); }
  // Number of segment files held.
  size_t segmentCount() const { return segments_.size(); }

 private:
  friend class FileCursor;
  using Loc = filech::Loc;

  struct Segment {
    std::string path;
    uint64_t size = 0;  // durable bytes (what cursors may read)
    int read_fd = -1;
  };
  struct Rec {
    std::shared_ptr<const Batch> batch;
    Loc loc;
    Loc next;
    filech::Positions positions;  // only when read from disk
  };
  struct CacheEntry {
    Rec rec;
    uint64_t bytes = 0;
  };
  struct TakeBuilder {
    size_t max_events = 1;
    size_t max_bytes = 0;
    size_t events = 0;
    size_t bytes = 0;
    bool full = false;
    std::vector<Slice> slices;
  };
  struct PersistedCursor {
    uint64_t low = 0;
    Loc loc;
    // From the commit journal: the exact state (next position and what below it is not
    // committed), so a restart hands out nothing that was committed.
    bool exact = false;
    uint64_t next = 0;
    Loc next_loc;
    std::vector<CursorLedger<Loc>::Range> uncommitted;
  };

  // Writer side.
  struct Job {
    enum class Kind { Append, WriteFile, Unlink } kind = Kind::Append;
    uint64_t id = 0;
    uint64_t seq = 0;
    std::shared_ptr<const Batch> batch;
    filech::Positions positions;
    uint64_t reserved = 0;
    std::string path, path2, content;
    bool overwrite = false;  // WriteFile: may be overwritten in place when a new file fails
  };
  struct Done {
    uint64_t id = 0;
    std::shared_ptr<const Batch> batch;
    filech::Positions positions;
    uint64_t seq = 0;
    uint64_t events = 0;
    uint64_t reserved = 0;
    Loc loc;
    uint64_t next_off = 0;
    std::string seg_path;
  };

  // Start-up.
  bool open();
  // Reads every record of a segment for its positions; for the last one also finds the tail
  // and cuts a torn tail off.
  void scanSegment(uint64_t key, bool last);
  void applyRecordPositions(const filech::Positions& p);
  bool readPersistedCursor(const std::string& file, PersistedCursor& out);
  bool readPositionsFile(uint64_t& seg);

  // Reading.
  enum class ReadResult { Ok, End, Retry };
  ReadResult readAt(Loc& loc, Rec& out);
  // Reads the record at loc from disk: 1 ok, 0 invalid record, -1 I/O error, -2 cannot open.
  // `events` false: the record is checked and its positions read, but no event is copied
  // (out.batch stays null); for the start-up scan, which needs only counts and positions.
  int readRecordFromDisk(Segment& seg, const Loc& loc, Rec& out, bool events = true);
  // Offset of the next valid record at or after `from` in seg; seg.size when none.
  uint64_t scanForward(Segment& seg, uint64_t from, uint64_t& seq);
  void reportCorrupt(uint64_t seg, uint64_t off, const char* why);
  // Events [begin, end) cannot be read (damage): counted once (EventsLostCount) and logged.
  void reportLost(uint64_t begin, uint64_t end, const std::string& where);
  void markDamaged(uint64_t seg, int error);
  int readFd(Segment& seg);
  void cacheInsert(const Rec& rec);
  uint64_t collect(uint64_t pos, uint64_t end, Loc& loc, TakeBuilder& tb);
  uint64_t eventBytesRange(const Batch& b, uint32_t begin, uint32_t end) const;

  // Freeing and persistence.
  void maybeFree();
  void cursorDirty(FileCursor* c);
  // Appends the cursor's exact state to the log (the commit journal, see above).
  void journal(const std::string& consumer, std::string state);
  // Journals the cursor's state once, at the next dispatch: the commits of one loop turn (a
  // sink answering many deliveries at once) share one journal record.
  void journalSoon(FileCursor* c);
  void flushJournals();
  bool journalUsable(const PersistedCursor& pc) const;
  static void setLowFromJournal(PersistedCursor& pc);
  // The start of the segment that holds event pos (collect skips the records before pos).
  Loc locate(uint64_t pos) const;
  void mergeJournal();
  void writeCursor(FileCursor* c);
  uint64_t heldLow() const;

  // Deferred callbacks.
  void queueReady(FileCursor* cursor);
  void schedule();
  static void onAsync(uv_async_t* handle);
  void dispatch();
  void updateRef();
  double fillPercentage() const;

  // Writer thread.
  void enqueue(Job job);
  void writerMain();
  void writeGroup(std::vector<Job>& group, size_t& index);
  bool ensureSegment(uint64_t seq, uint64_t record_bytes);
  bool writeAll(int fd, std::string_view data, uint64_t offset);
  void writeMeta(const Job& job);
  // While a data write fails: runs the metadata jobs queued behind it (from jobs[from] on and
  // those still in jobs_), in their order, and removes the ones done.
  void runMetaBehind(std::vector<Job>& jobs, size_t from);
  bool writeMetaOnce(const Job& job);
  // Waits delay_ms (doubling it, up to 5 s); false when the channel is stopping.
  bool backoff(uint64_t& delay_ms);
  void signalLoop();
  void refreshFree();
  void recordFsync(double ms);
  std::string positionsFileContent(uint64_t seg) const;

  std::string segPath(uint64_t key) const;

  FileChannelConfig config_;
  std::string name_;
  std::string dir_;
  FileOpsPtr ops_;
  MetricSetPtr metrics_;
  bool ok_ = false;
  bool crashed_ = false;
  int lock_fd_ = -1;
  Counter* put_attempt_;
  Counter* put_success_;
  Counter* put_refused_;
  Counter* take_attempt_;
  Counter* take_success_;
  Counter* rollback_;
  Counter* commit_;
  Counter* fsync_count_;
  Counter* corrupt_;
  Counter* damaged_;
  Counter* write_errors_;
  Counter* events_lost_;

  // Loop-thread state.
  std::map<uint64_t, Segment> segments_;
  uint64_t head_pos_ = 0;      // first event of the oldest segment
  uint64_t tail_pos_ = 0;      // next event number made visible (durable)
  uint64_t assign_pos_ = 0;    // next event number given to a put
  uint64_t disk_bytes_ = 0;    // sum of segment sizes
  uint64_t queued_bytes_ = 0;  // reserved by queued puts
  uint64_t inflight_ = 0;      // puts queued, not yet completed
  std::map<std::string, std::string> positions_;
  std::map<std::string, PersistedCursor> persisted_;  // cursor files not (yet) opened
  std::unordered_map<std::string, FileCursor*> cursors_;
  std::set<std::pair<uint64_t, uint64_t>> reported_;  // corrupt records already counted
  std::map<uint64_t, uint64_t> lost_;  // event ranges counted lost, begin -> end, disjoint
  std::map<std::pair<uint64_t, uint64_t>, CacheEntry> cache_;  // by (segment, offset)
  std::deque<std::pair<uint64_t, uint64_t>> cache_order_;
  uint64_t cache_bytes_ = 0;
  std::unordered_map<uint64_t, std::function<void()>> durable_;  // by put id
  uint64_t next_put_id_ = 1;
  std::vector<std::function<void()>> durable_queue_;

  struct Listener {
    uint64_t id;
    std::function<void()> fn;
    bool removed;
  };
  std::vector<Listener> listeners_;
  uint64_t next_listener_id_ = 1;
  mutable bool space_wanted_ = false;
  // The last put checked was refused for free space, with this much free (stats()).
  mutable bool space_refused_ = false;
  mutable uint64_t space_refused_free_ = 0;
  bool space_queued_ = false;
  std::vector<FileCursor*> ready_queue_;
  std::vector<FileCursor*> journal_queue_;  // cursors whose journal record is due
  std::vector<FileCursor*> firing_ready_;
  bool firing_listeners_ = false;
  bool dispatch_pending_ = false;
  bool* destroyed_ = nullptr;
  uv_async_t* async_ = nullptr;
  uv_timer_t* checkpoint_timer_ = nullptr;
  bool checkpoint_armed_ = false;
  bool referenced_ = false;

  // Shared with the writer (under mutex_).
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::vector<Done> done_;
  bool writer_signal_ = false;  // the writer has news (free space, errors) besides done_
  bool stopping_ = false;
  std::thread writer_;
  std::atomic<uint64_t> free_bytes_{UINT64_MAX};
  std::atomic<bool> write_failing_{false};  // the last data write failed (set by the writer)
  std::atomic<uint64_t> min_free_{0};
  std::atomic<uint64_t> fsync_max_us_{0};
  std::atomic<uint64_t> fsync_max_prev_us_{0};

  FileChannelConfig pending_config_;  // under mutex_: what the writer uses next

  // Writer-only state.
  FileChannelConfig wcfg_;
  int active_fd_ = -1;
  uint64_t active_seg_ = 0;
  uint64_t active_size_ = 0;
  bool have_active_ = false;
  bool unsynced_ = false;
  bool abandoned_ = false;  // stopping, a put was given up: no later put is written
  std::map<std::string, std::string> writer_positions_;
  std::chrono::steady_clock::time_point last_sync_{};
  std::chrono::steady_clock::time_point fsync_window_{};
};

// Builds a file channel; null (after logging why) when its directory cannot be used.
std::shared_ptr<FileChannel> makeFileChannel(const FileChannelConfig& config,
                                             const BuildContext& context, FileOpsPtr ops = nullptr);

void registerFileChannel(Registry& registry);

}  // namespace sluice

#pragma once
// The `tail` source: follows live files that grow and rotate, and turns each line (or each
// multi-line event) into an event, with no loss and no duplicate across rotation and crashes.
//
// Threads: everything runs on the loop thread. Files are read with pread(2) on regular files in
// bounded chunks (read_bytes, 256 KiB by default) and at most read_budget bytes per loop turn,
// so the loop is never held for long; glob(3) and stat(2) run on the loop at each scan. The
// state file is written on the libuv thread pool (uv_queue_work): write aside, fsync, rename,
// fsync the directory.
//
// File identity: device + inode + fingerprint. The fingerprint is a 64-bit FNV-1a hash of the
// first min(size, fingerprint_bytes) bytes, stored with the number of bytes it covers (fpl). A
// file shorter than fingerprint_bytes has a fingerprint of what it holds so far; it is extended
// as the file grows, until it covers fingerprint_bytes. Two files are the same when dev and ino
// match and the hash of the first fpl bytes matches, so a reused inode is a new file.
//
// Positions: one key per source, "tail/<source name>", whose value is a small JSON document that
// lists every tracked file (dev, ino, fingerprint, offset after the last line handed to the
// channels, last known path) and the recent truncations (see copytruncate). One key per source
// rather than per file because the channel contract can replace keys but never delete them, and
// because after a crash the source must find rotated files (which no longer match the globs)
// from their last known path. With a channel that keeps positions (the file channel) the value
// travels in the same durable put as the lines. Otherwise the source writes it to its state file
// (default <agent.data_dir>/tail/<source name>.json) after the channels accepted the batch.
//
// Rotation:
//   - rename + create: the open descriptor follows the renamed file; it is read to its end, and
//     the new file at the path is read from 0 once the old one is at its end. A file no longer
//     matched by the globs (renamed away or deleted) is closed once read to its end and idle for
//     rotate_wait.
//   - truncation (and copytruncate): a size below the read offset, or a changed fingerprint,
//     restarts the file at 0 (TruncationCount). The old fingerprint and offset are remembered
//     for rotate_wait: a new file whose first bytes carry that fingerprint (the copy that
//     copytruncate made, when the globs match it) is read from that offset, not from 0.
//   - deletion while open: the descriptor keeps the data readable; read to the end, then closed.
//
// Backpressure: a refused batch stays as it is and reading stops until resume(); memory is one
// batch plus, per open file, one read chunk and at most one partial line / multi-line event.

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/event.h"
#include "agent/options.h"
#include "agent/registry.h"
#include "agent/source.h"

namespace sluice {

struct TailConfig {
  std::vector<std::string> paths;
  std::string start_at = "beginning";
  std::string state_file;
  uint64_t fingerprint_bytes = 1024;
  uint64_t max_line_bytes = uint64_t{1} << 20;
  std::string on_long_line = "split";
  Millis partial_line_timeout{5000};
  Regex multiline_start;
  Regex multiline_continuation;
  uint64_t multiline_max_lines = 500;
  uint64_t multiline_max_bytes = uint64_t{1} << 20;
  Millis multiline_flush_timeout{1000};
  uint64_t max_open_files = 256;
  Millis poll_interval{1000};
  Millis rotate_wait{5000};
  uint64_t batch_size = 1000;
  uint64_t read_bytes = 256 * 1024;
  std::string path_header;
  bool watch = true;
  bool operator==(const TailConfig&) const = default;
};

const OptionTable<TailConfig>& tailOptionTable();

class TailSource final : public Source {
 public:
  // state_file: the resolved path of the state file (empty: none).
  TailSource(TailConfig config, std::string state_file);
  ~TailSource() override;
  TailSource(const TailSource&) = delete;
  TailSource& operator=(const TailSource&) = delete;

  void start(SourceContext& ctx) override;
  void resume() override;
  void stop(std::function<void()> done) override;

  // For tests and status.
  size_t openFiles() const;
  size_t trackedFiles() const;
  // Whether a file at `path` (its current identity) is open.
  bool isOpen(const std::string& path) const;
  // Everything readable has been read and handed over: every file the globs match is open, no
  // batch is held, every open file is at its end with no complete line buffered. Partial lines
  // and multi-line events may still be held. Expands the globs: for tests and status only.
  bool caughtUp();
  // The positions value the source would put now (the JSON document).
  std::string positionsValue() const;
  // "tail/<source name>", once started.
  std::string positionsKey() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Registers the `tail` type.
void registerTailSource(Registry& registry);

}  // namespace sluice

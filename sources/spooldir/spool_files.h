#pragma once
// File helpers of the spooldir source: the position value that travels with each put, the
// directory scan, renames that never overwrite, and the state file for channels that keep no
// positions. Plain POSIX calls; all run on the loop thread except writeStateFile (thread pool).

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/options.h"

namespace sluice::spool {

// What identifies a spooled file: device + inode, plus size and mtime (a larger size means it
// grew and is read on; a smaller one, or the same size with another mtime, that it was changed).
struct FileId {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  bool sameInode(const FileId& o) const { return dev == o.dev && ino == o.ino; }
  bool operator==(const FileId&) const = default;
};

FileId fileIdOf(const struct stat& st);
// The inode's change time (any write, chmod, rename or utimes sets it to the current time).
int64_t ctimeNs(const struct stat& st);
// CLOCK_REALTIME in nanoseconds: the clock file times are set from.
int64_t wallNowNs();

// Whether another process has the file open for writing, asked with a read-lease probe
// (fcntl F_SETLEASE F_RDLCK, released at once): the kernel refuses the lease while any writer
// has the file open. Unknown when leases are not allowed here: the agent neither owns the file
// nor has CAP_LEASE, leases are disabled (fs.leases-enable), or the file system has none (NFS).
// `fd` must be open read-only.
enum class Writers { None, Some, Unknown };
Writers probeWriters(int fd);

// The position of the file being read:
// "v2 <dev> <ino> <size> <mtime_ns> <offset> <fp_len> <fp_hash> <path>" (v1, read only, has no
// fp_len and fp_hash). `offset` is the byte after the last line the put covers; offset == size
// means every line of the file is in the channel and the file only has to be completed.
// The fingerprint is a hash of the file's first fp_len = min(offset, kFingerprintBytes) bytes:
// at a restart it tells the file read from another one that got the same inode (a deleted file's
// inode reused) and the same file under another device number (a remount). fp_len 0: none (a v1
// value, or nothing read yet), the inode alone decides.
constexpr uint64_t kFingerprintBytes = 4096;
struct Position {
  std::string path;
  FileId id;
  uint64_t offset = 0;
  uint64_t fp_len = 0;
  uint64_t fp_hash = 0;
  bool operator==(const Position&) const = default;
};
std::string encodePosition(const Position& p);
// FNV-1a 64 of the first `len` bytes of `fd` (pread); nullopt when they cannot all be read.
std::optional<uint64_t> fingerprint(int fd, uint64_t len);
std::optional<Position> decodePosition(const std::string& text);

struct ScanOptions {
  std::string completed_suffix;
  std::string failed_suffix;
  Regex include_pattern;  // full match on the basename; empty: every name
  Regex ignore_pattern;   // full match on the basename; empty: none
  bool recursive = false;
  std::string order;  // oldest | youngest | random
};

struct Candidate {
  std::string path;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
};

// Regular files under `dir` that may be spooled, in consume order. Skips hidden names (a
// leading '.'), names ending in either suffix, and names the patterns exclude. Errors on
// subdirectories are logged and skipped; `error` is set when `dir` itself cannot be read.
std::vector<Candidate> scanDirectory(const std::string& dir, const ScanOptions& options,
                                     uint32_t random_seed, std::string& error);

// Renames `from` to `base + suffix`, or when that name exists to `base.1 + suffix`,
// `base.2 + suffix`... never replacing a file (renameat2 RENAME_NOREPLACE). Returns the name
// used, or nullopt with errno-style `error` text.
std::optional<std::string> renameUnique(const std::string& from, const std::string& base,
                                        const std::string& suffix, std::string& error);

// Moves the file `id` (device + inode) that was found at `from` to a unique `base + suffix`
// (as renameUnique), but only while `from` still names that file: checked before the rename, and
// after it a file that was renamed over `from` in between is put back.
struct Renamed {
  enum class Result {
    Moved,     // `to` is the new name
    Replaced,  // `from` names another file: ours is not moved (or, raced, no longer there)
    Gone,      // nothing at `from` (moved or deleted by someone else)
    Failed,    // `error` says why
  };
  Result result = Result::Failed;
  std::string to;
  std::string error;
  // Replaced in the race: the other file could not be put back and sits at `to` (`error`).
  bool put_back_failed = false;
};
Renamed renameIfSame(const std::string& from, const FileId& id, const std::string& base,
                     const std::string& suffix);

// The state file (for channels that keep no positions): `content` is written to path + ".tmp",
// fsynced, renamed over `path`, and the directory fsynced. Creates the directory. Blocking.
bool writeStateFile(const std::string& path, const std::string& content, std::string& error);
std::optional<std::string> readStateFile(const std::string& path);

}  // namespace sluice::spool

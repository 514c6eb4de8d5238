#pragma once
// The file channel's seam to the filesystem. Every call the channel makes to the disk goes
// through a FileOps, so tests can count calls (to prove start-up does not read old segments) and
// inject faults (a failed write, a short write, ENOSPC, a failed fdatasync at the Nth call).
//
// Conventions: calls return what the POSIX call returns on success and -errno on failure (never
// set errno, never throw). Implementations must be thread-safe: the channel calls them from the
// loop thread (reads, directory listing) and from its writer thread (writes, syncs, renames).

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sluice {

class FileOps {
 public:
  virtual ~FileOps() = default;
  // open(2); returns an fd or -errno.
  virtual int open(const std::string& path, int flags, int mode) = 0;
  virtual int close(int fd) = 0;
  // pwrite(2)/pread(2); may be short, as the real calls may be.
  virtual ssize_t pwrite(int fd, const void* data, size_t size, off_t offset) = 0;
  virtual ssize_t pread(int fd, void* data, size_t size, off_t offset) = 0;
  virtual int fdatasync(int fd) = 0;
  virtual int fsync(int fd) = 0;
  virtual int ftruncate(int fd, off_t size) = 0;
  virtual int rename(const std::string& from, const std::string& to) = 0;
  virtual int unlink(const std::string& path) = 0;
  // Opens the directory, fsyncs it, closes it: makes creations, renames and unlinks durable.
  virtual int fsyncDir(const std::string& dir) = 0;
  // Free bytes for an unprivileged user on the volume holding path.
  virtual int statvfs(const std::string& path, uint64_t& free_bytes) = 0;
  // Size of an open file.
  virtual int fileSize(int fd, uint64_t& size) = 0;
  // Names (not paths) of the entries of dir, without . and ..
  virtual int listDir(const std::string& dir, std::vector<std::string>& names) = 0;
  // flock(LOCK_EX | LOCK_NB).
  virtual int lockExclusive(int fd) = 0;
};

using FileOpsPtr = std::shared_ptr<FileOps>;

// The real thing.
class PosixFileOps : public FileOps {
 public:
  int open(const std::string& path, int flags, int mode) override;
  int close(int fd) override;
  ssize_t pwrite(int fd, const void* data, size_t size, off_t offset) override;
  ssize_t pread(int fd, void* data, size_t size, off_t offset) override;
  int fdatasync(int fd) override;
  int fsync(int fd) override;
  int ftruncate(int fd, off_t size) override;
  int rename(const std::string& from, const std::string& to) override;
  int unlink(const std::string& path) override;
  int fsyncDir(const std::string& dir) override;
  int statvfs(const std::string& path, uint64_t& free_bytes) override;
  int fileSize(int fd, uint64_t& size) override;
  int listDir(const std::string& dir, std::vector<std::string>& names) override;
  int lockExclusive(int fd) override;
};

// For tests: forwards to PosixFileOps, counts calls by kind and injects faults.
//   ops->failAt(FaultyFileOps::Op::Pwrite, 3, -ENOSPC);  // the 3rd pwrite from now fails
//   ops->failAlways(FaultyFileOps::Op::Fdatasync, -EIO); // until clear()
//   ops->shortWriteAt(2);                                // the 2nd pwrite writes half
//   ops->failAlwaysOn(FaultyFileOps::Op::Pwrite, "seg-", -ENOSPC);  // only files named seg-*
// A fake free-space figure may replace statvfs's.
class FaultyFileOps : public PosixFileOps {
 public:
  enum class Op {
    Open,
    Pwrite,
    Pread,
    Fdatasync,
    Fsync,
    Ftruncate,
    Rename,
    Unlink,
    FsyncDir,
    Statvfs,
    Count
  };

  void failAt(Op op, uint64_t nth, int error);
  void failAlways(Op op, int error);
  // Like failAlways, for calls on files (by fd or path) whose name starts with name_prefix.
  void failAlwaysOn(Op op, std::string name_prefix, int error);
  void shortWriteAt(uint64_t nth);
  void clear();
  void setFreeBytes(int64_t free_bytes) { fake_free_.store(free_bytes); }  // -1: real figure
  uint64_t calls(Op op) const { return counts_[static_cast<int>(op)].load(); }
  // Bytes read with pread, by file name (not path).
  uint64_t bytesRead(const std::string& name) const;
  uint64_t faultsInjected() const { return injected_.load(); }

  int open(const std::string& path, int flags, int mode) override;
  int close(int fd) override;
  ssize_t pwrite(int fd, const void* data, size_t size, off_t offset) override;
  ssize_t pread(int fd, void* data, size_t size, off_t offset) override;
  int fdatasync(int fd) override;
  int fsync(int fd) override;
  int ftruncate(int fd, off_t size) override;
  int rename(const std::string& from, const std::string& to) override;
  int unlink(const std::string& path) override;
  int fsyncDir(const std::string& dir) override;
  int statvfs(const std::string& path, uint64_t& free_bytes) override;

 private:
  // Counts the call; returns the error to inject, or 0. name: the file's name, when known.
  int check(Op op, const std::string* name = nullptr);
  std::string nameOf(int fd) const;

  std::atomic<uint64_t> counts_[static_cast<int>(Op::Count)] = {};
  std::atomic<uint64_t> injected_{0};
  std::atomic<int64_t> fake_free_{-1};
  mutable std::mutex mutex_;
  struct Fault {
    Op op;
    uint64_t at;         // absolute call number; 0: always
    int error;           // 0: short write
    std::string prefix;  // only files whose name starts with it (empty: any)
  };
  std::vector<Fault> faults_;
  std::map<int, std::string> names_;  // fd -> file name
  std::map<std::string, uint64_t> read_;
};

}  // namespace sluice

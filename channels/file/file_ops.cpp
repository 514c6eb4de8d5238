#include "channels/file/file_ops.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sluice {

namespace {
int result(int rc) { return rc < 0 ? -errno : rc; }
ssize_t result(ssize_t rc) { return rc < 0 ? -errno : rc; }
}  // namespace

int PosixFileOps::open(const std::string& path, int flags, int mode) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  return result(fd);
}

int PosixFileOps::close(int fd) { return result(::close(fd)); }

ssize_t PosixFileOps::pwrite(int fd, const void* data, size_t size, off_t offset) {
  ssize_t n;
  do {
    n = ::pwrite(fd, data, size, offset);
  } while (n < 0 && errno == EINTR);
  return result(n);
}

ssize_t PosixFileOps::pread(int fd, void* data, size_t size, off_t offset) {
  ssize_t n;
  do {
    n = ::pread(fd, data, size, offset);
  } while (n < 0 && errno == EINTR);
  return result(n);
}

int PosixFileOps::fdatasync(int fd) { return result(::fdatasync(fd)); }
int PosixFileOps::fsync(int fd) { return result(::fsync(fd)); }
int PosixFileOps::ftruncate(int fd, off_t size) { return result(::ftruncate(fd, size)); }

int PosixFileOps::rename(const std::string& from, const std::string& to) {
  return result(::rename(from.c_str(), to.c_str()));
}

int PosixFileOps::unlink(const std::string& path) { return result(::unlink(path.c_str())); }

int PosixFileOps::fsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int rc = ::fsync(fd) < 0 ? -errno : 0;
  ::close(fd);
  return rc;
}

int PosixFileOps::statvfs(const std::string& path, uint64_t& free_bytes) {
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) < 0) return -errno;
  free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  return 0;
}

int PosixFileOps::fileSize(int fd, uint64_t& size) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) return -errno;
  size = static_cast<uint64_t>(st.st_size);
  return 0;
}

int PosixFileOps::listDir(const std::string& dir, std::vector<std::string>& names) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return -errno;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    names.emplace_back(e->d_name);
  }
  ::closedir(d);
  return 0;
}

int PosixFileOps::lockExclusive(int fd) { return result(::flock(fd, LOCK_EX | LOCK_NB)); }

// ---------------------------------------------------------------------------------------------

void FaultyFileOps::failAt(Op op, uint64_t nth, int error) {
  std::lock_guard lock(mutex_);
  faults_.push_back({op, calls(op) + nth, error, {}});
}

void FaultyFileOps::failAlways(Op op, int error) {
  std::lock_guard lock(mutex_);
  faults_.push_back({op, 0, error, {}});
}

void FaultyFileOps::failAlwaysOn(Op op, std::string name_prefix, int error) {
  std::lock_guard lock(mutex_);
  faults_.push_back({op, 0, error, std::move(name_prefix)});
}

void FaultyFileOps::shortWriteAt(uint64_t nth) {
  std::lock_guard lock(mutex_);
  faults_.push_back({Op::Pwrite, calls(Op::Pwrite) + nth, 0, {}});
}

void FaultyFileOps::clear() {
  std::lock_guard lock(mutex_);
  faults_.clear();
}

uint64_t FaultyFileOps::bytesRead(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = read_.find(name);
  return it == read_.end() ? 0 : it->second;
}

std::string FaultyFileOps::nameOf(int fd) const {
  std::lock_guard lock(mutex_);
  auto it = names_.find(fd);
  return it == names_.end() ? std::string() : it->second;
}

int FaultyFileOps::check(Op op, const std::string* name) {
  uint64_t n = ++counts_[static_cast<int>(op)];
  std::lock_guard lock(mutex_);
  for (const auto& f : faults_) {
    if (!f.prefix.empty() && (!name || name->rfind(f.prefix, 0) != 0)) continue;
    if (f.op == op && (f.at == 0 || f.at == n)) {
      ++injected_;
      return f.error == 0 ? 1 : f.error;  // 1: a short write
    }
  }
  return 0;
}

int FaultyFileOps::open(const std::string& path, int flags, int mode) {
  if (int e = check(Op::Open); e < 0) return e;
  int fd = PosixFileOps::open(path, flags, mode);
  if (fd >= 0) {
    std::lock_guard lock(mutex_);
    names_[fd] = path.substr(path.find_last_of('/') + 1);
  }
  return fd;
}

int FaultyFileOps::close(int fd) {
  {
    std::lock_guard lock(mutex_);
    names_.erase(fd);
  }
  return PosixFileOps::close(fd);
}

ssize_t FaultyFileOps::pwrite(int fd, const void* data, size_t size, off_t offset) {
  std::string name = nameOf(fd);
  int e = check(Op::Pwrite, &name);
  if (e < 0) return e;
  if (e == 1 && size > 1) size /= 2;
  return PosixFileOps::pwrite(fd, data, size, offset);
}

ssize_t FaultyFileOps::pread(int fd, void* data, size_t size, off_t offset) {
  if (int e = check(Op::Pread); e < 0) return e;
  ssize_t n = PosixFileOps::pread(fd, data, size, offset);
  if (n > 0) {
    std::lock_guard lock(mutex_);
    read_[names_[fd]] += static_cast<uint64_t>(n);
  }
  return n;
}

int FaultyFileOps::fdatasync(int fd) {
  std::string name = nameOf(fd);
  if (int e = check(Op::Fdatasync, &name); e < 0) return e;
  return PosixFileOps::fdatasync(fd);
}

int FaultyFileOps::fsync(int fd) {
  if (int e = check(Op::Fsync); e < 0) return e;
  return PosixFileOps::fsync(fd);
}

int FaultyFileOps::ftruncate(int fd, off_t size) {
  if (int e = check(Op::Ftruncate); e < 0) return e;
  return PosixFileOps::ftruncate(fd, size);
}

int FaultyFileOps::rename(const std::string& from, const std::string& to) {
  if (int e = check(Op::Rename); e < 0) return e;
  return PosixFileOps::rename(from, to);
}

int FaultyFileOps::unlink(const std::string& path) {
  if (int e = check(Op::Unlink); e < 0) return e;
  return PosixFileOps::unlink(path);
}

int FaultyFileOps::fsyncDir(const std::string& dir) {
  if (int e = check(Op::FsyncDir); e < 0) return e;
  return PosixFileOps::fsyncDir(dir);
}

int FaultyFileOps::statvfs(const std::string& path, uint64_t& free_bytes) {
  if (int e = check(Op::Statvfs); e < 0) return e;
  int64_t fake = fake_free_.load();
  if (fake >= 0) {
    free_bytes = static_cast<uint64_t>(fake);
    return 0;
  }
  return PosixFileOps::statvfs(path, free_bytes);
}

}  // namespace sluice

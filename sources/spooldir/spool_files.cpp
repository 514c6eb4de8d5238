#include "sources/spooldir/spool_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <re2/re2.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <random>

namespace sluice::spool {

FileId fileIdOf(const struct stat& st) {
  FileId id;
  id.dev = static_cast<uint64_t>(st.st_dev);
  id.ino = static_cast<uint64_t>(st.st_ino);
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return id;
}

int64_t ctimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
}

int64_t wallNowNs() {
  struct timespec ts {};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

Writers probeWriters(int fd) {
  // The lease is taken on a descriptor of its own (a new open file description of the same
  // file), so that a lease that cannot be released goes away with it instead of staying on the
  // descriptor being read. O_NONBLOCK: a write lease held by another process fails the open.
  std::string self = "/proc/self/fd/" + std::to_string(fd);
  int own = ::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (own < 0) return Writers::Unknown;
  // A writer opening the file while the lease is held is held up until it is released (a few
  // microseconds later) and the kernel signals the lease holder: SIGURG, whose default action
  // is to ignore it, instead of SIGIO, which would end the process.
  Writers result = Writers::Unknown;
  if (::fcntl(own, F_SETSIG, SIGURG) == 0) {
    if (::fcntl(own, F_SETLEASE, F_RDLCK) == 0) {
      // Not released: closing the descriptor below releases it; no answer is trusted then.
      result = ::fcntl(own, F_SETLEASE, F_UNLCK) == 0 ? Writers::None : Writers::Unknown;
    } else if (errno == EAGAIN) {
      result = Writers::Some;
    }
  }
  ::close(own);
  return result;
}

std::string encodePosition(const Position& p) {
  return "v2 " + std::to_string(p.id.dev) + " " + std::to_string(p.id.ino) + " " +
         std::to_string(p.id.size) + " " + std::to_string(p.id.mtime_ns) + " " +
         std::to_string(p.offset) + " " + std::to_string(p.fp_len) + " " +
         std::to_string(p.fp_hash) + " " + p.path;
}

std::optional<Position> decodePosition(const std::string& text) {
  bool v2 = text.rfind("v2 ", 0) == 0;
  if (!v2 && text.rfind("v1 ", 0) != 0) return std::nullopt;
  const char* p = text.data() + 3;
  const char* end = text.data() + text.size();
  auto number = [&](auto& out) {
    auto [next, ec] = std::from_chars(p, end, out);
    if (ec != std::errc() || next == end || *next != ' ') return false;
    p = next + 1;
    return true;
  };
  Position pos;
  if (!number(pos.id.dev) || !number(pos.id.ino) || !number(pos.id.size) ||
      !number(pos.id.mtime_ns) || !number(pos.offset)) {
    return std::nullopt;
  }
  if (v2 && (!number(pos.fp_len) || !number(pos.fp_hash))) return std::nullopt;
  pos.path.assign(p, end);
  if (pos.path.empty() || pos.offset > pos.id.size) return std::nullopt;
  if (pos.fp_len > pos.offset || pos.fp_len > kFingerprintBytes) return std::nullopt;
  return pos;
}

std::optional<uint64_t> fingerprint(int fd, uint64_t len) {
  char buf[kFingerprintBytes];
  if (len > sizeof buf) return std::nullopt;
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, buf + got, static_cast<size_t>(len) - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    got += static_cast<size_t>(n);
  }
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < got; ++i) {
    h ^= static_cast<unsigned char>(buf[i]);
    h *= 1099511628211ull;
  }
  return h;
}

namespace {

bool endsWith(const std::string& s, const std::string& suffix) {
  return !suffix.empty() && s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void scanInto(const std::string& dir, const ScanOptions& o, std::vector<Candidate>& out,
              std::string& error, int depth) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    std::string msg = "cannot read directory " + dir + ": " + std::strerror(errno);
    if (depth == 0) {
      error = msg;
    } else {
      spdlog::warn("spooldir: {}", msg);
    }
    return;
  }
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;  // hidden, ".", ".."
    std::string path = dir + "/" + name;
    struct stat st {};
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone
    if (S_ISDIR(st.st_mode)) {
      if (o.recursive && depth < 64) scanInto(path, o, out, error, depth + 1);
      continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    if (endsWith(name, o.completed_suffix) || endsWith(name, o.failed_suffix)) continue;
    if (o.include_pattern.re && !RE2::FullMatch(name, *o.include_pattern.re)) continue;
    if (o.ignore_pattern.re && RE2::FullMatch(name, *o.ignore_pattern.re)) continue;
    out.push_back({std::move(path), fileIdOf(st).mtime_ns, ctimeNs(st)});
  }
  closedir(d);
}

}  // namespace

std::vector<Candidate> scanDirectory(const std::string& dir, const ScanOptions& options,
                                     uint32_t random_seed, std::string& error) {
  std::vector<Candidate> out;
  scanInto(dir, options, out, error, 0);
  if (options.order == "random") {
    std::sort(out.begin(), out.end(),
              [](const Candidate& a, const Candidate& b) { return a.path < b.path; });
    std::mt19937 rng(random_seed);
    std::shuffle(out.begin(), out.end(), rng);
  } else {
    bool youngest = options.order == "youngest";
    std::sort(out.begin(), out.end(), [youngest](const Candidate& a, const Candidate& b) {
      if (a.mtime_ns != b.mtime_ns)
        return youngest ? a.mtime_ns > b.mtime_ns : a.mtime_ns < b.mtime_ns;
      return a.path < b.path;
    });
  }
  return out;
}

std::optional<std::string> renameUnique(const std::string& from, const std::string& base,
                                        const std::string& suffix, std::string& error) {
  for (int n = 0; n < 10000; ++n) {
    std::string to = n == 0 ? base + suffix : base + "." + std::to_string(n) + suffix;
    if (renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return to;
    if (errno == EEXIST) continue;
    if (errno == EINVAL || errno == ENOSYS) {
      // A file system without RENAME_NOREPLACE: check, then rename (racy only against people
      // creating completed names by hand).
      struct stat st {};
      if (lstat(to.c_str(), &st) == 0) continue;
      if (rename(from.c_str(), to.c_str()) == 0) return to;
    }
    error = std::strerror(errno);
    return std::nullopt;
  }
  error = "no free name";
  return std::nullopt;
}

Renamed renameIfSame(const std::string& from, const FileId& id, const std::string& base,
                     const std::string& suffix) {
  Renamed r;
  struct stat st {};
  if (::lstat(from.c_str(), &st) != 0) {
    r.result = errno == ENOENT ? Renamed::Result::Gone : Renamed::Result::Failed;
    r.error = std::string("cannot stat: ") + std::strerror(errno);
    return r;
  }
  if (!fileIdOf(st).sameInode(id)) {
    r.result = Renamed::Result::Replaced;
    return r;
  }
  auto to = renameUnique(from, base, suffix, r.error);
  if (!to) {
    r.result = errno == ENOENT ? Renamed::Result::Gone : Renamed::Result::Failed;
    return r;
  }
  r.to = *to;
  if (::lstat(to->c_str(), &st) == 0 && !fileIdOf(st).sameInode(id)) {
    // Another file was renamed over `from` between the check and the rename: it is not ours to
    // move. Put it back (never over a newer one); ours is then gone from the directory.
    r.result = Renamed::Result::Replaced;
    if (renameat2(AT_FDCWD, to->c_str(), AT_FDCWD, from.c_str(), RENAME_NOREPLACE) != 0) {
      r.put_back_failed = true;
      r.error = std::string("cannot put it back: ") + std::strerror(errno);
    }
    return r;
  }
  r.result = Renamed::Result::Moved;
  return r;
}

bool writeStateFile(const std::string& path, const std::string& content, std::string& error) {
  auto fail = [&](const std::string& what) {
    error = what + ": " + std::strerror(errno);
    return false;
  };
  std::string dir = path.substr(0, path.rfind('/'));
  // mkdir -p
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      std::string part = dir.substr(0, i);
      if (mkdir(part.c_str(), 0750) != 0 && errno != EEXIST) return fail("mkdir " + part);
    }
  }
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return fail("open " + tmp);
  const char* p = content.data();
  size_t left = content.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return fail("write " + tmp);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    return fail("fsync " + tmp);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename " + tmp);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

std::optional<std::string> readStateFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace sluice::spool

#include "sources/spooldir/spooldir_source.h"
#include "../log_capture.h"
#include "agent/config.h"
#include "source_fixture.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <rapidcheck.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace sluice {
namespace {

namespace fs = std::filesystem;
using test::FakeSourceContext;
using test::stopAndWait;
using test::TestLoop;
using Lines = std::vector<std::string>;

class SpoolTempDir {
 public:
  SpoolTempDir() {
    std::string tmpl = (fs::temp_directory_path() / "spooldir-test-XXXXXX").string();
    char* p = mkdtemp(tmpl.data());
    REQUIRE(p != nullptr);
    path_ = p;
  }
  ~SpoolTempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void writeFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Places a file atomically, as a spooler should: written beside the directory, renamed in.
void drop(const SpoolTempDir& staging, const std::string& dir, const std::string& name,
          const std::string& content) {
  std::string tmp = staging.file(".staging-" + name);
  writeFile(tmp, content);
  fs::rename(tmp, dir + "/" + name);
}

SpooldirConfig spoolConfig(const std::string& dir) {
  SpooldirConfig c;
  c.path = dir;
  c.poll_interval = Millis(20);
  c.min_age = Millis(0);  // the tests that need it set it
  return c;
}

bool exists(const std::string& p) { return fs::exists(fs::symlink_status(p)); }

// A started source with its loop and context; stops it at the end of the scope.
struct Rig {
  explicit Rig(SpooldirConfig c, std::string state = "")
      : ctx(loop.get(), "spool_test"),
        src(std::make_unique<SpooldirSource>(std::move(c),
                                             state.empty() ? staging.file("state") : state)) {
    ctx.source = src.get();
  }
  ~Rig() {
    if (started) stopAndWait(loop, *src);
  }
  void start() {
    src->start(ctx);
    started = true;
  }
  bool waitCompleted(uint64_t n) {
    return loop.runUntil([&] { return ctx.count("FilesCompletedCount") >= n && src->idle(); });
  }
  SpoolTempDir staging;
  TestLoop loop;
  FakeSourceContext ctx;
  std::unique_ptr<SpooldirSource> src;
  bool started = false;
};

TEST_CASE("spooldir: lines of files in mtime order; CRLF, last line, empty file; completed") {
  SpoolTempDir dir;
  writeFile(dir.file("a.log"), "a1\r\na2\n\na4");  // CRLF, an empty line, no final newline
  writeFile(dir.file("b.log"), "");
  writeFile(dir.file("c.log"), "c1\nc2\n");
  // mtimes: c oldest, then a, then b.
  auto now = fs::file_time_type::clock::now();
  fs::last_write_time(dir.file("c.log"), now - std::chrono::seconds(30));
  fs::last_write_time(dir.file("a.log"), now - std::chrono::seconds(20));
  fs::last_write_time(dir.file("b.log"), now - std::chrono::seconds(10));
  Rig rig(spoolConfig(dir.path()));
  rig.start();
  REQUIRE(rig.waitCompleted(3));
  CHECK(rig.ctx.bodies == Lines{"c1", "c2", "a1", "a2", "", "a4"});
  for (const char* n : {"a.log", "b.log", "c.log"}) {
    CHECK(!exists(dir.file(n)));
    CHECK(exists(dir.file(std::string(n) + ".COMPLETED")));
  }
  CHECK(rig.ctx.count("LineCount") == 6);
  CHECK(rig.ctx.count("ByteCount") == 10 + 0 + 6);
  CHECK(rig.ctx.count("FilesFailedCount") == 0);
}

TEST_CASE("spooldir: a file dropped while running is picked up; youngest order; delete") {
  SpoolTempDir dir;
  auto c = spoolConfig(dir.path());
  c.delete_policy = "immediate";
  c.consume_order = "youngest";
  writeFile(dir.file("old"), "old\n");
  writeFile(dir.file("new"), "new\n");
  fs::last_write_time(dir.file("old"), fs::file_time_type::clock::now() - std::chrono::hours(1));
  Rig rig(c);
  rig.start();
  REQUIRE(rig.waitCompleted(2));
  CHECK(rig.ctx.bodies == Lines{"new", "old"});
  drop(rig.staging, dir.path(), "later", "x\ny\n");
  REQUIRE(rig.waitCompleted(3));
  CHECK(rig.ctx.bodies == Lines{"new", "old", "x", "y"});
  CHECK(fs::is_empty(dir.path()));  // deleted, not renamed
}

TEST_CASE("spooldir: resumes mid-file from the durable position, nothing twice") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "l1\nl2\nl3\nl4\n");
  struct stat st {};
  REQUIRE(::stat(dir.file("f").c_str(), &st) == 0);
  Rig rig(spoolConfig(dir.path()));
  spool::Position p{dir.file("f"), spool::fileIdOf(st), 6};  // after "l2\n"
  rig.ctx.setDurablePosition("spooldir/spool_test", spool::encodePosition(p));
  rig.start();
  REQUIRE(rig.waitCompleted(1));
  CHECK(rig.ctx.bodies == Lines{"l3", "l4"});
}

TEST_CASE("spooldir: a crash between the last put and the rename only completes the file") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "l1\nl2\n");
  struct stat st {};
  REQUIRE(::stat(dir.file("f").c_str(), &st) == 0);
  Rig rig(spoolConfig(dir.path()));
  spool::Position p{dir.file("f"), spool::fileIdOf(st), 6};
  rig.ctx.setDurablePosition("spooldir/spool_test", spool::encodePosition(p));
  rig.start();
  REQUIRE(rig.waitCompleted(1));
  CHECK(rig.ctx.bodies.empty());
  CHECK(exists(dir.file("f.COMPLETED")));
}

TEST_CASE("spooldir: at restart a grown file resumes; a shrunk one fails; others go on") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "l1\nl2\n");
  struct stat st {};
  REQUIRE(::stat(dir.file("f").c_str(), &st) == 0);
  spool::Position p{dir.file("f"), spool::fileIdOf(st), 3};
  writeFile(dir.file("g"), "g1\n");
  Rig rig(spoolConfig(dir.path()));
  rig.ctx.setDurablePosition("spooldir/spool_test", spool::encodePosition(p));
  SUBCASE("grown: the rest is read, counted") {
    std::ofstream(dir.file("f"), std::ios::app) << "l3 appended later\n";  // same inode
    rig.start();
    REQUIRE(rig.waitCompleted(2));
    CHECK(rig.ctx.bodies == Lines{"l2", "l3 appended later", "g1"});
    CHECK(rig.ctx.count("FilesGrownCount") == 1);
    CHECK(rig.ctx.count("FilesFailedCount") == 0);
  }
  SUBCASE("shrunk: failed") {
    ::truncate(dir.file("f").c_str(), 4);
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{"g1"});
    CHECK(exists(dir.file("f.FAILED")));
    CHECK(rig.ctx.count("FilesFailedCount") == 1);
  }
}

// The fingerprint of `content`'s first `len` bytes, as a position carries it.
uint64_t fingerprintOf(const SpoolTempDir& scratch, const std::string& content, uint64_t len) {
  std::string tmp = scratch.file(".fingerprint");
  writeFile(tmp, content);
  int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  auto h = spool::fingerprint(fd, len);
  ::close(fd);
  REQUIRE(h);
  return *h;
}

TEST_CASE("spooldir: at restart the fingerprint tells a reused inode and a remounted file") {
  SpoolTempDir dir;
  Rig rig(spoolConfig(dir.path()));
  SUBCASE("a new, larger file got the inode of a finished one: read from its start") {
    // Given a finished file "a\nb\n" whose inode now holds a new file under the same name,
    writeFile(dir.file("f"), "n1\nn2\nn3\n");
    struct stat st {};
    REQUIRE(::stat(dir.file("f").c_str(), &st) == 0);
    spool::Position p{dir.file("f"), spool::fileIdOf(st), 4};
    p.id.size = 4;
    p.fp_len = 4;
    p.fp_hash = fingerprintOf(rig.staging, "a\nb\n", 4);
    rig.ctx.setDurablePosition("spooldir/spool_test", spool::encodePosition(p));
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    // then nothing of the new file is skipped, and it is no growth.
    CHECK(rig.ctx.bodies == Lines{"n1", "n2", "n3"});
    CHECK(rig.ctx.count("FilesGrownCount") == 0);
  }
  SUBCASE("the half-read file under another device number (a remount): resumed") {
    writeFile(dir.file("f"), "l1\nl2\n");
    struct stat st {};
    REQUIRE(::stat(dir.file("f").c_str(), &st) == 0);
    spool::Position p{dir.file("f"), spool::fileIdOf(st), 3};
    p.id.dev += 1;
    p.fp_len = 3;
    p.fp_hash = fingerprintOf(rig.staging, "l1\n", 3);
    rig.ctx.setDurablePosition("spooldir/spool_test", spool::encodePosition(p));
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{"l2"});
    CHECK(rig.ctx.count("FilesReplacedCount") == 0);
  }
  SUBCASE("the offered positions carry the fingerprint of what was read") {
    rig.ctx.auto_durable = true;
    writeFile(dir.file("f"), "l1\nl2\n");
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    auto v = rig.ctx.durablePositions("spooldir/spool_test");
    REQUIRE(v.size() == 1);
    auto p = spool::decodePosition(v[0]);
    REQUIRE(p);
    CHECK(p->fp_len == 6);
    CHECK(p->fp_hash == fingerprintOf(rig.staging, "l1\nl2\n", 6));
  }
}

// Waits (outside any loop) until the file's ctime is more than `age` in the past.
void waitCtimeOlderThan(const std::string& path, Millis age) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  while (spool::wallNowNs() - spool::ctimeNs(st) <= age.count() * 1000000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

TEST_CASE("spooldir: at restart the half-read file goes first, however recently it changed") {
  // Given a settled file g, and a half-read file f whose ctime is fresh at the restart
  // (chmod, touch, a backup tool),
  SpoolTempDir dir;
  auto c = spoolConfig(dir.path());
  c.min_age = Millis(1000);
  writeFile(dir.file("g"), "g1\n");
  fs::last_write_time(dir.file("g"), fs::file_time_type::clock::now() - std::chrono::hours(1));
  waitCtimeOlderThan(dir.file("g"), c.min_age);
  writeFile(dir.file("f"), "l1\nl2\n");
  struct stat st {};
  REQUIRE(::stat(dir.file("f").c_str(), &st) == 0);
  spool::Position p{dir.file("f"), spool::fileIdOf(st), 3};
  Rig rig(c);
  rig.ctx.setDurablePosition("spooldir/spool_test", spool::encodePosition(p));
  // when the source starts,
  rig.start();
  REQUIRE(rig.waitCompleted(2));
  // then f is finished before g is taken: the position key never names g while f is half read
  // (a second restart in between would read f from its start again).
  CHECK(rig.ctx.bodies == Lines{"l2", "g1"});
  CHECK(exists(dir.file("f.COMPLETED")));
}

// A file of 100000 numbered lines (more than one chunk) is placed and the source started; once
// the first batch is in the source is refused (paused), `change` is applied, and room comes back.
void changeWhilePaused(Rig& rig, const SpoolTempDir& dir, const std::function<void()>& change) {
  std::string big;
  for (int i = 0; i < 100000; ++i) big += "line " + std::to_string(i) + "\n";
  writeFile(dir.file("f"), big);
  rig.ctx.refuse_every = 0;
  rig.start();
  REQUIRE(rig.loop.runUntil([&] { return rig.ctx.offers >= 1; }));
  rig.ctx.refuse = true;
  rig.loop.runUntil([&] { return rig.ctx.refused > 0; });
  change();
  rig.ctx.refuse = false;
  rig.src->resume();
}

TEST_CASE("spooldir: a file that grows while it is read: its new lines are read too") {
  SpoolTempDir dir;
  auto c = spoolConfig(dir.path());
  c.batch_size = 10;
  Rig rig(c);
  // When the file grows while the source is held back,
  changeWhilePaused(rig, dir, [&] { std::ofstream(dir.file("f"), std::ios::app) << "late\n"; });
  // then every line is read, the late one too, and the growth is counted.
  REQUIRE(rig.waitCompleted(1));
  CHECK(exists(dir.file("f.COMPLETED")));
  CHECK(rig.ctx.count("FilesGrownCount") == 1);
  CHECK(rig.ctx.count("FilesFailedCount") == 0);
  Lines got = rig.ctx.bodies;
  REQUIRE(got.size() == 100001);
  for (size_t i = 0; i < 100000; ++i) REQUIRE(got[i] == "line " + std::to_string(i));
  CHECK(got.back() == "late");
}

TEST_CASE("spooldir: a file rewritten in place while it is read fails, the lines read stay") {
  SpoolTempDir dir;
  auto c = spoolConfig(dir.path());
  c.batch_size = 10;
  Rig rig(c);
  changeWhilePaused(rig, dir, [&] {
    // Same size, new mtime: rewritten in place.
    fs::last_write_time(dir.file("f"), fs::file_time_type::clock::now() - std::chrono::hours(2));
  });
  REQUIRE(rig.loop.runUntil([&] { return rig.ctx.count("FilesFailedCount") == 1; }));
  CHECK(exists(dir.file("f.FAILED")));
  CHECK(rig.ctx.count("FilesCompletedCount") == 0);
  Lines got = rig.ctx.bodies;
  CHECK(got.size() < 100000);
  for (size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == "line " + std::to_string(i));

  // A corrected file dropped under the same name is read in full, also after a restart.
  stopAndWait(rig.loop, *rig.src);
  rig.started = false;
  drop(rig.staging, dir.path(), "f", "fixed\n");
  SpooldirSource again(c, rig.staging.file("state"));
  again.start(rig.ctx);
  REQUIRE(rig.loop.runUntil([&] { return rig.ctx.count("FilesCompletedCount") == 1; }));
  CHECK(rig.ctx.bodies.back() == "fixed");
  CHECK(rig.ctx.count("FilesFailedCount") == 1);
  stopAndWait(rig.loop, again);
}

TEST_CASE("spooldir: a reused name is ingested and completed under a unique name") {
  SpoolTempDir dir;
  writeFile(dir.file("f.COMPLETED"), "old\n");
  writeFile(dir.file("f.1.COMPLETED"), "older\n");
  writeFile(dir.file("f"), "new\n");
  Rig rig(spoolConfig(dir.path()));
  rig.start();
  REQUIRE(rig.waitCompleted(1));
  CHECK(rig.ctx.bodies == Lines{"new"});
  CHECK(readAll(dir.file("f.COMPLETED")) == "old\n");
  CHECK(readAll(dir.file("f.2.COMPLETED")) == "new\n");
}

TEST_CASE("spooldir: an unreadable file is moved aside") {
  SpoolTempDir dir;
  writeFile(dir.file("secret"), "x\n");
  writeFile(dir.file("ok"), "y\n");
  ::chmod(dir.file("secret").c_str(), 0);
  Rig rig(spoolConfig(dir.path()));
  rig.start();
  REQUIRE(rig.waitCompleted(1));
  if (geteuid() == 0) {
    MESSAGE("running as root: every file is readable, only the happy path is checked");
    REQUIRE(rig.waitCompleted(2));
    return;
  }
  CHECK(rig.loop.runUntil([&] { return rig.ctx.count("FilesFailedCount") == 1; }));
  CHECK(exists(dir.file("secret.FAILED")));
  CHECK(rig.ctx.bodies == Lines{"y"});
}

TEST_CASE("spooldir: a file another process holds a write lease on is tried again, not failed") {
  // Given a file on which this process holds a write lease (an open by the source then fails
  // with EWOULDBLOCK under O_NONBLOCK),
  SpoolTempDir dir;
  writeFile(dir.file("f"), "l1\n");
  int holder = ::open(dir.file("f").c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(holder >= 0);
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_holder{holder};
  if (::fcntl(holder, F_SETSIG, SIGURG) != 0 || ::fcntl(holder, F_SETLEASE, F_WRLCK) != 0) {
    MESSAGE("leases are not available here (fs.leases-enable, file system): not checked");
    return;
  }
  test::LogCapture log;
  Rig rig(spoolConfig(dir.path()));
  rig.start();
  // when the source tries it for a while,
  rig.loop.runFor(200);
  // then it is neither read nor quarantined, and said once;
  CHECK(rig.ctx.bodies.empty());
  CHECK(rig.ctx.count("FilesFailedCount") == 0);
  CHECK(exists(dir.file("f")));
  CHECK(log.count("cannot open") == 1);
  // once the lease is gone it is read.
  REQUIRE(::fcntl(holder, F_SETLEASE, F_UNLCK) == 0);
  REQUIRE(rig.waitCompleted(1));
  CHECK(rig.ctx.bodies == Lines{"l1"});
  // A file gone is forgotten (the set of files said to wait is pruned at each scan): the next
  // file under that name held the same way is said again. (Leased before it is renamed in, so
  // that the source cannot take it first.)
  auto leasedDrop = [&](const std::string& content) {
    std::string tmp = rig.staging.file("g");
    writeFile(tmp, content);
    int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::fcntl(fd, F_SETSIG, SIGURG) == 0);
    REQUIRE(::fcntl(fd, F_SETLEASE, F_WRLCK) == 0);
    fs::rename(tmp, dir.file("g"));
    return fd;
  };
  Close second{leasedDrop("g1\n")};
  REQUIRE(rig.loop.runUntil([&] { return log.count("cannot open") == 2; }));
  fs::remove(dir.file("g"));
  rig.loop.runFor(100);  // scans without g
  Close third{leasedDrop("g2\n")};
  CHECK(rig.loop.runUntil([&] { return log.count("cannot open") == 3; }, 3000));
}

TEST_CASE("spooldir: long lines are split or truncated; counted") {
  SpoolTempDir dir;
  std::string longline(25, 'x');
  writeFile(dir.file("f"), "short\n" + longline + "\r\n" + longline + "\nend\n" + longline);
  SUBCASE("split") {
    auto c = spoolConfig(dir.path());
    c.max_line_bytes = 10;
    Rig rig(c);
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    Lines want{"short"};
    for (int k = 0; k < 2; ++k) {
      for (const char* piece : {"xxxxxxxxxx", "xxxxxxxxxx", "xxxxx"}) want.push_back(piece);
    }
    want.push_back("end");
    for (const char* piece : {"xxxxxxxxxx", "xxxxxxxxxx", "xxxxx"}) want.push_back(piece);
    CHECK(rig.ctx.bodies == want);
    CHECK(rig.ctx.count("LinesSplitCount") == 6);
  }
  SUBCASE("truncate, resuming after a truncated line") {
    auto c = spoolConfig(dir.path());
    c.max_line_bytes = 10;
    c.on_long_line = "truncate";
    c.batch_size = 1;
    Rig rig(c);
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{"short", "xxxxxxxxxx", "xxxxxxxxxx", "end", "xxxxxxxxxx"});
    CHECK(rig.ctx.count("LinesTruncatedCount") == 3);
  }
  SUBCASE("a line of exactly max bytes with CRLF is one line") {
    writeFile(dir.file("f"), "0123456789\r\nab\n");
    auto c = spoolConfig(dir.path());
    c.max_line_bytes = 10;
    Rig rig(c);
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{"0123456789", "ab"});
  }
}

TEST_CASE("spooldir: split pieces of a huge line across chunks resume exactly") {
  SpoolTempDir dir;
  std::string huge(SpooldirSource::kReadChunkBytes * 3 + 17, 'h');
  writeFile(dir.file("f"), huge + "\nafter\n");
  auto c = spoolConfig(dir.path());
  c.max_line_bytes = 100000;
  c.batch_size = 1;
  Rig rig(c);
  rig.start();
  REQUIRE(rig.waitCompleted(1));
  Lines got = rig.ctx.bodies;
  REQUIRE(got.size() >= 2);
  CHECK(got.back() == "after");
  std::string joined;
  for (size_t i = 0; i + 1 < got.size(); ++i) {
    CHECK(got[i].size() <= 100000);
    joined += got[i];
  }
  CHECK(joined == huge);
}

TEST_CASE("spooldir: input charset conversion with replacement or failure") {
  SpoolTempDir dir;
  SUBCASE("latin1 to UTF-8") {
    writeFile(dir.file("f"), "caf\xe9\n");
    auto c = spoolConfig(dir.path());
    c.input_charset = "ISO-8859-1";
    Rig rig(c);
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{"caf\xc3\xa9"});
  }
  SUBCASE("invalid UTF-8 replaced with U+FFFD") {
    writeFile(dir.file("f"),
              "a\xff"
              "b\n\xc3\n");
    auto c = spoolConfig(dir.path());
    c.input_charset = "UTF-8";
    Rig rig(c);
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{"a\xef\xbf\xbd"
                                  "b",
                                  "\xef\xbf\xbd"});
    CHECK(rig.ctx.count("DecodeReplacementCount") == 2);
  }
  SUBCASE("invalid UTF-8 fails the file with on_decode_error: fail") {
    writeFile(dir.file("f"), "good\nbad\xff\n");
    auto c = spoolConfig(dir.path());
    c.input_charset = "UTF-8";
    c.on_decode_error = "fail";
    Rig rig(c);
    rig.start();
    REQUIRE(rig.loop.runUntil([&] { return rig.ctx.count("FilesFailedCount") == 1; }));
    CHECK(exists(dir.file("f.FAILED")));
  }
  SUBCASE("without input_charset bytes pass untouched") {
    writeFile(dir.file("f"), std::string("\xff\xfe\x00z\n", 5));
    Rig rig(spoolConfig(dir.path()));
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{std::string("\xff\xfe\x00z", 4)});
  }
}

TEST_CASE("spooldir: headers, include/ignore patterns, recursive, hidden files") {
  SpoolTempDir dir;
  fs::create_directories(dir.file("sub/deeper"));
  writeFile(dir.file("a.log"), "a\n");
  writeFile(dir.file("a.tmp"), "tmp\n");
  writeFile(dir.file("skip.log"), "skip\n");
  writeFile(dir.file(".hidden.log"), "hidden\n");
  writeFile(dir.file("sub/deeper/b.log"), "b\n");
  auto c = spoolConfig(dir.path());
  std::string error;
  c.include_pattern = Regex{".*\\.log", compileRegex(".*\\.log", error)};
  c.ignore_pattern = Regex{"skip.*", compileRegex("skip.*", error)};
  c.recursive = true;
  c.file_header = true;
  c.basename_header = true;
  c.basename_header_key = "bn";
  Rig rig(c);
  rig.start();
  REQUIRE(rig.waitCompleted(2));
  rig.loop.runFor(50);
  Lines got = rig.ctx.bodies;
  std::sort(got.begin(), got.end());
  CHECK(got == Lines{"a", "b"});
  Lines h = rig.ctx.durableHeaderLines();
  std::sort(h.begin(), h.end());
  CHECK(h == Lines{"file=" + dir.file("a.log") + ";bn=a.log;",
                   "file=" + dir.file("sub/deeper/b.log") + ";bn=b.log;"});
  CHECK(exists(dir.file("a.tmp")));
  CHECK(exists(dir.file("skip.log")));
  CHECK(exists(dir.file(".hidden.log")));
}

TEST_CASE("spooldir: a refusing channel pauses reading; nothing lost or duplicated") {
  SpoolTempDir dir;
  Lines want;
  for (int f = 0; f < 3; ++f) {
    std::string content;
    for (int i = 0; i < 20000; ++i) {
      std::string l = std::to_string(f) + "-" + std::to_string(i);
      content += l + "\n";
      want.push_back(l);
    }
    writeFile(dir.file("f" + std::to_string(f)), content);
    fs::last_write_time(dir.file("f" + std::to_string(f)),
                        fs::file_time_type::clock::now() - std::chrono::seconds(10 - f));
  }
  auto c = spoolConfig(dir.path());
  c.batch_size = 77;
  Rig rig(c);
  rig.ctx.refuse_every = 3;
  rig.start();
  REQUIRE(rig.waitCompleted(3));
  CHECK(rig.ctx.refused > 0);
  CHECK(rig.ctx.bodies == want);
}

TEST_CASE("spooldir: without durable positions the state file carries the position") {
  SpoolTempDir dir;
  SpoolTempDir state;
  writeFile(dir.file("f"), "1\n2\n3\n");
  {
    Rig rig(spoolConfig(dir.path()), state.path());
    rig.ctx.keep_positions = false;
    rig.src->setDurableProbeWait(Millis(30));
    rig.start();
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{"1", "2", "3"});
  }
  // The state names the completed file at its end.
  auto pos = spool::decodePosition(spool::readStateFile(state.path() + "/position").value_or(""));
  REQUIRE(pos);
  CHECK(pos->path == dir.file("f"));
  CHECK(pos->offset == 6);

  // A restart resumes mid-file from a state file.
  writeFile(dir.file("g"), "a\nb\nc\n");
  struct stat st {};
  REQUIRE(::stat(dir.file("g").c_str(), &st) == 0);
  std::string error;
  REQUIRE(spool::writeStateFile(state.path() + "/position",
                                spool::encodePosition({dir.file("g"), spool::fileIdOf(st), 2}),
                                error));
  Rig rig(spoolConfig(dir.path()), state.path());
  rig.ctx.keep_positions = false;
  rig.src->setDurableProbeWait(Millis(30));
  rig.start();
  REQUIRE(rig.waitCompleted(1));
  CHECK(rig.ctx.bodies == Lines{"b", "c"});
}

TEST_CASE("spooldir: a file is not completed before its last put is durable") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "1\n2\n");
  Rig rig(spoolConfig(dir.path()));
  rig.ctx.auto_durable = false;
  uint64_t wait_ms = 50;
  SUBCASE("a context that cannot tell whether the channels keep positions") {}
  SUBCASE("told a channel keeps positions, it waits however long") {
    // A new file channel whose first write is slow: before the context could say so, the
    // source decided after its probe window that nothing kept positions and completed early.
    rig.ctx.declared_keeps = true;
    rig.src->setDurableProbeWait(Millis(30));  // ignored: the context knows
    wait_ms = 200;
  }
  rig.start();
  REQUIRE(rig.loop.runUntil([&] { return rig.ctx.bodies.size() == 2; }));
  rig.loop.runFor(wait_ms);
  CHECK(exists(dir.file("f")));  // accepted, not durable: still there
  rig.ctx.makeDurable();
  REQUIRE(rig.waitCompleted(1));
  CHECK(exists(dir.file("f.COMPLETED")));
}

TEST_CASE("spooldir: told no channel keeps positions, a file completes at once") {
  // Memory channels: no waiting for a position that will never show (the probe window of a
  // context that cannot tell is 2 s); the state file carries the position instead.
  SpoolTempDir dir;
  SpoolTempDir state;
  writeFile(dir.file("f"), "1\n2\n");
  Rig rig(spoolConfig(dir.path()), state.path());
  rig.ctx.keep_positions = false;
  rig.ctx.declared_keeps = false;
  rig.start();
  REQUIRE(rig.loop.runUntil(
      [&] { return rig.ctx.count("FilesCompletedCount") == 1 && rig.src->idle(); }, 1000));
  CHECK(rig.ctx.bodies == Lines{"1", "2"});
}

TEST_CASE("spooldir: an empty completed_suffix refuses to spool; stop still completes") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "1\n");
  auto c = spoolConfig(dir.path());
  c.completed_suffix = "";
  Rig rig(c);
  rig.start();
  rig.loop.runFor(60);
  CHECK(rig.ctx.bodies.empty());
  CHECK(exists(dir.file("f")));
}

TEST_CASE("spooldir: a file held open by a writer waits; one file, every line") {
  // Given an application that keeps its log open in the spool directory (`exec 3>>app.log`),
  SpoolTempDir dir;
  auto c = spoolConfig(dir.path());
  c.min_age = Millis(50);
  Rig rig(c);
  int fd = ::open(dir.file("app.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  auto say = [&](const std::string& line) {
    REQUIRE(::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
  };
  say("one\n");
  {
    int probe = ::open(dir.file("app.log").c_str(), O_RDONLY | O_CLOEXEC);
    auto writers = spool::probeWriters(probe);
    ::close(probe);
    if (writers != spool::Writers::Some) {
      ::close(fd);
      MESSAGE("leases are not available here (fs.leases-enable, file system): not checked");
      return;
    }
  }
  rig.start();
  // when it writes now and then, pausing longer than min_age,
  for (int i = 0; i < 5; ++i) {
    rig.loop.runFor(120);
    say("line " + std::to_string(i) + "\n");
  }
  // then the file is not taken while it is open for writing,
  CHECK(rig.ctx.bodies.empty());
  CHECK(exists(dir.file("app.log")));
  // and once it is closed, it is taken whole.
  ::close(fd);
  REQUIRE(rig.waitCompleted(1));
  CHECK(rig.ctx.bodies == Lines{"one", "line 0", "line 1", "line 2", "line 3", "line 4"});
  CHECK(exists(dir.file("app.log.COMPLETED")));
  CHECK(!exists(dir.file("app.log.1.COMPLETED")));
}

TEST_CASE("spooldir: a file reopened for every line is taken once it has settled") {
  // An application that opens, appends and closes its log for each line: no writer is seen
  // between lines, only min_age keeps the file from being taken in pieces.
  SpoolTempDir dir;
  auto c = spoolConfig(dir.path());
  c.min_age = Millis(2000);  // far above a pause between two lines, even on a busy machine
  Rig rig(c);
  rig.start();
  Lines want;
  auto began = std::chrono::steady_clock::now();
  for (int i = 0; i < 40; ++i) {
    want.push_back("line " + std::to_string(i));
    std::ofstream(dir.file("app.log"), std::ios::app) << want.back() << "\n";
    rig.loop.runFor(5);
  }
  // Nothing is offered while it is still written (checked when the writing took less than
  // min_age, as it does but on a machine stalled for seconds).
  if (std::chrono::steady_clock::now() - began < c.min_age) CHECK(rig.ctx.offers == 0);
  REQUIRE(rig.waitCompleted(1));
  rig.loop.runFor(50);
  CHECK(rig.ctx.bodies == want);
  CHECK(rig.ctx.count("FilesCompletedCount") == 1);
  CHECK(rig.ctx.count("FilesGrownCount") == 0);  // taken whole, not in pieces
  CHECK(exists(dir.file("app.log.COMPLETED")));
}

TEST_CASE("spooldir: a file that never settles is moved aside after max_settle") {
  // Given a live log taken once it was quiet for min_age, and another file waiting behind it,
  SpoolTempDir dir;
  auto c = spoolConfig(dir.path());
  c.min_age = Millis(100);
  c.max_settle = Millis(600);
  writeFile(dir.file("app.log"), "line 0\n");
  writeFile(dir.file("g"), "g1\n");
  fs::last_write_time(dir.file("app.log"),
                      fs::file_time_type::clock::now() - std::chrono::hours(1));
  Rig rig(c);
  rig.ctx.auto_durable = false;  // its end waits for durability: the writer starts meanwhile
  rig.start();
  REQUIRE(rig.loop.runUntil([&] { return !rig.ctx.bodies.empty(); }));
  REQUIRE(rig.ctx.bodies.front() == "line 0");
  // when it keeps growing with pauses shorter than min_age,
  int written = 1;
  bool moved = rig.loop.runUntil(
      [&] {
        if (rig.ctx.count("FilesFailedCount") > 0) return true;
        std::ofstream(dir.file("app.log"), std::ios::app) << "line " << written++ << "\n";
        rig.ctx.makeDurable();
        return false;
      },
      20000);
  rig.ctx.auto_durable = true;
  // then after max_settle it is moved aside, counted, its complete lines put, and g goes on.
  REQUIRE(moved);
  CHECK(rig.ctx.count("FilesUnsettledCount") == 1);
  CHECK(exists(dir.file("app.log.FAILED")));
  REQUIRE(rig.waitCompleted(1));
  CHECK(exists(dir.file("g.COMPLETED")));
  Lines got = rig.ctx.bodies;
  REQUIRE(got.size() >= 2);
  CHECK(got.back() == "g1");
  for (size_t i = 0; i + 1 < got.size(); ++i) CHECK(got[i] == "line " + std::to_string(i));
}

TEST_CASE("spooldir: a file that changes while its end waits for durability") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "1\n2\n");
  auto c = spoolConfig(dir.path());
  SUBCASE("renamed when completed") {}
  SUBCASE("deleted when completed") { c.delete_policy = "immediate"; }
  Rig rig(c);
  rig.ctx.auto_durable = false;
  rig.start();
  // Given every line is read and the source waits for durability,
  REQUIRE(rig.loop.runUntil([&] { return rig.ctx.bodies.size() == 2; }));
  rig.loop.runFor(20);
  auto completed = [&](uint64_t n) {
    return rig.loop.runUntil([&] {
      rig.ctx.makeDurable();
      return rig.ctx.count("FilesCompletedCount") == n && rig.src->idle();
    });
  };
  SUBCASE("it grows: the new lines are read before it is completed, counted") {
    std::ofstream(dir.file("f"), std::ios::app) << "3\n";
    REQUIRE(completed(1));
    CHECK(rig.ctx.bodies == Lines{"1", "2", "3"});
    CHECK(rig.ctx.count("FilesGrownCount") == 1);
    CHECK(!exists(dir.file("f")));
  }
  SUBCASE("another file is renamed over it: not completed in its place, read as new") {
    drop(rig.staging, dir.path(), "f", "new 1\n");
    REQUIRE(completed(2));
    CHECK(rig.ctx.bodies == Lines{"1", "2", "new 1"});
    CHECK(rig.ctx.count("FilesReplacedCount") == 1);
    CHECK(rig.ctx.count("FilesFailedCount") == 0);
    if (c.delete_policy == "never") CHECK(readAll(dir.file("f.COMPLETED")) == "new 1\n");
  }
}

TEST_CASE("spooldir: a file written to between the last look and the rename is quarantined") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "1\n2\n");
  auto c = spoolConfig(dir.path());
  SUBCASE("renamed") {}
  SUBCASE("deleted") { c.delete_policy = "immediate"; }
  Rig rig(c);
  rig.src->setTestHook([&](SpooldirSource::TestPoint at, const std::string& path) {
    if (at == SpooldirSource::TestPoint::BeforeComplete) {
      std::ofstream(path, std::ios::app) << "too late\n";
    }
  });
  rig.start();
  REQUIRE(rig.loop.runUntil([&] { return rig.ctx.count("FilesFailedCount") == 1; }));
  CHECK(rig.ctx.bodies == Lines{"1", "2"});
  CHECK(readAll(dir.file("f.FAILED")) == "1\n2\ntoo late\n");  // kept, not completed nor deleted
  CHECK(rig.ctx.count("FilesCompletedCount") == 0);
  CHECK(!exists(dir.file("f.COMPLETED")));
}

TEST_CASE("spooldir: a file deleted by someone else before its completion is not 'replaced'") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "1\n");
  Rig rig(spoolConfig(dir.path()));
  bool once = false;
  rig.src->setTestHook([&](SpooldirSource::TestPoint at, const std::string& path) {
    if (at == SpooldirSource::TestPoint::BeforeComplete && !once) {
      once = true;
      fs::remove(path);
    }
  });
  rig.start();
  REQUIRE(rig.waitCompleted(1));
  CHECK(rig.ctx.count("FilesReplacedCount") == 0);
  CHECK(rig.ctx.count("FilesFailedCount") == 0);
  // and the name is not shunned: a new file under it is read.
  drop(rig.staging, dir.path(), "f", "2\n");
  REQUIRE(rig.waitCompleted(2));
  CHECK(rig.ctx.bodies == Lines{"1", "2"});
}

TEST_CASE("spooldir: at restart a replaced file is read as a new file") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "l1\nl2\n");
  struct stat st {};
  REQUIRE(::stat(dir.file("f").c_str(), &st) == 0);
  spool::Position p{dir.file("f"), spool::fileIdOf(st), 3};  // mid-file
  Rig rig(spoolConfig(dir.path()));
  drop(rig.staging, dir.path(), "f", "n1\nn2\nn3\n");  // another inode under the name
  rig.ctx.setDurablePosition("spooldir/spool_test", spool::encodePosition(p));
  rig.start();
  REQUIRE(rig.waitCompleted(1));
  CHECK(rig.ctx.bodies == Lines{"n1", "n2", "n3"});
  CHECK(rig.ctx.count("FilesReplacedCount") == 1);
  CHECK(!exists(dir.file("f.FAILED")));
}

TEST_CASE("spooldir: a FIFO renamed in between the scan and the open does not block the loop") {
  SpoolTempDir dir;
  writeFile(dir.file("f"), "x\n");
  writeFile(dir.file("g"), "g1\n");
  fs::last_write_time(dir.file("f"), fs::file_time_type::clock::now() - std::chrono::hours(1));
  Rig rig(spoolConfig(dir.path()));
  std::string fifo = rig.staging.file("fifo");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // A timer armed right before the open must fire right after it: the loop is not held.
  using Clock = std::chrono::steady_clock;
  struct Tick {
    uv_timer_t timer{};
    Clock::time_point armed, fired;
  } tick;
  uv_timer_init(rig.loop.get(), &tick.timer);
  tick.timer.data = &tick;
  std::atomic<bool> done{false};
  rig.src->setTestHook([&](SpooldirSource::TestPoint at, const std::string& path) {
    if (at == SpooldirSource::TestPoint::BeforeOpen && path == dir.file("f")) {
      fs::rename(fifo, path);
      tick.armed = Clock::now();
      uv_timer_start(
          &tick.timer, [](uv_timer_t* t) { static_cast<Tick*>(t->data)->fired = Clock::now(); }, 0,
          0);
    }
  });
  // A blocking open would wait for a writer for ever: one comes after 5 s, so that a broken
  // source fails the checks below instead of hanging the test run.
  std::thread unblock([&] {
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (!done && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    while (!done) {
      int fd = ::open(dir.file("f").c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  rig.start();
  bool ok = rig.loop.runUntil([&] {
    return rig.ctx.count("FilesFailedCount") == 1 && rig.ctx.count("FilesCompletedCount") == 1 &&
           tick.fired != Clock::time_point{};
  });
  done = true;
  unblock.join();
  uv_close(reinterpret_cast<uv_handle_t*>(&tick.timer), nullptr);
  CHECK(ok);
  REQUIRE(tick.fired != Clock::time_point{});
  CHECK(tick.fired - tick.armed < std::chrono::seconds(2));
  CHECK(rig.ctx.bodies == Lines{"g1"});
  struct stat st {};
  REQUIRE(::lstat(dir.file("f.FAILED").c_str(), &st) == 0);  // quarantined
  CHECK(S_ISFIFO(st.st_mode));
}

TEST_CASE("spooldir: a restart after a completed file resumes nothing") {
  SpoolTempDir dir;
  std::string content;
  SUBCASE("an empty file") {}
  SUBCASE("a file with a line") { content = "l1\n"; }
  writeFile(dir.file("f"), content);
  struct stat st {};
  REQUIRE(::stat(dir.file("f").c_str(), &st) == 0);
  spool::Position p{dir.file("f"), spool::fileIdOf(st), content.size()};  // its end
  fs::rename(dir.file("f"), dir.file("f.COMPLETED"));                     // and completed
  test::LogCapture log;  // restores the logger however the test ends
  {
    Rig rig(spoolConfig(dir.path()));
    rig.ctx.setDurablePosition("spooldir/spool_test", spool::encodePosition(p));
    rig.start();
    writeFile(dir.file("g"), "g1\n");
    REQUIRE(rig.waitCompleted(1));
    CHECK(rig.ctx.bodies == Lines{"g1"});
  }
  CHECK(!log.contains("resuming"));
  CHECK(!log.contains("from byte"));
}

TEST_CASE("spooldir: validation refuses a spool directory that cannot be used") {
  SpoolTempDir dir;
  auto c = spoolConfig(dir.path());
  CHECK(validateSpooldirConfig(c).empty());
  auto keys = [](const ConfigErrors& errors) {
    std::vector<std::string> out;
    for (const auto& e : errors) out.push_back(e.first);
    return out;
  };
  c.path = dir.file("missing");
  CHECK(keys(validateSpooldirConfig(c)) == std::vector<std::string>{"path"});
  writeFile(dir.file("plain"), "");
  c.path = dir.file("plain");
  CHECK(keys(validateSpooldirConfig(c)) == std::vector<std::string>{"path"});
  if (geteuid() != 0) {
    fs::create_directory(dir.file("closed"));
    ::chmod(dir.file("closed").c_str(), 0);
    c.path = dir.file("closed");
    CHECK(keys(validateSpooldirConfig(c)) == std::vector<std::string>{"path"});
  }
  c.path = dir.path();
  c.min_age = Millis(10000);
  c.max_settle = Millis(5000);
  CHECK(keys(validateSpooldirConfig(c)) == std::vector<std::string>{"max_settle"});
  c.max_settle = c.min_age;
  c.completed_suffix = "";
  CHECK(keys(validateSpooldirConfig(c)) == std::vector<std::string>{"completed_suffix"});

  // Through the registry, as `sluice check`, reload and run use it.
  Registry reg;
  registerSpooldirSource(reg);
  const ComponentType* type = reg.find(Kind::Source, "spooldir");
  REQUIRE(type);
  REQUIRE(type->validate);
  c = spoolConfig(dir.file("missing"));
  CHECK(keys(type->validate(std::any(c))) == std::vector<std::string>{"path"});
}

TEST_CASE("spooldir: a relative path resolves against the configuration file's directory") {
  SpoolTempDir dir;
  fs::create_directory(dir.file("spool"));
  Registry reg;
  registerBuiltins(reg);
  std::string text =
      "sources:\n  spool: {type: spooldir, path: spool, channels: [mem]}\n"
      "channels:\n  mem: {type: memory}\n"
      "sinks:\n  out: {type: stdout, channel: mem}\n";
  Diagnostics diag(dir.file("a.yaml"));
  auto cfg = loadConfigText(text, dir.file("a.yaml"), reg, diag, processEnv());
  INFO(diag.format());
  REQUIRE(cfg);
  REQUIRE(cfg->sources.size() == 1);
  CHECK(std::any_cast<const SpooldirConfig&>(cfg->sources[0].config).path == dir.file("spool"));
  // Without it the source is refused at the path key.
  SpooldirConfig none;
  auto errors = validateSpooldirConfig(none);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].first == "path");
}

TEST_CASE("spooldir: position values round-trip; garbage is refused") {
  spool::Position p{"/a b/c d", {1, 2, 30, -4}, 7};
  auto d = spool::decodePosition(spool::encodePosition(p));
  REQUIRE(d);
  CHECK(*d == p);
  CHECK(!spool::decodePosition(""));
  CHECK(!spool::decodePosition("v1 1 2 3"));
  CHECK(!spool::decodePosition("v1 1 2 3 4 5 "));
  CHECK(!spool::decodePosition("v1 1 2 3 4 9 /x"));  // offset past size
  // v1 values (before fingerprints) are still read.
  auto v1 = spool::decodePosition("v1 1 2 30 -4 7 /a b/c d");
  REQUIRE(v1);
  CHECK(v1->offset == 7);
  CHECK(v1->fp_len == 0);
  CHECK(v1->path == "/a b/c d");
  p.fp_len = 7;
  p.fp_hash = 12345;
  CHECK(spool::decodePosition(spool::encodePosition(p)) == p);
  CHECK(!spool::decodePosition("v2 1 2 30 -4 7 8 1 /x"));  // fingerprint past offset
}

// Model-based random test: files dropped (names reused), the agent crashing mid-file (what is
// not durable is lost), files modified after they were placed. Every line of every unmodified
// file must be in the channel exactly once, in order; no line of any file twice.
TEST_CASE("spooldir: model-based random drops, crashes, modifications (rapidcheck)") {
  // Quiet (the capture is never read), and the logger restored however the test ends.
  test::LogCapture quiet;
  spdlog::set_level(spdlog::level::off);
  bool ok = rc::check("spooldir model", [] {
    SpoolTempDir dir;
    SpoolTempDir staging;
    TestLoop loop;
    FakeSourceContext ctx(loop.get(), "spool_test");
    ctx.auto_durable = false;
    auto c = spoolConfig(dir.path());
    c.batch_size = *rc::gen::inRange<uint64_t>(1, 5);
    c.consume_order = *rc::gen::element<std::string>("oldest", "youngest", "random");
    c.watch = false;
    auto make = [&] {
      auto s = std::make_unique<SpooldirSource>(c, staging.file("state"));
      s->setDurableProbeWait(Millis(3600000));
      ctx.source = s.get();
      s->start(ctx);
      return s;
    };
    auto src = make();
    std::map<std::string, Lines> lines_of;      // file id -> its lines
    std::map<std::string, std::string> placed;  // name in dir -> file id (while not done)
    std::set<std::string> modified;
    int next_file = 0;
    const char* names[] = {"a", "b", "c", "d"};
    auto ops = *rc::gen::container<std::vector<std::pair<int, int>>>(
        rc::gen::pair(rc::gen::inRange(0, 6), rc::gen::inRange(0, 30)));
    for (auto [op, arg] : ops) {
      // Forget names whose file was completed or failed.
      for (auto it = placed.begin(); it != placed.end();) {
        it = exists(dir.file(it->first)) ? std::next(it) : placed.erase(it);
      }
      if (op == 0) {  // drop a file under a maybe reused name
        std::string name = names[arg % 4];
        if (placed.count(name)) continue;
        std::string id = "F" + std::to_string(next_file++);
        std::string content;
        for (int i = 0; i < arg; ++i) {
          lines_of[id].push_back(id + ":" + std::to_string(i));
          content += lines_of[id].back() + (i + 1 < arg || arg % 3 ? "\n" : "");
        }
        lines_of[id];  // empty files too
        drop(staging, dir.path(), name, content);
        placed[name] = id;
      } else if (op == 1 || op == 2) {  // let the source work a little
        for (int i = 0; i < arg; ++i) uv_run(loop.get(), UV_RUN_NOWAIT);
      } else if (op == 3) {
        ctx.makeDurable();
        loop.runFor(3);      // the durability check is on a short timer
      } else if (op == 4) {  // kill -9: what is not durable is lost
        bool done = false;
        src->stop([&] { done = true; });
        RC_ASSERT(loop.runUntil([&] { return done; }));
        ctx.crash();
        src = make();
      } else if (op == 5 && !placed.empty()) {  // modify a placed file
        auto it = std::next(placed.begin(), arg % static_cast<int>(placed.size()));
        std::ofstream(dir.file(it->first), std::ios::app) << "modified\n";
        modified.insert(it->second);
      }
    }
    // Drain: make everything durable until no file is left to spool.
    auto remaining = [&] {
      for (const auto& e : fs::directory_iterator(dir.path())) {
        std::string n = e.path().filename().string();
        if (n.find(".COMPLETED") == std::string::npos && n.find(".FAILED") == std::string::npos) {
          return true;
        }
      }
      return false;
    };
    bool drained = loop.runUntil(
        [&] {
          ctx.makeDurable();
          return !remaining() && src->idle();
        },
        20000);
    RC_ASSERT(drained);
    ctx.makeDurable();
    bool done = false;
    src->stop([&] { done = true; });
    RC_ASSERT(loop.runUntil([&] { return done; }));

    std::map<std::string, Lines> got;
    std::set<std::string> seen;
    for (const auto& b : ctx.bodies) {
      if (b == "modified") continue;
      RC_ASSERT(seen.insert(b).second);  // never twice
      got[b.substr(0, b.find(':'))].push_back(b);
    }
    for (const auto& [id, want] : lines_of) {
      if (modified.count(id)) continue;
      RC_ASSERT(got[id] == want);
    }
  });
  CHECK(ok);
}

}  // namespace
}  // namespace sluice

// The tail source on a real uv loop with real files in temp dirs: reading, partial lines, long
// lines, multi-line events, rotation (rename, copytruncate), truncation, deletion, backpressure,
// restarts from channel positions and from the state file, and a model-based random test.

#include "sources/tail/tail_source.h"
#include "source_fixture.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <rapidcheck.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace sluice {
namespace {

namespace fs = std::filesystem;

using test::FakeSourceContext;
using test::stopAndWait;

// Tail's waits count as met once their condition held: the loop's last turn can read on or
// retry a refused batch and make it false again before runUntil() returns.
struct TailLoop : test::TestLoop {
  TailLoop() { held_once_is_enough = true; }
};

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sluice-tail-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void append(const std::string& path, const std::string& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
  ::close(fd);
}

void copyFile(const std::string& from, const std::string& to) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

void truncateFile(const std::string& path) { REQUIRE(::truncate(path.c_str(), 0) == 0); }

TailConfig config(const TempDir& dir, std::vector<std::string> patterns = {"*.log"}) {
  TailConfig c;
  for (auto& p : patterns) c.paths.push_back(dir.file(p));
  c.poll_interval = Millis(10);
  c.rotate_wait = Millis(100);
  c.partial_line_timeout = Millis(100);
  c.multiline_flush_timeout = Millis(100);
  c.fingerprint_bytes = 16;
  c.read_bytes = 4096;
  c.batch_size = 100;
  return c;
}

std::string numbered(const std::string& prefix, int from, int to) {
  std::string out;
  char buf[64];
  for (int i = from; i <= to; ++i) {
    std::snprintf(buf, sizeof buf, "%s-%06d\n", prefix.c_str(), i);
    out += buf;
  }
  return out;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

using Lines = std::vector<std::string>;

TEST_CASE("tail: lines, CRLF, and a partial last line held until the file is idle") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  append(dir.file("a.log"), "one\r\ntwo\nthr");
  TailConfig c = config(dir);
  c.partial_line_timeout = Millis(300);
  c.path_header = "file";
  TailSource src(c, "");
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 2; }));
  CHECK(ctx.bodies == Lines{"one", "two"});
  CHECK(ctx.events[0].headers["file"] == dir.file("a.log"));
  // The rest of the line comes before the timeout: one line.
  append(dir.file("a.log"), "ee\nfour");
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 3; }));
  CHECK(ctx.bodies[2] == "three");
  // "four" has no newline: emitted once the file is idle for partial_line_timeout.
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 4; }, 3000));
  CHECK(ctx.bodies[3] == "four");
  CHECK(ctx.count("LineCount") == 4);
  CHECK(ctx.count("ByteCount") == 19);
  CHECK(stopAndWait(loop, src) == 1);
}

TEST_CASE("tail: start_at end skips what is there at the first start only") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  append(dir.file("a.log"), "old1\nold2\n");
  TailConfig c = config(dir);
  c.start_at = "end";
  TailSource src(c, "");
  src.start(ctx);
  loop.runFor(50);
  CHECK(ctx.bodies.empty());
  append(dir.file("a.log"), "new1\n");
  append(dir.file("b.log"), "b1\n");  // appears while running: read from its beginning
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 2; }));
  std::set<std::string> got(ctx.bodies.begin(), ctx.bodies.end());
  CHECK(got == std::set<std::string>{"new1", "b1"});
  CHECK(stopAndWait(loop, src) == 1);
}

TEST_CASE("tail: rename rotation finishes the old file, then follows the new one") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir);
  TailSource src(c, "");
  src.start(ctx);
  append(dir.file("a.log"), numbered("a", 1, 10));
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 10; }));
  // The writer keeps its descriptor: lines land in the renamed file after the rename.
  int fd = ::open(dir.file("a.log").c_str(), O_WRONLY | O_APPEND);
  REQUIRE(fd >= 0);
  fs::rename(dir.file("a.log"), dir.file("a.log.1"));
  std::string late = numbered("a", 11, 20);
  REQUIRE(::write(fd, late.data(), late.size()) == static_cast<ssize_t>(late.size()));
  ::close(fd);
  append(dir.file("a.log"), numbered("a", 21, 30));
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 30; }));
  CHECK(ctx.bodies == lines(numbered("a", 1, 30)));
  CHECK(ctx.count("RotationCount") == 1);
  // The rotated file is closed once idle for rotate_wait.
  CHECK(loop.runUntil([&] { return src.openFiles() == 1; }, 3000));
  CHECK(stopAndWait(loop, src) == 1);
}

TEST_CASE("tail: copytruncate: the copy continues where the original was read to") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir, {"*.log", "*.log.*"});
  c.rotate_wait = Millis(300);
  TailSource src(c, "");
  src.start(ctx);
  append(dir.file("a.log"), numbered("a", 1, 10));
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 10; }));
  // Lines the source has not read yet when logrotate copies and truncates.
  append(dir.file("a.log"), numbered("a", 11, 20));
  copyFile(dir.file("a.log"), dir.file("a.log.1"));
  truncateFile(dir.file("a.log"));
  append(dir.file("a.log"), numbered("b", 1, 5));
  CHECK(loop.runUntil([&] { return ctx.bodies.size() >= 25; }));
  loop.runFor(400);  // longer than rotate_wait: nothing more comes
  std::multiset<std::string> got(ctx.bodies.begin(), ctx.bodies.end());
  Lines want = lines(numbered("a", 1, 20) + numbered("b", 1, 5));
  CHECK(got == std::multiset<std::string>(want.begin(), want.end()));
  CHECK(ctx.count("TruncationCount") == 1);
  CHECK(stopAndWait(loop, src) == 1);
}

TEST_CASE("tail: copytruncate while a file is read half-way: no read at the old offset") {
  // The source stops in the middle of a file (here: a refused batch; also a spent read budget),
  // then the file is copied, truncated and written past the offset read so far. Reading on at
  // that offset would hand over new lines out of order, save a wrong offset for the copy and
  // deliver part of the new lines twice.
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir, {"*.log", "*.log.*"});
  c.watch = false;  // the poll alone: nothing depends on when inotify events arrive
  c.batch_size = 10;
  c.rotate_wait = Millis(300);
  append(dir.file("a.log"), numbered("a", 1, 1000));  // 9000 bytes: more than one read chunk
  TailSource src(c, "");
  ctx.refuse = true;
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.refused == 1; }));
  REQUIRE(ctx.count("ByteCount") == 4096);  // one chunk read, the rest not yet
  copyFile(dir.file("a.log"), dir.file("a.log.1"));
  truncateFile(dir.file("a.log"));
  append(dir.file("a.log"), numbered("b", 1, 1000));  // past the offset read so far
  ctx.refuse = false;
  src.resume();
  CHECK(loop.runUntil([&] { return ctx.bodies.size() >= 2000; }));
  loop.runFor(400);  // longer than rotate_wait: nothing more comes
  Lines a, b;
  for (const auto& line : ctx.bodies) (line[0] == 'a' ? a : b).push_back(line);
  CHECK(a == lines(numbered("a", 1, 1000)));
  CHECK(b == lines(numbered("b", 1, 1000)));
  CHECK(ctx.count("TruncationCount") == 1);
  CHECK(stopAndWait(loop, src) == 1);
}

TEST_CASE("tail: truncation restarts at 0; deletion while open reads to the end") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir);
  TailSource src(c, "");
  src.start(ctx);
  append(dir.file("a.log"), "x1\nx2\n");
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 2; }));
  truncateFile(dir.file("a.log"));
  append(dir.file("a.log"), "y1\n");
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 3; }));
  CHECK(ctx.bodies[2] == "y1");
  CHECK(ctx.count("TruncationCount") == 1);
  // Shrunk and grown past the old offset between two looks: the fingerprint tells.
  truncateFile(dir.file("a.log"));
  append(dir.file("a.log"), "z1-longer-than-before\n");
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 4; }));
  CHECK(ctx.bodies[3] == "z1-longer-than-before");
  CHECK(ctx.count("TruncationCount") == 2);

  // Deleted while open, with lines not read yet: they still arrive.
  append(dir.file("b.log"), "b1\n");
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 5 && src.isOpen(dir.file("b.log")); }));
  ctx.refuse = true;  // hold the source back so the next lines are unread at the unlink
  append(dir.file("b.log"), numbered("b", 2, 300));
  loop.runFor(30);
  fs::remove(dir.file("b.log"));
  ctx.refuse = false;
  src.resume();
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 5 + 299; }));
  CHECK(loop.runUntil([&] { return src.openFiles() == 1; }, 3000));
  CHECK(stopAndWait(loop, src) == 1);
}

TEST_CASE("tail: a refusing channel stops reading; resume delivers all, once, in order") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  append(dir.file("a.log"), numbered("a", 1, 20000));
  TailConfig c = config(dir);
  c.batch_size = 50;
  TailSource src(c, "");
  ctx.refuse = true;
  src.start(ctx);
  loop.runFor(100);
  // One offer, refused; no further reading while waiting.
  CHECK(ctx.refused == 1);
  CHECK(ctx.count("ByteCount") <= 4 * 4096);
  ctx.refuse = false;
  src.resume();
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 20000; }));
  CHECK(ctx.bodies == lines(numbered("a", 1, 20000)));
  CHECK(stopAndWait(loop, src) == 1);
}

TEST_CASE("tail: restart resumes from the channel's positions; no loss, no duplicate") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir);
  append(dir.file("a.log"), numbered("a", 1, 100));
  {
    TailSource src(c, "");
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 100; }));
    CHECK(stopAndWait(loop, src) == 1);
  }
  append(dir.file("a.log"), numbered("a", 101, 150));
  fs::rename(dir.file("a.log"), dir.file("a.log.1"));  // rotated while stopped
  append(dir.file("a.log"), numbered("a", 151, 160));
  {
    TailSource src(c, "");
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 160; }));
    loop.runFor(50);
    CHECK(ctx.bodies.size() == 160);
    std::set<std::string> got(ctx.bodies.begin(), ctx.bodies.end());
    CHECK(got.size() == 160);
    CHECK(stopAndWait(loop, src) == 1);
  }
}

TEST_CASE("tail: without channel positions the state file carries them across a restart") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  ctx.keep_positions = false;  // a memory channel
  TailConfig c = config(dir);
  std::string state = dir.file("state/tail.json");
  append(dir.file("a.log"), numbered("a", 1, 100));
  {
    TailSource src(c, state);
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 100; }));
    CHECK(stopAndWait(loop, src) == 1);
  }
  REQUIRE(fs::exists(state));
  auto doc = nlohmann::json::parse(std::ifstream(state));
  CHECK(doc["files"][0]["off"] == 100 * 9);
  append(dir.file("a.log"), numbered("a", 101, 120));
  {
    TailSource src(c, state);
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 120; }));
    loop.runFor(50);
    CHECK(ctx.bodies == lines(numbered("a", 1, 120)));
    CHECK(stopAndWait(loop, src) == 1);
  }
}

TEST_CASE("tail: told a channel keeps positions, no state file; after a reload to memory, one") {
  // A new file channel whose first write is slow: the positions live in the channel, so the
  // source must not fall back to a state file of its own (before the context could say so, it
  // wrote one a second after the first put when the channel had shown no position yet). Then a
  // reload replaces the file channel by a memory channel: the state file is kept again.
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  ctx.declared_keeps = true;
  ctx.auto_durable = false;
  TailConfig c = config(dir);
  std::string state = dir.file("state/tail.json");
  append(dir.file("a.log"), numbered("a", 1, 10));
  TailSource src(c, state);
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 10; }));
  loop.runFor(1300);
  CHECK_FALSE(fs::exists(state));
  ctx.declared_keeps = false;
  ctx.keep_positions = false;
  append(dir.file("a.log"), numbered("a", 11, 20));
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 20; }));
  CHECK(loop.runUntil([&] { return fs::exists(state); }));
  CHECK(stopAndWait(loop, src) == 1);
  auto doc = nlohmann::json::parse(std::ifstream(state));
  CHECK(doc["files"][0]["off"] == 20 * 9);
}

TEST_CASE("tail: a reused inode with other content is a new file") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir);
  append(dir.file("a.log"), numbered("a", 1, 5));
  {
    TailSource src(c, "");
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 5; }));
    CHECK(stopAndWait(loop, src) == 1);
  }
  // Same inode and longer than the saved offset, other first bytes (as after a reuse).
  {
    std::ofstream f(dir.file("a.log"), std::ios::in | std::ios::out | std::ios::binary);
    f << numbered("q", 1, 9);
  }
  {
    TailSource src(c, "");
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 14; }));
    CHECK(Lines(ctx.bodies.begin() + 5, ctx.bodies.end()) == lines(numbered("q", 1, 9)));
    CHECK(stopAndWait(loop, src) == 1);
  }
}

TEST_CASE("tail: long lines are split or truncated") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir);
  c.max_line_bytes = 10;
  append(dir.file("a.log"), std::string(25, 'x') + "\nshort\n" + std::string(12, 'y'));
  SUBCASE("split") {
    TailSource src(c, "");
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 6; }));
    CHECK(ctx.bodies == Lines{std::string(10, 'x'), std::string(10, 'x'), std::string(5, 'x'),
                              "short", std::string(10, 'y'), "yy"});
    CHECK(ctx.count("LinesSplitCount") == 3);
    CHECK(stopAndWait(loop, src) == 1);
  }
  SUBCASE("truncate") {
    c.on_long_line = "truncate";
    TailSource src(c, "");
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 3; }));
    CHECK(ctx.bodies == Lines{std::string(10, 'x'), "short", std::string(10, 'y')});
    CHECK(ctx.count("LinesTruncatedCount") == 2);
    append(dir.file("a.log"), "yyy\nnext\n");  // the rest of the long line is dropped
    CHECK(loop.runUntil([&] { return ctx.bodies.size() == 4; }));
    CHECK(ctx.bodies[3] == "next");
    CHECK(stopAndWait(loop, src) == 1);
  }
}

TEST_CASE("tail: multi-line events by start pattern, bounded, flushed when idle") {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir);
  std::string error;
  c.multiline_start = Regex{"^\\d{4}-", compileRegex("^\\d{4}-", error)};
  c.multiline_max_lines = 3;
  append(dir.file("a.log"),
         "2026-01 boom\n  at a\n  at b\n2026-02 ok\n2026-03 long\n 1\n 2\n 3\n 4\n");
  TailSource src(c, "");
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 4; }, 3000));
  CHECK(ctx.bodies ==
        Lines{"2026-01 boom\n  at a\n  at b", "2026-02 ok", "2026-03 long\n 1\n 2", " 3\n 4"});
  CHECK(stopAndWait(loop, src) == 1);
}

TEST_CASE("tail: the option table parses, and the positions key names the source") {
  Registry registry;
  registerTailSource(registry);
  const ComponentType* type = registry.find(Kind::Source, "tail");
  REQUIRE(type != nullptr);
  Diagnostics diag;
  ConfigReader reader(diag, [](const std::string&) { return std::nullopt; });
  auto parsed = type->parse(YAML::Load("{paths: [/var/log/*.log], start_at: end, "
                                       "multiline_start: '^\\S', poll_interval: 250ms}"),
                            reader, "sources.t");
  CHECK(!diag.hasErrors());
  const auto& cfg = std::any_cast<const TailConfig&>(parsed);
  CHECK(cfg.paths == std::vector<std::string>{"/var/log/*.log"});
  CHECK(cfg.start_at == "end");
  CHECK(cfg.poll_interval == Millis(250));
  CHECK(cfg.multiline_start.re != nullptr);
  type->parse(YAML::Load("{start_at: middle, multiline_start: '('}"), reader, "sources.t");
  CHECK(diag.all().size() == 3);  // paths missing, bad choice, bad regex
}

// ---- model-based random test ----------------------------------------------------------------

// Lines carry their generation (the content of one file from creation or truncation) and a
// number; the model knows which lines exist. Every line must arrive exactly once, and the lines
// of a generation in order, whatever the sequence of appends, rotations, truncations, deletions,
// crashes and backpressure.
struct Model {
  struct Stream {
    int gen = -1;     // generation now at the live path; -1: no file
    int rotated = 0;  // rotated files made so far
  };
  Stream streams[2];
  int next_gen = 0;
  std::map<int, int> written;  // generation -> lines written
};

bool runModel(const std::vector<std::tuple<uint8_t, uint8_t, uint8_t>>& ops, bool watch,
              uint64_t batch_size, std::string& why) {
  TempDir dir;
  TailLoop loop;
  FakeSourceContext ctx(loop.get(), "tail_test");
  TailConfig c = config(dir, {"*.log", "*.log.*"});
  c.watch = watch;
  c.batch_size = batch_size;
  c.rotate_wait = Millis(60);
  Model m;
  auto src = std::make_unique<TailSource>(c, "");
  src->start(ctx);
  auto live = [&](int s) { return dir.file(std::string(1, char('a' + s)) + ".log"); };
  // Backpressure off again: the held batch goes, reading goes on.
  auto lift = [&] {
    if (!ctx.refuse) return;
    ctx.refuse = false;
    src->resume();
  };
  auto caughtUp = [&] {
    lift();
    return loop.runUntil([&] { return src->caughtUp(); }, 5000);
  };
  auto stopSource = [&] {
    int done = 0;
    src->stop([&] { ++done; });
    loop.runUntil([&] { return done > 0; });
    src.reset();
  };
  struct Guard {
    std::function<void()> fn;
    ~Guard() {
      if (fn) fn();
    }
  } guard{stopSource};
  for (auto [k, s8, n8] : ops) {
    int s = s8 % 2;
    int n = 1 + n8 % 40;
    auto& st = m.streams[s];
    switch (k % 9) {
      case 0:
      case 1: {  // append
        if (st.gen < 0) st.gen = m.next_gen++;
        int from = m.written[st.gen] + 1;
        char prefix[16];
        std::snprintf(prefix, sizeof prefix, "g%04d", st.gen);
        append(live(s), numbered(prefix, from, from + n - 1));
        m.written[st.gen] += n;
        break;
      }
      case 2:  // let the source work a little
        loop.runFor(static_cast<uint64_t>(n % 20));
        break;
      case 3:  // rotate by rename, create the new file
        if (st.gen < 0) break;
        fs::rename(live(s), live(s) + "." + std::to_string(++st.rotated));
        st.gen = m.next_gen++;
        append(live(s), "");
        break;
      case 4:  // copytruncate
        if (st.gen < 0) break;
        copyFile(live(s), live(s) + "." + std::to_string(++st.rotated));
        truncateFile(live(s));
        st.gen = m.next_gen++;
        break;
      case 5:  // plain truncation: what was not read is lost, so catch up first
        if (st.gen < 0) break;
        if (!caughtUp()) {
          why = "not caught up before truncate";
          return false;
        }
        truncateFile(live(s));
        st.gen = m.next_gen++;
        break;
      case 6: {  // delete the live file once the source has it open
        if (st.gen < 0) break;
        lift();
        if (!loop.runUntil([&] { return src->isOpen(live(s)); }, 5000)) {
          why = "file never opened";
          return false;
        }
        fs::remove(live(s));
        st.gen = -1;
        // Read to its end through the open descriptor (a crash now would lose the rest: the
        // data is gone with the last descriptor).
        if (!caughtUp()) {
          why = "not caught up after delete";
          return false;
        }
        break;
      }
      case 7: {  // crash and restart
        ctx.lose_offers = true;
        stopSource();
        ctx.lose_offers = false;
        src = std::make_unique<TailSource>(c, "");
        src->start(ctx);
        break;
      }
      case 8:  // backpressure on (the source stops where a batch is refused, often half-way
               // through a file, while the next operations go on), or off again
        if (ctx.refuse) {
          lift();
        } else {
          ctx.refuse = true;
          loop.runFor(static_cast<uint64_t>(n % 20));
        }
        break;
    }
  }
  lift();
  size_t total = 0;
  for (auto& [g, w] : m.written) total += static_cast<size_t>(w);
  loop.runUntil([&] { return ctx.bodies.size() >= total; }, 10000);
  loop.runFor(100);  // anything extra (a duplicate) would show now
  guard.fn = nullptr;
  stopSource();

  std::map<int, int> last;  // generation -> last number seen
  std::set<std::string> seen;
  for (const auto& b : ctx.bodies) {
    if (!seen.insert(b).second) {
      why = "duplicate " + b;
      return false;
    }
    int g = std::atoi(b.c_str() + 1), i = std::atoi(b.c_str() + 6);
    if (i <= last[g]) {
      why = "out of order " + b;
      return false;
    }
    last[g] = i;
  }
  if (seen.size() != total) {
    why = "delivered " + std::to_string(seen.size()) + " of " + std::to_string(total);
    for (auto& [g, w] : m.written) {
      if (last[g] != w)
        why += "; g" + std::to_string(g) + " " + std::to_string(last[g]) + "/" + std::to_string(w);
    }
    return false;
  }
  return true;
}

TEST_CASE(
    "tail: model test: rotations, truncations, deletions and crashes lose and repeat nothing") {
  spdlog::level::level_enum level = spdlog::get_level();
  spdlog::set_level(spdlog::level::warn);
  rc::detail::TestParams params = rc::detail::configuration().testParams;
  if (std::getenv("RC_PARAMS") == nullptr) params.maxSuccess = 40;
  auto result = rc::detail::checkProperty(
      rc::detail::toProperty([](const std::vector<std::tuple<uint8_t, uint8_t, uint8_t>>& ops,
                                bool watch, uint8_t batch) {
        std::vector<std::tuple<uint8_t, uint8_t, uint8_t>> capped(
            ops.begin(), ops.begin() + static_cast<long>(std::min<size_t>(ops.size(), 40)));
        std::string why;
        bool ok = runModel(capped, watch, 1 + batch % 64, why);
        RC_LOG() << why << "\n";
        RC_ASSERT(ok);
      }),
      rc::detail::TestMetadata{}, params);
  spdlog::set_level(level);
  std::ostringstream msg;
  rc::detail::printResultMessage(result, msg);
  INFO(msg.str());
  CHECK(result.is<rc::detail::SuccessResult>());
}

}  // namespace
}  // namespace sluice

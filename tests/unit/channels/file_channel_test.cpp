#include "channels/file/file_channel.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>
#include <uv.h>

#include <rapidcheck.h>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "agent/registry.h"
#include "agent/source_runner.h"
#include "channels/file/file_inspect.h"
#include "channels/file/file_ops.h"
#include "channels/file/record.h"

namespace sluice {
namespace {

namespace fs = std::filesystem;
using Op = FaultyFileOps::Op;

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/sluice-filech-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// A real loop; a watchdog timer fails a test that would otherwise wait for ever.
struct TestLoop {
  uv_loop_t loop{};
  TestLoop() { REQUIRE(uv_loop_init(&loop) == 0); }
  ~TestLoop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }
  template <class Pred>
  bool runUntil(Pred pred) {
    uv_timer_t watchdog;
    uv_timer_init(&loop, &watchdog);
    bool expired = false;
    watchdog.data = &expired;
    uv_timer_start(
        &watchdog, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, 20000, 0);
    while (!pred() && !expired) uv_run(&loop, UV_RUN_ONCE);
    uv_close(reinterpret_cast<uv_handle_t*>(&watchdog), nullptr);
    uv_run(&loop, UV_RUN_NOWAIT);
    return !expired;
  }
  BuildContext context() {
    BuildContext ctx;
    ctx.name = "disk";
    ctx.loop = &loop;
    return ctx;
  }
};

std::shared_ptr<const Batch> makeBatch(int first, int count, size_t body_size = 8) {
  auto b = std::make_shared<Batch>();
  for (int i = 0; i < count; ++i) {
    std::string body = fmt::format("e{}", first + i);
    if (body.size() < body_size) body.append(body_size - body.size(), '.');
    uint32_t idx = b->add(body, 1000 + first + i);
    b->setHeader(idx, "host", "h1");
  }
  return b;
}

std::vector<std::string> names(const Take& t) {
  std::vector<std::string> out;
  t.forEach([&out](EventView ev) {
    std::string body(ev.body());
    out.push_back(body.substr(0, body.find('.')));
  });
  return out;
}

std::vector<std::string> range(int first, int count) {
  std::vector<std::string> out;
  for (int i = first; i < first + count; ++i) out.push_back(fmt::format("e{}", i));
  return out;
}

FileChannelConfig config(const std::string& dir) {
  FileChannelConfig c;
  c.dir = dir;
  c.segment_bytes = 4096;
  c.max_bytes = 1 << 20;
  c.min_free_bytes = 0;
  c.retry_backoff = Millis(1);
  c.checkpoint_interval = Millis(5);
  return c;
}

// Puts a batch and runs the loop until it is durable.
void putDurable(TestLoop& tl, FileChannel& ch, std::shared_ptr<const Batch> b,
                PutOptions opts = {}) {
  bool durable = false;
  opts.on_durable = [&durable] { durable = true; };
  REQUIRE(ch.put(std::move(b), std::move(opts)));
  REQUIRE(tl.runUntil([&] { return durable; }));
}

// Takes everything available, committing it.
std::vector<std::string> drain(Cursor& c, size_t max_events = 1000) {
  std::vector<std::string> out;
  for (;;) {
    Take t = c.take(max_events, 1 << 20);
    if (!t) break;
    auto n = names(t);
    out.insert(out.end(), n.begin(), n.end());
    t.commit();
  }
  return out;
}

std::vector<std::string> segmentFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename();
    if (n.rfind("seg-", 0) == 0 && n.size() == 28) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST_CASE(
    "file channel record: the start-up scan reads what a full decode reads, and refuses the same") {
  Batch b;
  for (int i = 0; i < 5; ++i) {
    uint32_t e = b.add("body-" + std::to_string(i), i);
    if (i % 2 == 0) b.setHeader(e, "host", "h" + std::to_string(i));
  }
  filech::Positions positions = {{"tail:1", "42"}, {"tail:2", "7"}};
  std::string rec;
  filech::encodeRecord(rec, 100, b, positions);
  std::string_view payload = std::string_view(rec).substr(filech::kRecordHeader);

  Batch decoded;
  filech::Positions p1, p2;
  uint32_t events = 0;
  REQUIRE(filech::decodePayload(payload, decoded, p1));
  REQUIRE(filech::scanPayload(payload, events, p2));
  CHECK(events == decoded.size());
  CHECK(events == 5);
  CHECK(p1 == positions);
  CHECK(p2 == positions);
  // Every cut of the payload is refused by both, never read as a shorter record.
  for (size_t n = 0; n < payload.size(); ++n) {
    Batch d;
    filech::Positions q1, q2;
    uint32_t c = 0;
    CHECK_FALSE(filech::decodePayload(payload.substr(0, n), d, q1));
    CHECK_FALSE(filech::scanPayload(payload.substr(0, n), c, q2));
  }
}

TEST_CASE("file channel: round trip across segments, visible only once durable") {
  TempDir dir;
  TestLoop tl;
  auto ch = makeFileChannel(config(dir.path), tl.context());
  REQUIRE(ch);
  Cursor& c = ch->cursor("out");
  CHECK_FALSE(c.take(10, 1 << 20));
  REQUIRE(ch->put(makeBatch(0, 10, 100)));
  CHECK_FALSE(c.take(10, 1 << 20));  // not durable yet
  bool ready = false;
  c.setOnReady([&] { ready = true; });
  REQUIRE(tl.runUntil([&] { return ready; }));
  for (int i = 1; i < 20; ++i) putDurable(tl, *ch, makeBatch(i * 10, 10, 100));
  CHECK(segmentFiles(dir.path).size() > 3);
  auto gauge = [&](const std::string& name) {
    for (const auto& smp : ch->metrics()->samples()) {
      if (smp.name == name) return smp.value;
    }
    return -1.0;
  };
  CHECK(gauge("ConsumerLag_out") == 200);
  CHECK(gauge("ChannelSize") == 200);
  CHECK(gauge("ChannelBytes") > 20000);
  CHECK(gauge("FsyncLatencyMaxMs") >= 0);
  CHECK(drain(c, 7) == range(0, 200));
  CHECK(gauge("ConsumerLag_out") == 0);
  CHECK(gauge("ChannelSize") == 0);
  CHECK(c.lag() == 0);
  CHECK(ch->metrics()->counter("FsyncCount").value() >= 20);
  // Everything committed: the old segments go (the one being written stays).
  tl.runUntil([&] { return segmentFiles(dir.path).size() == 1; });
  CHECK(segmentFiles(dir.path).size() == 1);
}

TEST_CASE("file channel: rollback comes first, out-of-order commits, two consumers") {
  TempDir dir;
  TestLoop tl;
  auto ch = makeFileChannel(config(dir.path), tl.context());
  REQUIRE(ch);
  Cursor& a = ch->cursor("a");
  Cursor& b = ch->cursor("b");
  putDurable(tl, *ch, makeBatch(0, 10));
  putDurable(tl, *ch, makeBatch(10, 10));
  Take t1 = a.take(5, 1 << 20);
  Take t2 = a.take(10, 1 << 20);
  CHECK(names(t1) == range(0, 5));
  CHECK(names(t2) == range(5, 10));
  t2.commit();
  t1.rollback();
  CHECK(a.lag() == 10);
  Take t3 = a.take(100, 1 << 20);
  CHECK(names(t3) ==
        std::vector<std::string>{"e0", "e1", "e2", "e3", "e4", "e15", "e16", "e17", "e18", "e19"});
  t3.commit();
  CHECK(a.lag() == 0);
  CHECK(ch->metrics()->counter("CommitCount").value() == 2);
  CHECK(ch->metrics()->counter("RollbackCount").value() == 1);
  CHECK(drain(b) == range(0, 20));
  CHECK(ch->metrics()->counter("CommitCount").value() == 3);
}

TEST_CASE("file channel: restart keeps uncommitted events and cursors, reads no old segment") {
  TempDir dir;
  {
    TestLoop tl;
    auto ch = makeFileChannel(config(dir.path), tl.context());
    REQUIRE(ch);
    Cursor& c = ch->cursor("out");
    for (int i = 0; i < 30; ++i) putDurable(tl, *ch, makeBatch(i * 10, 10, 100));
    Take t = c.take(55, 1 << 20);
    CHECK(t.events() == 55);
    t.commit();
    Take lost = c.take(10, 1 << 20);  // outstanding at the crash: delivered again
    ch.reset();
  }
  auto files = segmentFiles(dir.path);
  REQUIRE(files.size() > 3);
  auto ops = std::make_shared<FaultyFileOps>();
  TestLoop tl;
  auto ch = makeFileChannel(config(dir.path), tl.context(), ops);
  REQUIRE(ch);
  // Start-up read only the last segment.
  for (size_t i = 0; i + 1 < files.size(); ++i) CHECK(ops->bytesRead(files[i]) == 0);
  CHECK(ops->bytesRead(files.back()) > 0);
  Cursor& c = ch->cursor("out");
  CHECK(c.lag() == 300 - 55);
  CHECK(drain(c) == range(55, 245));
  putDurable(tl, *ch, makeBatch(300, 5));
  CHECK(drain(c) == range(300, 5));
}

TEST_CASE("file channel: a second instance on the same directory is refused") {
  TempDir dir;
  TestLoop tl;
  auto first = makeFileChannel(config(dir.path), tl.context());
  REQUIRE(first);
  auto second = makeFileChannel(config(dir.path), tl.context());
  CHECK_FALSE(second);
}

TEST_CASE("file channel: torn tail is cut off, a flipped byte in the middle is skipped") {
  TempDir dir;
  {
    TestLoop tl;
    auto ch = makeFileChannel(config(dir.path), tl.context());
    REQUIRE(ch);
    for (int i = 0; i < 6; ++i) putDurable(tl, *ch, makeBatch(i * 10, 10, 20));
    ch->cursor("out");  // its journal record comes after the six batches
  }
  auto files = segmentFiles(dir.path);
  REQUIRE(files.size() == 1);
  std::string path = dir.path + "/" + files[0];
  auto size = fs::file_size(path);
  uint64_t rec = 0;  // the six batch records are equal-sized here
  {
    std::ifstream f(path, std::ios::binary);
    unsigned char h[8];
    f.read(reinterpret_cast<char*>(h), 8);
    rec = 20 + (h[4] | (h[5] << 8) | (h[6] << 16) | (static_cast<uint64_t>(h[7]) << 24));
  }
  {
    // Flip a byte inside the payload of the third record; append half a record of garbage.
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(2 * rec + 40));
    char ch = 0;
    f.seekg(static_cast<std::streamoff>(2 * rec + 40));
    f.read(&ch, 1);
    ch = static_cast<char>(ch ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(2 * rec + 40));
    f.write(&ch, 1);
    f.seekp(0, std::ios::end);
    std::string torn(rec / 2, 'x');
    torn[0] = 'S';
    torn[1] = 'L';
    torn[2] = 'R';
    torn[3] = 'C';
    f.write(torn.data(), static_cast<std::streamsize>(torn.size()));
  }
  {
    // `sluice channel inspect` sees both, without opening the channel.
    std::ostringstream report;
    CHECK(inspectFileChannel(dir.path, report) == 1);
    CHECK(report.str().find("invalid record at offset " + std::to_string(2 * rec)) !=
          std::string::npos);
    CHECK(report.str().find("torn tail at offset " + std::to_string(size)) != std::string::npos);
    CHECK(report.str().find("cursor-out  low water 0") != std::string::npos);
  }
  TestLoop tl;
  auto ch = makeFileChannel(config(dir.path), tl.context());
  REQUIRE(ch);
  CHECK(fs::file_size(path) == size);  // the torn tail is gone
  CHECK(ch->metrics()->counter("CorruptRecordCount").value() == 1);
  Cursor& c = ch->cursor("out");
  auto expect = range(0, 20);
  auto rest = range(30, 30);
  expect.insert(expect.end(), rest.begin(), rest.end());
  CHECK(drain(c) == expect);
  putDurable(tl, *ch, makeBatch(60, 3));
  CHECK(drain(c) == range(60, 3));
}

TEST_CASE("file channel: positions are durable with the batch and come back after restart") {
  TempDir dir;
  {
    TestLoop tl;
    auto ch = makeFileChannel(config(dir.path), tl.context());
    REQUIRE(ch);
    for (int i = 0; i < 20; ++i) {
      PutOptions o;
      o.positions = {{"file:a", std::to_string(i * 100)}, {"file:" + std::to_string(i), "x"}};
      putDurable(tl, *ch, makeBatch(i * 10, 10, 100), std::move(o));
    }
    CHECK(ch->positions().at("file:a") == "1900");
  }
  REQUIRE(segmentFiles(dir.path).size() > 2);
  TestLoop tl;
  auto ch = makeFileChannel(config(dir.path), tl.context());
  REQUIRE(ch);
  auto p = ch->positions();
  CHECK(p.at("file:a") == "1900");
  CHECK(p.size() == 21);
  CHECK(p.at("file:0") == "x");
}

TEST_CASE("file channel: capacity gives backpressure and a space listener fires on free") {
  TempDir dir;
  TestLoop tl;
  auto cfg = config(dir.path);
  cfg.max_bytes = 64 * 1024;
  auto ch = makeFileChannel(cfg, tl.context());
  REQUIRE(ch);
  Cursor& c = ch->cursor("out");
  int put = 0;
  while (ch->hasRoom(10, 1000)) putDurable(tl, *ch, makeBatch(put++ * 10, 10, 100));
  CHECK(put > 10);
  CHECK_FALSE(ch->put(makeBatch(9999, 10, 100)));
  bool room = false;
  ch->addSpaceListener([&] { room = true; });
  drain(c);
  REQUIRE(tl.runUntil([&] { return room; }));
  CHECK(ch->hasRoom(10, 1000));
}

TEST_CASE("file channel: min_free_bytes gives backpressure") {
  TempDir dir;
  TestLoop tl;
  auto ops = std::make_shared<FaultyFileOps>();
  ops->setFreeBytes(1 << 20);
  auto cfg = config(dir.path);
  cfg.min_free_bytes = 2 << 20;
  auto ch = makeFileChannel(cfg, tl.context(), ops);
  REQUIRE(ch);
  CHECK_FALSE(ch->hasRoom(1, 10));
  bool room = false;
  ch->addSpaceListener([&] { room = true; });
  ops->setFreeBytes(100 << 20);
  REQUIRE(tl.runUntil([&] { return room; }));  // the writer's periodic statvfs noticed
  CHECK(ch->hasRoom(1, 10));
}

TEST_CASE("file channel: stats say it refuses for space when a put would go below min_free_bytes") {
  // Given free space above min_free_bytes, but not by enough for a large put.
  TempDir dir;
  TestLoop tl;
  auto ops = std::make_shared<FaultyFileOps>();
  ops->setFreeBytes((2 << 20) + 100);
  auto cfg = config(dir.path);
  cfg.min_free_bytes = 2 << 20;
  auto ch = makeFileChannel(cfg, tl.context(), ops);
  REQUIRE(ch);
  CHECK(ch->stats().free_bytes >= ch->stats().min_free_bytes);
  CHECK_FALSE(ch->stats().refusing_for_space);

  // When a put is refused for space, the stats say so although free >= min_free_bytes.
  CHECK_FALSE(ch->hasRoom(1, 10000));
  CHECK(ch->stats().refusing_for_space);

  // Then once the volume has room again, they no longer do.
  ops->setFreeBytes(100 << 20);
  REQUIRE(tl.runUntil([&] { return !ch->stats().refusing_for_space; }));
  CHECK(ch->hasRoom(1, 10000));
}

// Every fault, at every step of a put: the put waits, nothing acknowledged is lost.
TEST_CASE("file channel: injected faults delay puts but lose nothing") {
  struct Case {
    const char* what;
    Op op;
    int error;
  };
  std::vector<Case> cases = {
      {"pwrite ENOSPC", Op::Pwrite, -ENOSPC}, {"pwrite EIO", Op::Pwrite, -EIO},
      {"fdatasync EIO", Op::Fdatasync, -EIO}, {"fsync (metadata) EIO", Op::Fsync, -EIO},
      {"rename ENOSPC", Op::Rename, -ENOSPC}, {"open ENOSPC", Op::Open, -ENOSPC},
      {"fsync dir EIO", Op::FsyncDir, -EIO},  {"short write", Op::Pwrite, 0}};
  // step 0: the fault lasts until cleared; step n > 0: only the nth call of that kind fails.
  for (const auto& fc : cases) {
    for (int step = 0; step <= 4; ++step) {
      CAPTURE(fc.what);
      CAPTURE(step);
      TempDir dir;
      TestLoop tl;
      auto ops = std::make_shared<FaultyFileOps>();
      auto ch = makeFileChannel(config(dir.path), tl.context(), ops);
      REQUIRE(ch);
      Cursor& c = ch->cursor("out");
      int acked = 0;
      int next = 0;
      // Given puts that roll segments, checkpoint cursors and delete segments...
      auto putMany = [&](int count) {
        for (int i = 0; i < count; ++i) {
          PutOptions o;
          o.on_durable = [&acked] { ++acked; };
          REQUIRE(ch->put(makeBatch(next, 10, 100), std::move(o)));
          next += 10;
        }
      };
      putMany(3);
      REQUIRE(tl.runUntil([&] { return acked == 3; }));
      drain(c);
      // ...when the fault persists, puts wait and the error metric counts...
      if (fc.error == 0) {
        ops->shortWriteAt(static_cast<uint64_t>(step + 1));
      } else if (step == 0) {
        ops->failAlways(fc.op, fc.error);
      } else {
        ops->failAt(fc.op, static_cast<uint64_t>(step), fc.error);
      }
      std::vector<std::string> got;
      auto errors = [&] { return ch->metrics()->counter("WriteErrorCount").value(); };
      if (step == 0 && fc.error != 0) {
        putMany(6);
        REQUIRE(tl.runUntil([&] { return errors() > 0; }));
        // A data write or sync that keeps failing holds every later put back.
        if (fc.op == Op::Pwrite || fc.op == Op::Fdatasync) CHECK(acked == 3);
      } else {
        // One put at a time, each followed by a commit and a cursor checkpoint, so the nth
        // call of every kind happens.
        for (int i = 0; i < 6; ++i) {
          putMany(1);
          REQUIRE(tl.runUntil([&] { return acked == 4 + i; }));
          auto n = drain(c);
          got.insert(got.end(), n.begin(), n.end());
          ch->checkpoint();
        }
        CHECK(ops->faultsInjected() == 1);
      }
      // ...then clears: every put completes and every event is delivered once, in order.
      ops->clear();
      REQUIRE(tl.runUntil([&] { return acked == 9; }));
      tl.runUntil([&] {
        auto n = drain(c);
        got.insert(got.end(), n.begin(), n.end());
        return got.size() >= 60;
      });
      CHECK(got == range(30, 60));
      // And after a restart, nothing committed comes back, nothing is missing.
      putMany(1);
      REQUIRE(tl.runUntil([&] { return acked == 10; }));
      ch.reset();
      auto again = makeFileChannel(config(dir.path), tl.context());
      REQUIRE(again);
      CHECK(drain(again->cursor("out")) == range(90, 10));
    }
  }
}

// The low water a cursor file holds; -1 when it cannot be read.
int64_t cursorFileLow(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() != 44) return -1;
  return static_cast<int64_t>(filech::getU64(data.data() + 8));
}

// A full volume: the data write fails with ENOSPC for as long as no space comes back, and
// deleting consumed segments is what gives it back. Those deletions (and the cursor file that
// must precede them) do not wait behind the failing data write.
TEST_CASE("file channel: a failing data write does not hold back cursor files and deletions") {
  TempDir dir;
  TestLoop tl;
  auto ops = std::make_shared<FaultyFileOps>();
  auto cfg = config(dir.path);
  cfg.checkpoint_interval = Millis(60000);  // only the frees write the cursor file
  auto ch = makeFileChannel(cfg, tl.context(), ops);
  REQUIRE(ch);
  Cursor& c = ch->cursor("out");
  for (int i = 0; i < 6; ++i) putDurable(tl, *ch, makeBatch(i * 15, 15, 200));  // a segment each
  auto before = segmentFiles(dir.path);
  REQUIRE(before.size() == 6);
  // Given data writes that fail (the segments' volume is full) and a put waiting for them,
  ops->failAlwaysOn(Op::Pwrite, "seg-", -ENOSPC);
  bool durable = false;
  PutOptions o;
  o.on_durable = [&durable] { durable = true; };
  REQUIRE(ch->put(makeBatch(90, 15, 200), std::move(o)));
  REQUIRE(tl.runUntil([&] { return ch->metrics()->counter("WriteErrorCount").value() > 0; }));
  // when the consumer commits everything,
  CHECK(drain(c) == range(0, 90));
  // then the consumed segments are deleted and the cursor file written, while the data write
  // still fails.
  CHECK(tl.runUntil([&] {
    auto now = segmentFiles(dir.path);
    return std::find(now.begin(), now.end(), before[4]) == now.end() &&
           cursorFileLow(dir.path + "/cursor-out") == 90;
  }));
  CHECK_FALSE(durable);
  // And once space is back, the waiting put completes and is delivered once.
  ops->clear();
  REQUIRE(tl.runUntil([&] { return durable; }));
  CHECK(drain(c) == range(90, 15));
}

// SIGTERM while the disk is full: the agent's loop must end (the channel does not hold it for
// puts that cannot be written) and destroying the channel stops its writer at once; what was
// durable is still there.
TEST_CASE("file channel: stops within a bound while writes fail, keeping what is durable") {
  TempDir dir;
  {
    TestLoop tl;
    auto ops = std::make_shared<FaultyFileOps>();
    auto ch = makeFileChannel(config(dir.path), tl.context(), ops);
    REQUIRE(ch);
    Cursor& c = ch->cursor("out");
    for (int i = 0; i < 2; ++i) putDurable(tl, *ch, makeBatch(i * 10, 10, 100));
    Take t = c.take(10, 1 << 20);
    t.commit();
    ch->checkpoint();
    putDurable(tl, *ch, makeBatch(20, 10, 100));  // the writer runs jobs in order
    REQUIRE(cursorFileLow(dir.path + "/cursor-out") == 10);
    ops->failAlways(Op::Pwrite, -ENOSPC);
    for (int i = 3; i < 5; ++i) REQUIRE(ch->put(makeBatch(i * 10, 10, 100)));
    REQUIRE(tl.runUntil([&] { return ch->metrics()->counter("WriteErrorCount").value() > 1; }));
    // When nothing else holds the loop, it ends (an unreferenced timer says when it did not).
    uv_timer_t guard;
    uv_timer_init(&tl.loop, &guard);
    bool expired = false;
    guard.data = &expired;
    uv_timer_start(
        &guard,
        [](uv_timer_t* tm) {
          *static_cast<bool*>(tm->data) = true;
          uv_stop(tm->loop);
        },
        5000, 0);
    uv_unref(reinterpret_cast<uv_handle_t*>(&guard));
    uv_run(&tl.loop, UV_RUN_DEFAULT);
    CHECK_FALSE(expired);
    uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
    // And closing the channel does not wait for the disk.
    auto t0 = std::chrono::steady_clock::now();
    ch.reset();
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  }
  TestLoop tl;
  auto again = makeFileChannel(config(dir.path), tl.context());
  REQUIRE(again);
  CHECK(drain(again->cursor("out")) == range(10, 20));
}

// Damage between runs that removes events whole: a middle segment deleted, emptied or cut to
// half. The events lost are counted (the gap in event numbers), once however many consumers
// cross it, and `sluice channel inspect` shows the range.
TEST_CASE("file channel: events lost to a deleted, emptied or halved segment are counted") {
  for (const char* damage : {"delete", "empty", "halve"}) {
    CAPTURE(damage);
    TempDir dir;
    {
      TestLoop tl;
      auto ch = makeFileChannel(config(dir.path), tl.context());
      REQUIRE(ch);
      ch->cursor("a");
      ch->cursor("b");
      for (int i = 0; i < 40; ++i) putDurable(tl, *ch, makeBatch(i * 3, 3, 200));
    }
    auto files = segmentFiles(dir.path);
    REQUIRE(files.size() >= 5);
    // Given the third segment damaged while the agent was down,
    std::string victim = dir.path + "/" + files[2];
    uint64_t first = std::stoull(files[2].substr(4, 20));
    uint64_t next = std::stoull(files[3].substr(4, 20));
    if (std::string(damage) == "delete") {
      fs::remove(victim);
    } else {
      fs::resize_file(victim, std::string(damage) == "empty" ? 0 : fs::file_size(victim) / 2);
    }
    std::ostringstream report;
    CHECK(inspectFileChannel(dir.path, report) == 1);
    INFO(report.str());
    TestLoop tl;
    auto ch = makeFileChannel(config(dir.path), tl.context());
    REQUIRE(ch);
    // when both consumers read past it,
    auto a = drain(ch->cursor("a"));
    auto b = drain(ch->cursor("b"));
    CHECK(a == b);
    // then every event not delivered is counted lost, once, and the range is reported.
    uint64_t lost = ch->metrics()->counter("EventsLostCount").value();
    CHECK(lost == 120 - a.size());
    CHECK(lost > 0);
    if (std::string(damage) != "halve") {
      CHECK(lost == next - first);
    } else {
      CHECK(lost < next - first);
    }
    uint64_t begin = next - lost;
    auto want = range(0, static_cast<int>(begin));
    auto rest = range(static_cast<int>(next), static_cast<int>(120 - next));
    want.insert(want.end(), rest.begin(), rest.end());
    CHECK(a == want);
    std::string line = "events lost [" + std::to_string(begin) + ", " + std::to_string(next) +
                       ") " + std::to_string(lost) + " events";
    CHECK(report.str().find(line) != std::string::npos);
  }
}

TEST_CASE("file channel: an unreadable segment is moved aside, counted and skipped") {
  TempDir dir;
  {
    TestLoop tl;
    auto ch = makeFileChannel(config(dir.path), tl.context());
    REQUIRE(ch);
    ch->cursor("out");
    for (int i = 0; i < 12; ++i) putDurable(tl, *ch, makeBatch(i * 10, 10, 100));
  }
  auto files = segmentFiles(dir.path);
  REQUIRE(files.size() >= 3);
  auto ops = std::make_shared<FaultyFileOps>();
  TestLoop tl;
  auto ch = makeFileChannel(config(dir.path), tl.context(), ops);
  REQUIRE(ch);
  ops->failAt(Op::Pread, 1, -EIO);  // the first read of the oldest segment
  Cursor& c = ch->cursor("out");
  auto got = drain(c);
  CHECK(ch->metrics()->counter("DamagedSegmentCount").value() == 1);
  CHECK(fs::exists(dir.path + "/" + files[0] + ".damaged"));
  REQUIRE(!got.empty());
  CHECK(got.back() == "e119");
  CHECK(got.front() != "e0");
  // Start-up again: the damaged file is ignored.
  ch.reset();
  auto again = makeFileChannel(config(dir.path), tl.context());
  REQUIRE(again);
}

TEST_CASE("file channel: fsync interval completes puts after write and syncs later") {
  TempDir dir;
  TestLoop tl;
  auto ops = std::make_shared<FaultyFileOps>();
  auto cfg = config(dir.path);
  cfg.fsync = "interval";
  cfg.fsync_interval = Millis(10);
  auto ch = makeFileChannel(cfg, tl.context(), ops);
  REQUIRE(ch);
  Cursor& c = ch->cursor("out");
  for (int i = 0; i < 5; ++i) putDurable(tl, *ch, makeBatch(i * 10, 10, 100));
  CHECK(drain(c) == range(0, 50));
  REQUIRE(tl.runUntil([&] { return ops->calls(Op::Fdatasync) > 0; }));
  CHECK(ops->calls(Op::Fdatasync) < 5 + 3);
}

TEST_CASE("file channel: positions-only puts never roll a segment onto its own name") {
  TempDir dir;
  TestLoop tl;
  auto cfg = config(dir.path);
  auto ch = makeFileChannel(cfg, tl.context());
  REQUIRE(ch);
  Cursor& c = ch->cursor("out");
  for (int i = 0; i < 200; ++i) {
    PutOptions o;
    o.positions = {{"k", std::to_string(i) + std::string(40, 'p')}};
    putDurable(tl, *ch, std::make_shared<Batch>(), std::move(o));
  }
  putDurable(tl, *ch, makeBatch(0, 3));
  CHECK(drain(c) == range(0, 3));
  CHECK(ch->positions().at("k").rfind("199", 0) == 0);
  ch.reset();
  auto again = makeFileChannel(cfg, tl.context());
  REQUIRE(again);
  CHECK(again->positions().at("k").rfind("199", 0) == 0);
}

TEST_CASE("file channel: reconfigure applies in place unless the directory changes") {
  TempDir dir;
  TestLoop tl;
  auto cfg = config(dir.path);
  auto ch = makeFileChannel(cfg, tl.context());
  REQUIRE(ch);
  Cursor& c = ch->cursor("out");
  cfg.segment_bytes = 1 << 20;
  cfg.fsync = "interval";
  cfg.max_bytes = 2 << 20;
  CHECK(ch->reconfigure(cfg));
  for (int i = 0; i < 20; ++i) putDurable(tl, *ch, makeBatch(i * 10, 10, 100));
  CHECK(segmentFiles(dir.path).size() == 1);  // the larger segments apply
  CHECK(ch->stats().capacity_bytes == (2u << 20));
  CHECK(drain(c) == range(0, 200));
  auto moved = cfg;
  moved.dir = dir.path + "/elsewhere";
  CHECK_FALSE(ch->reconfigure(moved));
}

// Regression (found by the model test in CI): a take made right after a segment roll records
// the old segment's end as where its range begins. When that segment is freed and the agent is
// killed after an out-of-order commit, the journal still names the deleted segment; the restart
// must find the range in the segment that holds it, not fall back to the older cursor file and
// hand out the committed event again.
TEST_CASE("file channel: journal ranges naming a freed segment survive a crash") {
  TempDir dir;
  TestLoop tl;
  auto cfg = config(dir.path);
  cfg.checkpoint_interval = Millis(1000);  // only the journal carries the commits below
  auto ch = makeFileChannel(cfg, tl.context());
  REQUIRE(ch);
  putDurable(tl, *ch, makeBatch(0, 2, 400));
  {
    Take t = ch->cursor("out").take(2, 1 << 20);
    CHECK(names(t) == range(0, 2));
    t.commit();
  }
  putDurable(tl, *ch, makeBatch(2, 15, 200));  // does not fit in the first segment: rolls
  REQUIRE(tl.runUntil([&] { return ch->segmentCount() == 1; }));  // the first one is freed
  REQUIRE(segmentFiles(dir.path).back() == "seg-00000000000000000002.log");
  Take first = ch->cursor("out").take(1, 1 << 20);
  Take second = ch->cursor("out").take(1, 1 << 20);
  CHECK(names(first) == range(2, 1));
  CHECK(names(second) == range(3, 1));
  second.commit();  // out of order: e2 stays outstanding
  REQUIRE(tl.runUntil([&] { return !ch->journalDueForTest(); }));  // the turn ends
  ch->simulateCrashForTest();
  ch.reset();  // the writer finishes what was queued (the journal record), as the page cache does

  auto again = makeFileChannel(cfg, tl.context());
  REQUIRE(again);
  auto got = drain(again->cursor("out"));
  auto want = range(2, 1);
  auto rest = range(4, 13);
  want.insert(want.end(), rest.begin(), rest.end());
  CHECK(got == want);
}

// Regression (found in review): a commit that frees a segment writes the cursor file at once,
// while its journal record waits for the end of the loop turn. Killed in between, the restart
// saw an older journal entry and the newer cursor file, chose the file, and handed out again a
// take committed out of order before it. Now the checkpoint queues the due journal records
// first, and start-up merges an older journal entry with a newer cursor file.
TEST_CASE("file channel: a cursor file never gets ahead of the commit journal") {
  TempDir dir;
  TestLoop tl;
  auto cfg = config(dir.path);
  cfg.checkpoint_interval = Millis(1000);
  auto ch = makeFileChannel(cfg, tl.context());
  REQUIRE(ch);
  Cursor& c = ch->cursor("out");
  for (int i = 0; i < 4; ++i) putDurable(tl, *ch, makeBatch(i * 15, 15, 200));  // a segment each
  REQUIRE(ch->segmentCount() == 4);
  Take a = c.take(15, 1 << 20);
  Take b = c.take(15, 1 << 20);
  Take later = c.take(15, 1 << 20);
  CHECK(names(a) == range(0, 15));
  CHECK(names(b) == range(15, 15));
  CHECK(names(later) == range(30, 15));
  later.commit();  // out of order; its journal record is written at the end of the turn
  REQUIRE(tl.runUntil([&] { return !ch->journalDueForTest(); }));
  // When the oldest take commits, the first segment is freed and the cursor file written at once,
  a.commit();
  CHECK(ch->segmentCount() == 3);
  // and the agent is killed before the loop turn ends,
  ch->simulateCrashForTest();
  ch.reset();
  // then the restart hands out the outstanding take and what was never taken, nothing else.
  auto again = makeFileChannel(cfg, tl.context());
  REQUIRE(again);
  auto want = range(15, 15);
  auto rest = range(45, 15);
  want.insert(want.end(), rest.begin(), rest.end());
  CHECK(drain(again->cursor("out")) == want);
}

// A source that reads numbered lines from a "file" of `total` lines, a batch of 10 every loop
// turn, each put with its position, and resumes at start from the durable position (as tail
// does).
struct LineSource : Source {
  uint64_t total = 0;
  uint64_t* emitted = nullptr;  // batches put, across instances
  SourceContext* ctx = nullptr;
  uv_timer_t* timer = nullptr;
  uint64_t next = 0;
  bool paused = false;
  ~LineSource() override {
    if (timer)
      uv_close(reinterpret_cast<uv_handle_t*>(timer),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  }
  void start(SourceContext& c) override {
    ctx = &c;
    for (const auto& v : c.durablePositions("line"))
      next = std::max<uint64_t>(next, std::stoull(v));
    timer = new uv_timer_t;
    uv_timer_init(c.loop(), timer);
    timer->data = this;
    uv_timer_start(
        timer, [](uv_timer_t* t) { static_cast<LineSource*>(t->data)->emit(); }, 0, 1);
  }
  void emit() {
    if (paused || next >= total) return;
    Batch b;
    uint64_t end = std::min<uint64_t>(next + 10, total);
    for (uint64_t i = next; i < end; ++i) b.add(fmt::format("e{}", i), 1);
    if (ctx->offerWithPositions(b, {{"line", std::to_string(end)}}) == OfferResult::Full) {
      paused = true;
      return;
    }
    next = end;
    ++*emitted;
  }
  void resume() override { paused = false; }
  void stop(std::function<void()> done) override {
    uv_timer_stop(timer);
    done();
  }
};

// A reload replaces the running source with a new one that resumes from the durable positions:
// the old one's last put must be durable before the new one reads them, or its batch is put
// into the file channel twice.
TEST_CASE("file channel: a source reloaded while writing puts each line once") {
  TempDir dir;
  TestLoop tl;
  auto cfg = config(dir.path);
  cfg.segment_bytes = 1 << 20;
  std::shared_ptr<FileChannel> ch = makeFileChannel(cfg, tl.context());
  REQUIRE(ch);
  SourceSpec spec;
  spec.name = "lines";
  spec.common.channels = {"disk"};
  spec.selector.type = "replicating";
  const uint64_t total = 3000;
  uint64_t emitted = 0;
  auto metrics = std::make_shared<MetricSet>("SOURCE", "lines");
  auto make = [&] {
    auto src = std::make_unique<LineSource>();
    src->total = total;
    src->emitted = &emitted;
    auto r = std::make_unique<SourceRunner>(&tl.loop, spec, std::move(src), metrics,
                                            std::vector<InterceptorPtr>{});
    r->setChannels({ch});
    r->start();
    return r;
  };
  auto runner = make();
  // Given a source stopped and replaced 40 times while it writes,
  for (int reload = 0; reload < 40; ++reload) {
    uint64_t target = emitted + 3;
    REQUIRE(tl.runUntil([&] { return emitted >= target || emitted * 10 >= total; }));
    bool stopped = false;
    runner->stop([&stopped] { stopped = true; });
    REQUIRE(tl.runUntil([&] { return stopped; }));
    runner = make();
  }
  // when it has read the whole file,
  REQUIRE(tl.runUntil([&] {
    auto p = ch->positions();
    return p.count("line") && p["line"] == std::to_string(total);
  }));
  // then the channel holds every line once.
  auto got = drain(ch->cursor("out"), 100000);
  std::set<std::string> unique(got.begin(), got.end());
  CHECK(unique.size() == total);
  CHECK(got.size() == total);
  runner.reset();
}

TEST_CASE("file channel: registered with its option table") {
  Registry registry;
  registerFileChannel(registry);
  const ComponentType* t = registry.find(Kind::Channel, "file");
  REQUIRE(t);
  std::vector<std::string> keys;
  for (const auto& o : t->options) keys.push_back(o.key);
  CHECK(std::find(keys.begin(), keys.end(), "max_bytes") != keys.end());
  CHECK(std::find(keys.begin(), keys.end(), "fsync") != keys.end());
}

// Model-based: random sequences of put / take / commit / rollback / checkpoint / clean restart /
// crash (kill -9: no final checkpoint, a torn record appended) against a model of what was
// acknowledged and committed. Invariants: every acknowledged put reaches the consumer, first
// deliveries come in put order, and nothing the consumer committed is ever handed to it again
// (the commit journal makes that hold across crashes and out-of-order commits).
TEST_CASE("file channel: model-based random sequences (rapidcheck)") {
  using StepGen = std::tuple<int, int, int>;
  bool ok = rc::check("file channel model", [] {
    const auto steps = *rc::gen::container<std::vector<StepGen>>(rc::gen::tuple(
        rc::gen::inRange(0, 10), rc::gen::inRange(0, 1 << 20), rc::gen::inRange(0, 1 << 20)));
    TempDir dir;
    TestLoop tl;
    auto cfg = config(dir.path);
    cfg.checkpoint_interval = Millis(1000);  // cursor files lag: the journal must carry commits
    auto ch = makeFileChannel(cfg, tl.context());
    RC_ASSERT(ch != nullptr);
    int next_id = 0;
    int acked_upto = 0;       // events [0, acked_upto) are acknowledged
    std::set<int> committed;  // ever committed: never to be delivered again
    std::set<int> seen;       // ever delivered
    int highest_first = -1;
    std::vector<Take> takes;
    auto id = [](std::string_view body) {
      return std::stoi(std::string(body.substr(1, body.find('.') - 1)));
    };
    auto takeOne = [&](size_t max) {
      Take t = ch->cursor("out").take(max, 1 << 20);
      if (!t) return;
      bool fine = true;
      t.forEach([&](EventView ev) {
        int e = id(ev.body());
        if (committed.count(e)) fine = false;
        if (!seen.count(e)) {
          if (e <= highest_first) fine = false;
          highest_first = e;
          seen.insert(e);
        }
      });
      RC_ASSERT(fine);
      takes.push_back(std::move(t));
    };
    auto settle = [&](size_t i, bool commit) {
      if (commit) {
        takes[i].forEach([&](EventView ev) { committed.insert(id(ev.body())); });
        takes[i].commit();
      }
      takes.erase(takes.begin() + static_cast<ptrdiff_t>(i));
    };
    auto reopen = [&](bool crash, int torn) {
      // A kill -9 between loop turns: the commits of the last turn have their journal record
      // queued (a crash inside a turn may hand that turn's commits out again; the test "a cursor
      // file never gets ahead of the commit journal" covers that case).
      RC_ASSERT(tl.runUntil([&] { return acked_upto == next_id && !ch->journalDueForTest(); }));
      if (crash) {
        ch->simulateCrashForTest();
        takes.clear();  // a dead process settles nothing
      }
      while (!takes.empty()) settle(0, false);
      ch.reset();
      if (crash && torn > 0) {
        auto files = segmentFiles(dir.path);
        if (!files.empty()) {
          std::ofstream f(dir.path + "/" + files.back(), std::ios::app | std::ios::binary);
          std::string garbage = "SLRC" + std::string(static_cast<size_t>(torn), '\x7f');
          f.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
        }
      }
      ch = makeFileChannel(cfg, tl.context());
      RC_ASSERT(ch != nullptr);
    };
    for (const auto& [kind, a, b] : steps) {
      switch (kind) {
        case 0:
        case 1:
        case 2: {
          int n = 1 + a % 15;
          int first = next_id;
          next_id += n;
          PutOptions o;
          o.on_durable = [&acked_upto, first, n] { acked_upto = std::max(acked_upto, first + n); };
          RC_ASSERT(ch->put(makeBatch(first, n, 1 + static_cast<size_t>(b % 200)), std::move(o)));
          if (b % 2) RC_ASSERT(tl.runUntil([&] { return acked_upto == next_id; }));
          break;
        }
        case 3:
        case 4:
          takeOne(1 + static_cast<size_t>(a % 30));
          break;
        case 5:
        case 6:
          if (!takes.empty()) settle(static_cast<size_t>(a) % takes.size(), true);
          break;
        case 7:
          if (!takes.empty()) settle(static_cast<size_t>(a) % takes.size(), false);
          break;
        case 8:
          ch->checkpoint();
          break;
        case 9:
          reopen(a % 2 == 0, b % 3 == 0 ? 1 + b % 60 : 0);
          break;
      }
    }
    // Drain everything: every acknowledged event is committed, none twice.
    while (!takes.empty()) settle(0, true);
    RC_ASSERT(tl.runUntil([&] { return acked_upto == next_id; }));
    for (;;) {
      size_t before = takes.size();
      takeOne(1000);
      if (takes.size() == before) break;
      settle(0, true);
    }
    for (int e = 0; e < acked_upto; ++e) RC_ASSERT(committed.count(e) == 1u);
    RC_ASSERT(ch->cursor("out").lag() == 0u);
  });
  CHECK(ok);
}

}  // namespace
}  // namespace sluice

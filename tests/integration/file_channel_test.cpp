// The file channel through the real binary: a backlog survives kill -9; damage on disk is cut
// or skipped, counted, and everything undamaged is delivered.

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "harness.h"

using namespace sluice::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::string config(const std::string& data_dir, const std::string& command) {
  std::string c =
      "agent:\n  name: it\n  status: 127.0.0.1:0\n  drain_timeout: 5s\n  data_dir: " + data_dir +
      "\n";
  if (!command.empty()) {
    c += "sources:\n  cmd:\n    type: exec\n    command: '" + command +
         "'\n    restart: false\n    batch_timeout: 20ms\n    channels: [disk]\n";
  }
  c += "channels:\n  disk:\n    type: file\n    segment_bytes: 256KiB\n    min_free_bytes: 1MiB\n"
       "    checkpoint_interval: 100ms\n"
       "sinks:\n  out:\n    type: stdout\n    channel: disk\n";
  return c;
}

nlohmann::json metricsOf(const Process& p) {
  int port = loggedStatusPort(p);
  if (port == 0) return nlohmann::json::object();
  auto r = httpGet("http://127.0.0.1:" + std::to_string(port) + "/metrics.json");
  return r.status == 200 ? nlohmann::json::parse(r.body) : nlohmann::json::object();
}

uint64_t value(const nlohmann::json& doc, const std::string& c, const std::string& n) {
  return doc.contains(c) && doc[c].contains(n) ? doc[c][n].get<uint64_t>() : 0;
}

// Run 1: N numbers go into the file channel while the sink's stdout is read very slowly, so
// most of them are still on disk when the agent is killed with SIGKILL.
std::string fillAndKill(const TempDir& dir, int n) {
  writeFile(dir.file("run1.yaml"),
            config(dir.file("data"), "seq 1 " + std::to_string(n) + "; sleep 30"));
  Process agent({sluiceBinary(), "run", "-c", dir.file("run1.yaml")}, dir.path(), {}, 64);
  bool durable = waitFor(
      [&] {
        auto m = metricsOf(agent);
        // ChannelSize counts durable events not yet delivered.
        return value(m, "CHANNEL.disk", "ChannelSize") +
                   value(m, "SINK.out", "EventDrainSuccessCount") >=
               static_cast<uint64_t>(n);
      },
      60s);
  INFO(agent.err());
  REQUIRE(durable);
  // Let a few cursor checkpoints (100 ms) pass while the sink trickles on, then kill.
  auto until = std::chrono::steady_clock::now() + 400ms;
  waitFor([&] { return std::chrono::steady_clock::now() >= until; }, 1s);
  agent.signal(SIGKILL);
  REQUIRE(agent.wait(10s) == 128 + SIGKILL);
  return agent.out();
}

std::vector<int> numbers(const std::string& out) {
  std::vector<int> v;
  for (const auto& line : splitLines(out)) {
    if (!line.empty()) v.push_back(std::stoi(line));
  }
  return v;
}

}  // namespace

TEST_CASE("file channel: a backlog survives kill -9 and is delivered after restart") {
  TempDir dir;
  const int n = 100000;
  auto first = numbers(fillAndKill(dir, n));
  CHECK(first.size() < static_cast<size_t>(n) / 2);  // most of it was still in the channel

  // Run 2: no source at all, only the sink draining what the channel kept.
  writeFile(dir.file("run2.yaml"), config(dir.file("data"), ""));
  Process agent({sluiceBinary(), "run", "-c", dir.file("run2.yaml")}, dir.path());
  std::set<int> seen(first.begin(), first.end());
  bool complete = waitFor(
      [&] {
        auto second = numbers(agent.out());
        std::set<int> all = seen;
        all.insert(second.begin(), second.end());
        return all.size() == static_cast<size_t>(n);
      },
      60s);
  if (!complete) {
    auto second = numbers(agent.out());
    std::set<int> all = seen;
    all.insert(second.begin(), second.end());
    int first_missing = 0, missing = 0;
    for (int v = 1; v <= n; ++v) {
      if (!all.count(v)) {
        ++missing;
        if (!first_missing) first_missing = v;
      }
    }
    FAIL("missing " << missing << " numbers from " << first_missing << "; run 1 printed "
                    << first.size() << " (last " << (first.empty() ? 0 : first.back())
                    << "), run 2 printed " << second.size() << " (first "
                    << (second.empty() ? 0 : second.front()) << ")\n"
                    << agent.err());
  }
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  auto second = numbers(agent.out());
  // At least once: what was in flight at the kill, and what was committed since the cursor's
  // last checkpoint (100 ms here), may come again; nothing more.
  CHECK(first.size() + second.size() - n < 5000);
  CHECK(*std::min_element(second.begin(), second.end()) <= static_cast<int>(first.size()) + 1);
  auto inspect = runSluice({"channel", "inspect", dir.file("data") + "/channels/disk"}, dir);
  INFO(inspect.out);
  CHECK(inspect.code == 0);
}

TEST_CASE("file channel: a flipped byte and a torn tail are counted; the rest is delivered") {
  TempDir dir;
  const int n = 60000;
  auto first = numbers(fillAndKill(dir, n));
  std::set<int> seen(first.begin(), first.end());

  // Damage the files the way a bad disk and a crash would.
  std::vector<fs::path> segments;
  for (const auto& e : fs::directory_iterator(dir.file("data") + "/channels/disk")) {
    if (e.path().extension() == ".log") segments.push_back(e.path());
  }
  std::sort(segments.begin(), segments.end());
  REQUIRE(segments.size() >= 3);
  {
    auto victim = segments[segments.size() / 2];
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    auto size = fs::file_size(victim);
    f.seekp(static_cast<std::streamoff>(size / 2));
    char c = 0;
    f.seekg(static_cast<std::streamoff>(size / 2));
    f.get(c);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.put(static_cast<char>(c ^ 0x5a));
  }
  auto last = segments.back();
  fs::resize_file(last, fs::file_size(last) - 7);
  auto damaged = runSluice({"channel", "inspect", dir.file("data") + "/channels/disk"}, dir);
  CHECK(damaged.code == 1);

  writeFile(dir.file("run2.yaml"), config(dir.file("data"), ""));
  Process agent({sluiceBinary(), "run", "-c", dir.file("run2.yaml")}, dir.path());
  nlohmann::json m;
  REQUIRE(waitFor(
      [&] {
        m = metricsOf(agent);
        return value(m, "CHANNEL.disk", "CorruptRecordCount") >= 1 &&
               value(m, "CHANNEL.disk", "ChannelSize") == 0 &&
               value(m, "SINK.out", "EventDrainSuccessCount") > 0;
      },
      60s));
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  auto second = numbers(agent.out());
  seen.insert(second.begin(), second.end());
  size_t missing = n - seen.size();
  INFO("missing " << missing);
  // Only the damaged record (one batch of at most 1000 lines) and the torn last one are gone.
  CHECK(missing >= 1);
  CHECK(missing <= 2000);
  CHECK(agent.err().find("corrupt") != std::string::npos);
}

TEST_CASE("file channel: kill -9 at 50 random moments; every number arrives, none lost") {
  TempDir dir;
  const int n = 100000;
  std::string yaml = "agent:\n  name: it\n  data_dir: " + dir.file("data") +
                     "\n  status: 127.0.0.1:0\n  drain_timeout: 5s\n"
                     "sources:\n  numbers:\n    type: seq\n    count: " +
                     std::to_string(n) +
                     "\n    batch_size: 100\n    interval: 2ms\n    channels: [disk]\n"
                     "channels:\n  disk:\n    type: file\n    segment_bytes: 64KiB\n"
                     "    min_free_bytes: 1MiB\n    checkpoint_interval: 50ms\n"
                     "sinks:\n  out:\n    type: stdout\n    channel: disk\n    batch_size: 50\n";
  writeFile(dir.file("a.yaml"), yaml);
  unsigned seed = std::random_device{}();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pause_ms(20, 300);
  std::vector<int> seen(n + 1, 0);
  size_t total = 0;
  auto collect = [&](const std::string& out) {
    for (const auto& line : splitLines(out)) {
      if (line.empty()) continue;
      int v = std::stoi(line);
      REQUIRE(v >= 1);
      REQUIRE(v <= n);
      ++seen[v];
      ++total;
    }
  };
  for (int kill = 0; kill < 50; ++kill) {
    Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(pause_ms(rng));
    waitFor([&] { return std::chrono::steady_clock::now() >= deadline || !agent.running(); }, 5s);
    REQUIRE(agent.running());
    agent.signal(SIGKILL);
    REQUIRE(agent.wait(10s) == 128 + SIGKILL);
    collect(agent.out());
  }
  // A last run to the end: the source finishes its count and the sink drains the channel.
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  REQUIRE(waitFor(
      [&] { return agent.err().find("finished at " + std::to_string(n)) != std::string::npos; },
      120s));
  REQUIRE(waitFor(
      [&] {
        int port = loggedStatusPort(agent);
        auto r = httpGet("http://127.0.0.1:" + std::to_string(port) + "/metrics.json");
        if (r.status != 200) return false;
        auto m = nlohmann::json::parse(r.body);
        return value(m, "CHANNEL.disk", "ChannelSize") == 0;
      },
      60s));
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  collect(agent.out());
  int missing = 0;
  for (int v = 1; v <= n; ++v) missing += seen[v] == 0;
  INFO("delivered " << total << " lines for " << n << " numbers");
  CHECK(missing == 0);
}

// A small tmpfs of our own (CI runs as root) mounted at path, 4 of its 6 MiB taken by a filler
// file (vol/filler); unmounted when done.
struct FullVolume {
  std::string path;
  explicit FullVolume(std::string at) : path(std::move(at)) {
    fs::create_directories(path);
    std::string mount = "mount -t tmpfs -o size=6m tmpfs " + path;
    REQUIRE_MESSAGE(std::system(mount.c_str()) == 0, "mounting a tmpfs needs root");
    std::ofstream filler(path + "/filler", std::ios::binary);
    std::string mib(1 << 20, 'f');
    for (int i = 0; i < 4; ++i) filler << mib;
  }
  ~FullVolume() { std::system(("umount -l " + path).c_str()); }
};

TEST_CASE("file channel: a full disk pauses the agent, keeps its data, and it resumes") {
  TempDir dir;
  FullVolume volume(dir.file("vol"));
  const std::string& vol = volume.path;
  const int n = 200000;  // ~1.4 MB of bodies, more than the space left once records are framed
  std::string yaml = "agent:\n  name: it\n  data_dir: " + vol +
                     "\n  status: 127.0.0.1:0\n  drain_timeout: 10s\n"
                     "sources:\n  numbers:\n    type: seq\n    count: " +
                     std::to_string(n) +
                     "\n    batch_size: 1000\n    channels: [disk]\n"
                     "channels:\n  disk:\n    type: file\n    segment_bytes: 256KiB\n"
                     "    min_free_bytes: 0\n"
                     "sinks:\n  out:\n    type: stdout\n    channel: disk\n";
  writeFile(dir.file("a.yaml"), yaml);
  // Given a sink that cannot keep up, the channel grows until the volume is full:
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path(), {}, 128);
  auto metric = [&](const std::string& c, const std::string& name) {
    return value(metricsOf(agent), c, name);
  };
  REQUIRE(waitFor([&] { return metric("CHANNEL.disk", "WriteErrorCount") > 0; }, 60s));
  // then the agent keeps running and keeps what it has; what does not fit waits (in the
  // writer's bounded queue, then as backpressure on the source) instead of being dropped.
  CHECK(agent.running());
  uint64_t durable =
      metric("CHANNEL.disk", "ChannelSize") + metric("SINK.out", "EventDrainSuccessCount");
  CHECK(durable < static_cast<uint64_t>(n));
  // When space comes back, it carries on by itself and delivers everything.
  fs::remove(vol + "/filler");
  bool finished = waitFor(
      [&] {
        auto out = agent.out();
        return out.find(fmt::format("\n{}\n", n)) != std::string::npos;
      },
      120s);
  INFO(agent.err());
  REQUIRE(finished);
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  std::vector<int> seen(n + 1, 0);
  for (int v : numbers(agent.out())) seen[v]++;
  int missing = 0;
  for (int v = 1; v <= n; ++v) missing += seen[v] == 0;
  CHECK(missing == 0);
}

// SIGTERM while the channel's volume is full: the agent stops within its drain_timeout (plus a
// margin for a busy machine) instead of retrying the write for ever, and what was durable is
// still there, every record intact.
TEST_CASE("file channel: SIGTERM with a full disk stops within drain_timeout and keeps the log") {
  TempDir dir;
  FullVolume volume(dir.file("vol"));
  const std::string& vol = volume.path;
  std::string yaml = "agent:\n  name: it\n  data_dir: " + vol +
                     "\n  status: 127.0.0.1:0\n  drain_timeout: 3s\n"
                     "sources:\n  numbers:\n    type: seq\n    count: 200000\n"
                     "    batch_size: 1000\n    channels: [disk]\n"
                     "channels:\n  disk:\n    type: file\n    segment_bytes: 256KiB\n"
                     "    min_free_bytes: 0\n"
                     "sinks:\n  out:\n    type: stdout\n    channel: disk\n";
  writeFile(dir.file("a.yaml"), yaml);
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path(), {}, 128);
  REQUIRE(
      waitFor([&] { return value(metricsOf(agent), "CHANNEL.disk", "WriteErrorCount") > 0; }, 60s));
  // Given writes failing with ENOSPC, when the agent gets SIGTERM,
  auto t0 = std::chrono::steady_clock::now();
  agent.signal(SIGTERM);
  // then it exits within its drain_timeout (3 s) and a margin, on its own (not by the hard
  // stop 10 s after the drain, which exits 1 and says "exiting without them"),
  auto code = agent.wait(20s);
  INFO(agent.err());
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  CHECK(agent.err().find("exiting without them") == std::string::npos);
  // and what is on disk is intact.
  auto inspect = runSluice({"channel", "inspect", vol + "/channels/disk"}, dir);
  INFO(inspect.out);
  CHECK(inspect.code == 0);
  CHECK(inspect.out.find("records") != std::string::npos);
}

// The spooldir source through the real binary: spooldir -> file channel -> stdout, with kill -9
// at random moments while files are being spooled. Every line arrives; none is put into the
// channel twice (checked with the channel's own event count: its consumer's low water after
// the final drain equals the number of lines).

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <signal.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "harness.h"

using namespace sluice::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

uint64_t spoolMetric(const Process& p, const std::string& comp, const std::string& name) {
  int port = loggedStatusPort(p);
  if (port == 0) return 0;
  auto r = httpGet("http://127.0.0.1:" + std::to_string(port) + "/metrics.json");
  if (r.status != 200) return 0;
  auto doc = nlohmann::json::parse(r.body);
  return doc.contains(comp) && doc[comp].contains(name) ? doc[comp][name].get<uint64_t>() : 0;
}

bool spoolDrained(const std::string& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n.size() < 10 || n.substr(n.size() - 10) != ".COMPLETED") return false;
  }
  return true;
}

// Writes a file of `lines` numbered lines beside the spool directory and renames it in.
void dropSpoolFile(const TempDir& dir, const std::string& name, int lines,
                   std::vector<std::string>& all) {
  std::string content;
  for (int i = 0; i < lines; ++i) {
    std::string l = name + " " + std::to_string(i) + " GET /index.html HTTP/1.1 200";
    content += l + (i % 7 == 3 ? "\r\n" : "\n");
    all.push_back(l);
  }
  writeFile(dir.file(name + ".tmp"), content);
  fs::rename(dir.file(name + ".tmp"), dir.file("spool/" + name));
}

}  // namespace

TEST_CASE("spooldir: kill -9 at 30 random moments while spooling; every line once") {
  TempDir dir;
  fs::create_directories(dir.file("spool"));
  std::vector<std::string> all;
  for (int f = 0; f < 10; ++f) dropSpoolFile(dir, fmt::format("f{}", f), 5000, all);
  std::string yaml =
      "agent:\n  name: it\n  data_dir: " + dir.file("data") +
      "\n  status: 127.0.0.1:0\n  drain_timeout: 5s\n"
      "sources:\n  spool:\n    type: spooldir\n    path: " +
      dir.file("spool") +
      "\n    batch_size: 100\n    poll_interval: 50ms\n    min_age: 0s\n    channels: [disk]\n"
      "channels:\n  disk:\n    type: file\n    segment_bytes: 64KiB\n"
      "    max_bytes: 256KiB\n    min_free_bytes: 1MiB\n"
      "    checkpoint_interval: 50ms\n"
      "sinks:\n  out:\n    type: stdout\n    channel: disk\n    batch_size: 50\n";
  writeFile(dir.file("a.yaml"), yaml);
  unsigned seed = std::random_device{}();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pause_ms(20, 300);
  std::map<std::string, int> seen;
  size_t total = 0;
  auto collect = [&](const std::string& out) {
    for (const auto& line : splitLines(out)) {
      if (line.empty()) continue;
      ++seen[line];
      ++total;
    }
  };
  int extra = 0;
  int resumed_mid_file = 0;
  for (int kill = 0; kill < 30; ++kill) {
    // The stdout reader drains ~100 bytes/ms, so the small channel fills and the source is
    // held back: the kills land in the middle of files.
    Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path(), {}, 100);
    if (kill % 10 == 5) dropSpoolFile(dir, "late" + std::to_string(extra++), 2000, all);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(pause_ms(rng));
    waitFor([&] { return std::chrono::steady_clock::now() >= deadline || !agent.running(); }, 5s);
    REQUIRE(agent.running());
    agent.signal(SIGKILL);
    REQUIRE(agent.wait(10s) == 128 + SIGKILL);
    collect(agent.out());
    // "reading <file> from byte N": this run resumed in the middle of a file.
    if (agent.err().find(" from byte ") != std::string::npos) ++resumed_mid_file;
  }
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  // Every file completed (so every line is durable in the channel) and the channel empty (so
  // the sink delivered them all).
  bool drained = waitFor(
      [&] {
        return loggedStatusPort(agent) != 0 && spoolDrained(dir.file("spool")) &&
               spoolMetric(agent, "CHANNEL.disk", "ChannelSize") == 0;
      },
      120s);
  if (!drained) {
    std::string listing;
    for (const auto& e : fs::directory_iterator(dir.file("spool"))) {
      listing += e.path().filename().string() + " ";
    }
    INFO("spool: " << listing);
    INFO(agent.err());
    REQUIRE(drained);
  }
  agent.signal(SIGTERM);
  REQUIRE(agent.wait(30s) == 0);
  collect(agent.out());

  int missing = 0;
  for (const auto& l : all) missing += seen.count(l) == 0;
  INFO("delivered " << total << " lines for " << all.size());
  CHECK(missing == 0);
  MESSAGE(resumed_mid_file << " of 30 runs resumed mid-file; the sink delivered " << total
                           << " lines for " << all.size() << " (re-deliveries after kill -9)");
  CHECK(resumed_mid_file > 0);
  CHECK(seen.size() == all.size());  // nothing that was not in a file

  // None put twice: the channel numbered every event it ever got; after the drain its consumer's
  // low water is that count.
  CHECK(channelLowWater(dir.file("data/channels/disk"), dir) == static_cast<long long>(all.size()));
  CHECK(agent.err().find("FAILED") == std::string::npos);
}

TEST_CASE("spooldir: check and run refuse a spool directory that cannot be used") {
  TempDir dir;
  writeFile(dir.file("plain"), "");
  for (const std::string& path : {dir.file("missing"), dir.file("plain")}) {
    writeFile(dir.file("a.yaml"), "sources:\n  spool:\n    type: spooldir\n    path: " + path +
                                      "\n    channels: [mem]\n"
                                      "channels:\n  mem: {type: memory}\n"
                                      "sinks:\n  out: {type: stdout, channel: mem}\n");
    for (const char* verb : {"check", "run"}) {
      auto r = runSluice({verb, "-c", dir.file("a.yaml")}, dir);
      INFO(std::string(verb) << " " << path << ": " << r.err);
      CHECK(r.code == 1);
      CHECK(r.err.find(dir.file("a.yaml") + ":4:11: error: sources.spool.path: ") !=
            std::string::npos);
    }
  }
}

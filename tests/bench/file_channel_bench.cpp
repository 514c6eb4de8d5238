// Benchmark of the file channel: durable append throughput (fsync: batch) from 1 and 4
// producers against the raw disk (the same bytes with large writes + fdatasync), and restart
// time to the first delivered event with large backlogs. Prints figures; asserts nothing.
//
//   build/default/tests/bench/sluice_bench_file_channel [DIR] [backlog GiB list, e.g. 1,10]
// Each figure is the median of 5 runs.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "channels/file/file_channel.h"

using namespace sluice;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

constexpr size_t kBatchEvents = 1000;
constexpr size_t kBodyBytes = 200;

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

std::shared_ptr<const Batch> makeBatch() {
  auto b = std::make_shared<Batch>();
  std::string body(kBodyBytes, 'x');
  for (size_t i = 0; i < kBatchEvents; ++i) b->add(body, 0);
  return b;
}

struct Loop {
  uv_loop_t loop{};
  Loop() { uv_loop_init(&loop); }
  ~Loop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
};

std::shared_ptr<FileChannel> open(Loop& l, const std::string& dir, uint64_t max_bytes) {
  FileChannelConfig cfg;
  cfg.dir = dir;
  cfg.max_bytes = max_bytes;
  cfg.min_free_bytes = 1ull << 30;
  BuildContext ctx;
  ctx.name = "bench";
  ctx.loop = &l.loop;
  ctx.metrics = std::make_shared<MetricSet>("CHANNEL", "bench");
  return makeFileChannel(cfg, ctx);
}

// Puts `total_bytes` of batches from `producers` producers, each keeping `depth` puts in flight
// (it puts its next batch when one of its earlier ones is durable). Returns MB/s of payload.
double durableAppend(const std::string& dir, int producers, int depth, uint64_t total_bytes) {
  fs::remove_all(dir);
  Loop l;
  double mbps = 0;
  {
    auto ch = open(l, dir, total_bytes * 4);
    ch->cursor("reader");  // a consumer exists but does not read: pure append
    auto batch = makeBatch();
    uint64_t batches = total_bytes / batch->bytes();
    uint64_t issued = 0, done = 0;
    std::function<void()> next = [&] {
      if (issued >= batches) return;
      ++issued;
      PutOptions o;
      o.on_durable = [&] {
        ++done;
        next();
      };
      if (!ch->put(batch, std::move(o))) {
        std::fprintf(stderr, "put refused\n");
        std::exit(1);
      }
    };
    auto start = Clock::now();
    for (int p = 0; p < producers * depth; ++p) next();
    while (done < batches) uv_run(&l.loop, UV_RUN_ONCE);
    auto end = Clock::now();
    mbps = static_cast<double>(batches * batch->bytes()) / 1e6 / seconds(start, end);
  }
  fs::remove_all(dir);
  return mbps;
}

// The same payload volume written to one file with 4 MiB writes and an fdatasync per write.
double rawDisk(const std::string& dir, uint64_t total_bytes) {
  fs::create_directories(dir);
  std::string path = dir + "/raw";
  int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  std::string chunk(4 << 20, 'x');
  auto start = Clock::now();
  for (uint64_t written = 0; written < total_bytes; written += chunk.size()) {
    if (::write(fd, chunk.data(), chunk.size()) != static_cast<ssize_t>(chunk.size())) {
      std::perror("write");
      std::exit(1);
    }
    fdatasync(fd);
  }
  auto end = Clock::now();
  ::close(fd);
  fs::remove(path);
  return static_cast<double>(total_bytes) / 1e6 / seconds(start, end);
}

// Fills a channel with `backlog` bytes, closes it, then measures open -> first take.
void restartTimes(const std::string& dir, uint64_t backlog) {
  fs::remove_all(dir);
  {
    Loop l;
    auto ch = open(l, dir, backlog * 2);
    ch->cursor("reader");
    auto batch = makeBatch();
    uint64_t batches = backlog / batch->bytes();
    uint64_t done = 0, issued = 0;
    while (done < batches) {
      while (issued < batches && issued - done < 64) {
        PutOptions o;
        o.on_durable = [&] { ++done; };
        if (!ch->put(batch, std::move(o))) break;
        ++issued;
      }
      uv_run(&l.loop, UV_RUN_ONCE);
    }
  }
  std::vector<double> ms;
  for (int run = 0; run < 5; ++run) {
    Loop l;
    auto start = Clock::now();
    auto ch = open(l, dir, backlog * 2);
    auto take = ch->cursor("reader").take(1000, 1 << 20);
    auto end = Clock::now();
    if (!take || take.events() == 0) {
      std::fprintf(stderr, "no event after restart\n");
      std::exit(1);
    }
    take.rollback();
    ms.push_back(seconds(start, end) * 1000);
  }
  std::printf("restart to first take, %5.1f GiB backlog: %8.2f ms (median of 5)\n",
              static_cast<double>(backlog) / (1ull << 30), median(ms));
  fs::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : "build/bench/file-channel";
  std::string backlogs = argc > 2 ? argv[2] : "1,10";
  const uint64_t volume = 1ull << 30;  // 1 GiB per throughput run
  std::vector<double> raw, one, one_deep, four;
  for (int run = 0; run < 5; ++run) {
    raw.push_back(rawDisk(dir + "-raw", volume));
    one.push_back(durableAppend(dir, 1, 1, volume));
    one_deep.push_back(durableAppend(dir, 1, 8, volume));
    four.push_back(durableAppend(dir, 4, 1, volume));
  }
  std::printf("durable append, fsync: batch, %d-byte events, 1 GiB per run, median of 5\n",
              static_cast<int>(kBodyBytes));
  std::printf("  raw disk (4 MiB writes + fdatasync):        %8.1f MB/s\n", median(raw));
  std::printf("  file channel, 1 producer, 1 put in flight:  %8.1f MB/s  (%.2fx raw)\n",
              median(one), median(raw) / median(one));
  std::printf("  file channel, 1 producer, 8 puts in flight: %8.1f MB/s  (%.2fx raw)\n",
              median(one_deep), median(raw) / median(one_deep));
  std::printf("  file channel, 4 producers, 1 each:          %8.1f MB/s  (%.2fx raw)\n",
              median(four), median(raw) / median(four));
  size_t pos = 0;
  while (pos < backlogs.size()) {
    size_t comma = backlogs.find(',', pos);
    if (comma == std::string::npos) comma = backlogs.size();
    double gib = std::stod(backlogs.substr(pos, comma - pos));
    restartTimes(dir, static_cast<uint64_t>(gib * (1ull << 30)));
    pos = comma + 1;
  }
  return 0;
}

#pragma once
// Helpers for integration tests that run the real sluice binary: temp dirs, child processes
// with captured output, bounded waiting for conditions, and HTTP GET through libcurl.

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace sluice::test {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string readFile(const std::string& path);
void writeFile(const std::string& path, const std::string& content);
std::vector<std::string> splitLines(const std::string& text);

// A running sluice (or any) process; stdout and stderr go to files in `dir`.
class Process {
 public:
  // With stdout_bytes_per_ms > 0, stdout is a pipe that the test drains at about that rate
  // (into the same file), so a sink writing to stdout is slower than its source.
  Process(const std::vector<std::string>& argv, const std::string& dir,
          const std::map<std::string, std::string>& extra_env = {}, size_t stdout_bytes_per_ms = 0);
  ~Process();  // kills with SIGKILL if still running
  pid_t pid() const { return pid_; }
  void signal(int sig);
  // Waits for exit; returns the exit code (128+signal when killed), nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  bool running();
  std::string out() const { return readFile(out_path_); }
  std::string err() const { return readFile(err_path_); }
  const std::string& outPath() const { return out_path_; }

 private:
  pid_t pid_ = -1;
  std::thread reader_;
  std::optional<int> status_;
  std::string out_path_, err_path_;
};

// Polls `pred` every few milliseconds until it holds or `timeout` passes.
bool waitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

struct HttpResponse {
  long status = 0;
  std::string body;
  std::string content_type;
};
HttpResponse httpGet(const std::string& url);

// The status server port the agent logged ("status server listening on ... (port N)"), or 0.
int loggedStatusPort(const Process& p);

// Runs `sluice ARGS...` to completion; returns exit code, stdout and stderr.
struct RunResult {
  int code;
  std::string out, err;
};
RunResult runSluice(const std::vector<std::string>& args, const TempDir& dir);

// The low water of the (single) consumer of the file channel in `channel_dir`, from `sluice
// channel inspect` (the agent must be stopped); -1 when it cannot be read. After a full drain it
// is the number of events the channel ever got: a line put twice shows as one more.
long long channelLowWater(const std::string& channel_dir, const TempDir& dir);

std::string sluiceBinary();

}  // namespace sluice::test

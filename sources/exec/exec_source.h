#pragma once
// The `exec` source: runs a command and turns each line of its stdout into an event.
//
// Everything runs on the loop thread. The child's stdout is a libuv pipe; lines are cut by a
// LineSplitter and added to the current batch, which is offered when it holds batch_size events
// or when batch_timeout has passed since its first event. When the context refuses a batch
// (OfferResult::Full) the batch is parked, reading stops, and the child blocks on its full pipe;
// the rest of the chunk already read is still split (into further parked batches), so memory
// stays bounded by one batch plus one read chunk. resume() offers the parked batches in order and
// reads again once they are all accepted.
//
// A run ends when the child has exited and its pipes are closed: the final partial line is
// emitted, what is left is offered, and with `restart` the command runs again after
// restart_throttle. A command that cannot be spawned is logged and tried again after
// restart_throttle, whatever `restart` says.
//
// stop() stops restarting and reading, sends SIGTERM to the child's process group (SIGKILL after
// a grace period), offers what was read once more (counting and logging what is refused as
// dropped), closes every handle and then calls done. The source may be destroyed from done.

#include <uv.h>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "agent/event.h"
#include "agent/line_splitter.h"
#include "agent/log_limiter.h"
#include "agent/options.h"
#include "agent/registry.h"
#include "agent/source.h"

namespace sluice {

struct ExecConfig {
  std::string command;
  bool shell = true;
  uint64_t batch_size = 1000;
  Millis batch_timeout{1000};
  uint64_t max_line_bytes = uint64_t{1} << 20;
  std::string on_long_line = "split";
  bool restart = true;
  Millis restart_throttle{10000};
  bool log_stderr = true;
  bool operator==(const ExecConfig&) const = default;
};

const OptionTable<ExecConfig>& execOptionTable();

// The argv of the child: {"/bin/sh", "-c", command} with shell, else command split on
// whitespace (no quoting).
std::vector<std::string> execArgv(const ExecConfig& config);

class ExecSource final : public Source, private LineSink {
 public:
  explicit ExecSource(ExecConfig config);
  ~ExecSource() override;
  ExecSource(const ExecSource&) = delete;
  ExecSource& operator=(const ExecSource&) = delete;

  void start(SourceContext& ctx) override;
  void resume() override;
  void stop(std::function<void()> done) override;

  // For tests and status: no child, no restart scheduled, nothing parked or buffered.
  bool idle() const;
  // Events read but not yet accepted (parked batches plus the current batch).
  size_t heldEvents() const;
  uint64_t spawnFailures() const { return spawn_failures_; }
  // How long stop() waits after SIGTERM before SIGKILL (default 5s). For tests.
  void setKillGrace(Millis grace) { kill_grace_ = grace; }

 private:
  struct Counters {
    Counter* process_start = nullptr;
    Counter* process_exit = nullptr;
    Counter* lines_split = nullptr;
    Counter* lines_truncated = nullptr;
    Counter* bytes_read = nullptr;
    Counter* dropped = nullptr;
    Counter* stderr_suppressed = nullptr;
  };

  void spawnChild();
  void onLine(std::string_view line) override;
  void feedStdout(std::string_view chunk);
  void flushSplitter();
  void syncSplitterCounters();
  // Offers the current batch, or parks it when blocked or refused.
  void offerCurrent();
  void park();
  void pauseReading();
  void resumeReading();
  void onStdoutEnd();
  void onStderrEnd();
  // Logs one stderr line of the child, within the rate limit; the rest are counted.
  void logStderr(std::string_view line);
  void onExit(int64_t exit_status, int term_signal);
  void onClosed(uv_handle_t* handle);
  void maybeRunFinished();
  void onRunFinished();
  void killChild(int signal);
  void closeHandle(uv_handle_t* handle);

  static void allocStdout(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void allocStderr(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void readStdout(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void readStderr(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void exitCallback(uv_process_t* process, int64_t exit_status, int term_signal);
  static void closeCallback(uv_handle_t* handle);

  ExecConfig config_;
  std::vector<std::string> argv_;
  SourceContext* ctx_ = nullptr;
  uv_loop_t* loop_ = nullptr;
  Counters counters_;

  LineSplitter splitter_;
  LineSplitter stderr_splitter_;
  LogLimiter stderr_limiter_;
  uint64_t seen_split_ = 0;
  uint64_t seen_truncated_ = 0;

  Batch current_;
  std::deque<Batch> parked_;  // refused batches, oldest first
  int64_t chunk_ts_ = 0;

  uv_timer_t batch_timer_{};
  uv_timer_t restart_timer_{};
  uv_timer_t kill_timer_{};
  uv_process_t process_{};
  uv_pipe_t stdout_pipe_{};
  uv_pipe_t stderr_pipe_{};
  std::vector<char> stdout_buf_;
  std::vector<char> stderr_buf_;

  int open_handles_ = 0;
  bool started_ = false;
  bool stopping_ = false;
  bool child_running_ = false;  // spawned, exit not yet reported
  bool process_open_ = false;   // process handle initialised, not yet closed
  bool stdout_open_ = false;    // stdout pipe initialised, not yet closed
  bool stderr_open_ = false;
  bool run_active_ = false;    // from spawnChild until the child's handles are all closed
  bool spawn_failed_ = false;  // the current run never started: retry regardless of restart
  bool reading_ = false;       // uv_read_start is in effect on stdout
  bool blocked_ = false;       // a batch was refused; waiting for resume()
  int child_pid_ = 0;
  uint64_t spawn_failures_ = 0;
  Millis kill_grace_{5000};
  std::function<void()> done_;
};

void registerExecSource(Registry& registry);

}  // namespace sluice

#include "sources/exec/exec_source.h"

#include <spdlog/spdlog.h>

#include <cctype>
#include <csignal>
#include <cstdlib>
#include <memory>

namespace sluice {

namespace {

constexpr size_t kStdoutReadBytes = 64 * 1024;
constexpr size_t kStderrReadBytes = 4 * 1024;
// stderr lines are only logged: keep them short.
constexpr size_t kStderrMaxLineBytes = 16 * 1024;
constexpr uint64_t kMaxLineBytes = uint64_t{64} << 20;
// A child writing stderr in a loop must not flood the agent's log: 100 lines at once, then 10
// a second; the rest are counted (StderrLinesSuppressedCount) and summed up in one line.
constexpr double kStderrLinesPerSecond = 10;
constexpr double kStderrBurstLines = 100;

LineSplitterOptions stdoutSplitterOptions(const ExecConfig& config) {
  LineSplitterOptions options;
  options.max_line_bytes = static_cast<size_t>(config.max_line_bytes);
  options.on_long_line =
      config.on_long_line == "truncate" ? LongLinePolicy::Truncate : LongLinePolicy::Split;
  options.strip_cr = true;
  return options;
}

LineSplitterOptions stderrSplitterOptions() {
  LineSplitterOptions options;
  options.max_line_bytes = kStderrMaxLineBytes;
  options.on_long_line = LongLinePolicy::Truncate;
  return options;
}

}  // namespace

const OptionTable<ExecConfig>& execOptionTable() {
  static const OptionTable<ExecConfig> table = [] {
    OptionTable<ExecConfig> t;
    t.requiredString("command", &ExecConfig::command,
                     "command to run; each line of its stdout becomes one event")
        .boolean("shell", &ExecConfig::shell, true,
                 "run the command with /bin/sh -c; false: split it on whitespace into argv")
        .integer("batch_size", &ExecConfig::batch_size, 1000, 1, 1000000,
                 "events per batch offered to the channels")
        .duration("batch_timeout", &ExecConfig::batch_timeout, "1s", Millis(1), Millis(3600000),
                  "a partial batch is offered after this long")
        .size("max_line_bytes", &ExecConfig::max_line_bytes, "1MiB", 1, kMaxLineBytes,
              "longest line kept in one event; longer lines follow on_long_line")
        .choice("on_long_line", &ExecConfig::on_long_line, {"split", "truncate"}, "split",
                "split: cut a long line into max_line_bytes events; truncate: keep its start")
        .boolean("restart", &ExecConfig::restart, true, "run the command again when it exits")
        .duration("restart_throttle", &ExecConfig::restart_throttle, "10s", Millis(1000),
                  Millis(86400000),
                  "wait this long before running the command again (at least 1s, so a command "
                  "that fails at once cannot restart in a tight loop)")
        .boolean("log_stderr", &ExecConfig::log_stderr, true,
                 "log each stderr line of the command at warn level; false: discard stderr");
    return t;
  }();
  return table;
}

std::vector<std::string> execArgv(const ExecConfig& config) {
  if (config.shell) return {"/bin/sh", "-c", config.command};
  std::vector<std::string> argv;
  const std::string& c = config.command;
  size_t i = 0;
  while (i < c.size()) {
    while (i < c.size() && std::isspace(static_cast<unsigned char>(c[i]))) ++i;
    size_t start = i;
    while (i < c.size() && !std::isspace(static_cast<unsigned char>(c[i]))) ++i;
    if (i > start) argv.push_back(c.substr(start, i - start));
  }
  return argv;
}

ExecSource::ExecSource(ExecConfig config)
    : config_(std::move(config)),
      argv_(execArgv(config_)),
      splitter_(stdoutSplitterOptions(config_)),
      stderr_splitter_(stderrSplitterOptions()),
      stderr_limiter_(kStderrLinesPerSecond, kStderrBurstLines) {}

ExecSource::~ExecSource() {
  if (open_handles_ > 0) {
    // The loop still points at our handles: continuing would be a use after free.
    spdlog::critical("exec source destroyed with {} open handles: stop() did not finish",
                     open_handles_);
    std::abort();
  }
}

void ExecSource::start(SourceContext& ctx) {
  ctx_ = &ctx;
  loop_ = ctx.loop();
  started_ = true;
  MetricSet& m = ctx.metrics();
  counters_.process_start = &m.counter("ProcessStartCount");
  counters_.process_exit = &m.counter("ProcessExitCount");
  counters_.lines_split = &m.counter("LinesSplitCount");
  counters_.lines_truncated = &m.counter("LinesTruncatedCount");
  counters_.bytes_read = &m.counter("BytesReadCount");
  counters_.dropped = &m.counter("DroppedEventCount");
  counters_.stderr_suppressed = &m.counter("StderrLinesSuppressedCount");
  stdout_buf_.resize(kStdoutReadBytes);
  stderr_buf_.resize(kStderrReadBytes);
  for (uv_timer_t* timer : {&batch_timer_, &restart_timer_, &kill_timer_}) {
    uv_timer_init(loop_, timer);
    timer->data = this;
    ++open_handles_;
  }
  spawnChild();
}

void ExecSource::spawnChild() {
  run_active_ = true;
  spawn_failed_ = false;
  splitter_.reset();
  stderr_splitter_.reset();
  if (argv_.empty()) {
    // Only possible without shell: a command of blanks. Treated like a failed spawn.
    spdlog::error("exec source '{}': the command is empty", ctx_->name());
    ++spawn_failures_;
    spawn_failed_ = true;
    maybeRunFinished();
    return;
  }
  std::vector<char*> args;
  for (auto& a : argv_) args.push_back(a.data());
  args.push_back(nullptr);

  uv_pipe_init(loop_, &stdout_pipe_, 0);
  stdout_pipe_.data = this;
  stdout_open_ = true;
  ++open_handles_;
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;  // libuv gives the child /dev/null
  stdio[1].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[1].data.stream = reinterpret_cast<uv_stream_t*>(&stdout_pipe_);
  if (config_.log_stderr) {
    uv_pipe_init(loop_, &stderr_pipe_, 0);
    stderr_pipe_.data = this;
    stderr_open_ = true;
    ++open_handles_;
    stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
    stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(&stderr_pipe_);
  } else {
    stdio[2].flags = UV_IGNORE;
  }

  uv_process_options_t options{};
  options.file = args[0];
  options.args = args.data();
  options.exit_cb = &ExecSource::exitCallback;
  options.stdio_count = 3;
  options.stdio = stdio;
  // Own process group, so that stop() can signal a whole pipeline (sh -c 'a | b').
  options.flags = UV_PROCESS_DETACHED;
  process_.data = this;
  int rc = uv_spawn(loop_, &process_, &options);
  // uv_spawn initialises the handle even when it fails; it must be closed either way.
  process_open_ = true;
  ++open_handles_;
  if (rc != 0) {
    ++spawn_failures_;
    spawn_failed_ = true;
    spdlog::error("exec source '{}': cannot run '{}': {}; trying again in {}", ctx_->name(),
                  config_.command, uv_strerror(rc), formatDuration(config_.restart_throttle));
    closeHandle(reinterpret_cast<uv_handle_t*>(&process_));
    closeHandle(reinterpret_cast<uv_handle_t*>(&stdout_pipe_));
    if (stderr_open_) closeHandle(reinterpret_cast<uv_handle_t*>(&stderr_pipe_));
    return;  // the close callbacks end the run and schedule the retry
  }
  child_running_ = true;
  child_pid_ = process_.pid;
  counters_.process_start->inc();
  spdlog::info("exec source '{}': started '{}' (pid {})", ctx_->name(), config_.command,
               child_pid_);
  if (stderr_open_) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(&stderr_pipe_), &ExecSource::allocStderr,
                  &ExecSource::readStderr);
  }
  if (!blocked_) resumeReading();
}

void ExecSource::onLine(std::string_view line) {
  if (current_.empty()) {
    uv_timer_start(
        &batch_timer_, [](uv_timer_t* t) { static_cast<ExecSource*>(t->data)->offerCurrent(); },
        static_cast<uint64_t>(config_.batch_timeout.count()), 0);
  }
  current_.add(line, chunk_ts_);
  if (current_.size() >= config_.batch_size) offerCurrent();
}

void ExecSource::feedStdout(std::string_view chunk) {
  chunk_ts_ = nowNs();
  splitter_.feed(chunk, static_cast<LineSink&>(*this));
  syncSplitterCounters();
}

void ExecSource::flushSplitter() {
  chunk_ts_ = nowNs();
  splitter_.flush(static_cast<LineSink&>(*this));
  syncSplitterCounters();
}

void ExecSource::syncSplitterCounters() {
  if (splitter_.splitCount() != seen_split_) {
    counters_.lines_split->inc(splitter_.splitCount() - seen_split_);
    seen_split_ = splitter_.splitCount();
  }
  if (splitter_.truncatedCount() != seen_truncated_) {
    counters_.lines_truncated->inc(splitter_.truncatedCount() - seen_truncated_);
    seen_truncated_ = splitter_.truncatedCount();
  }
}

void ExecSource::offerCurrent() {
  if (current_.empty()) return;
  uv_timer_stop(&batch_timer_);
  if (blocked_) {
    park();
    return;
  }
  if (ctx_->offer(current_) == OfferResult::Accepted) {
    current_.clear();
    return;
  }
  park();
  blocked_ = true;
  pauseReading();
}

void ExecSource::park() {
  parked_.push_back(std::move(current_));
  current_ = Batch();
}

void ExecSource::pauseReading() {
  if (!reading_) return;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&stdout_pipe_));
  reading_ = false;
}

void ExecSource::resumeReading() {
  if (reading_ || !stdout_open_ || uv_is_closing(reinterpret_cast<uv_handle_t*>(&stdout_pipe_))) {
    return;
  }
  uv_read_start(reinterpret_cast<uv_stream_t*>(&stdout_pipe_), &ExecSource::allocStdout,
                &ExecSource::readStdout);
  reading_ = true;
}

void ExecSource::resume() {
  if (!started_ || stopping_ || !blocked_) return;
  while (!parked_.empty()) {
    if (ctx_->offer(parked_.front()) == OfferResult::Full) return;
    parked_.pop_front();
  }
  blocked_ = false;
  // The current batch, if any, still has its batch timer running.
  resumeReading();
}

void ExecSource::onStdoutEnd() {
  pauseReading();
  flushSplitter();
  offerCurrent();
  closeHandle(reinterpret_cast<uv_handle_t*>(&stdout_pipe_));
}

void ExecSource::onStderrEnd() {
  stderr_splitter_.flush([this](std::string_view line) { logStderr(line); });
  if (uint64_t left_out = stderr_limiter_.takeSuppressed(); left_out > 0) {
    spdlog::warn("exec source '{}': {} more stderr lines were not logged (rate limit)",
                 ctx_->name(), left_out);
  }
  closeHandle(reinterpret_cast<uv_handle_t*>(&stderr_pipe_));
}

void ExecSource::logStderr(std::string_view line) {
  if (!stderr_limiter_.allow(uv_now(loop_))) {
    counters_.stderr_suppressed->inc();
    return;
  }
  if (uint64_t left_out = stderr_limiter_.takeSuppressed(); left_out > 0) {
    spdlog::warn("exec source '{}': {} stderr lines were not logged (more than {} a second)",
                 ctx_->name(), left_out, kStderrLinesPerSecond);
  }
  spdlog::warn("exec source '{}': stderr: {}", ctx_->name(), line);
}

void ExecSource::onExit(int64_t exit_status, int term_signal) {
  child_running_ = false;
  counters_.process_exit->inc();
  const std::string& name = ctx_->name();
  if (term_signal != 0) {
    if (stopping_) {
      spdlog::info("exec source '{}': pid {} ended by signal {} at stop", name, child_pid_,
                   term_signal);
    } else {
      spdlog::warn("exec source '{}': pid {} killed by signal {}", name, child_pid_, term_signal);
    }
  } else if (exit_status == 0) {
    spdlog::info("exec source '{}': pid {} exited with status 0", name, child_pid_);
  } else {
    spdlog::warn("exec source '{}': pid {} exited with status {}", name, child_pid_, exit_status);
  }
  child_pid_ = 0;
  closeHandle(reinterpret_cast<uv_handle_t*>(&process_));
  if (stopping_) closeHandle(reinterpret_cast<uv_handle_t*>(&kill_timer_));
}

void ExecSource::maybeRunFinished() {
  if (run_active_ && !child_running_ && !process_open_ && !stdout_open_ && !stderr_open_) {
    onRunFinished();
  }
}

void ExecSource::onRunFinished() {
  run_active_ = false;
  offerCurrent();  // normally already done at end of stdout
  if (spawn_failed_ || config_.restart) {
    if (!spawn_failed_) {
      spdlog::info("exec source '{}': running '{}' again in {}", ctx_->name(), config_.command,
                   formatDuration(config_.restart_throttle));
    }
    uv_timer_start(
        &restart_timer_,
        [](uv_timer_t* t) {
          auto* self = static_cast<ExecSource*>(t->data);
          if (!self->stopping_) self->spawnChild();
        },
        static_cast<uint64_t>(config_.restart_throttle.count()), 0);
  } else {
    spdlog::info("exec source '{}': command finished; restart is off", ctx_->name());
  }
}

void ExecSource::killChild(int signal) {
  if (!child_running_) return;
  // The child leads its own process group: signal the group, then the child itself in case
  // it left the group.
  if (child_pid_ > 0) uv_kill(-child_pid_, signal);
  uv_process_kill(&process_, signal);
}

void ExecSource::stop(std::function<void()> done) {
  if (stopping_) {
    spdlog::error("exec source: stop() called twice; ignored");
    return;
  }
  stopping_ = true;
  if (!started_) {
    done();
    return;
  }
  done_ = std::move(done);
  const std::string& name = ctx_->name();

  uv_timer_stop(&batch_timer_);
  uv_timer_stop(&restart_timer_);
  pauseReading();
  if (stderr_open_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&stderr_pipe_));
    stderr_splitter_.flush([this](std::string_view line) { logStderr(line); });
  }

  // What was read so far, including an unfinished last line, is offered once more.
  flushSplitter();
  if (!current_.empty()) park();
  uint64_t dropped = 0;
  bool refused = false;
  while (!parked_.empty()) {
    if (!refused && ctx_->offer(parked_.front()) == OfferResult::Accepted) {
      parked_.pop_front();
      continue;
    }
    refused = true;
    dropped += parked_.front().size();
    parked_.pop_front();
  }
  blocked_ = false;
  if (dropped > 0) {
    counters_.dropped->inc(dropped);
    spdlog::error("exec source '{}': dropping {} events at stop: the channels refused them", name,
                  dropped);
  }

  if (child_running_) {
    killChild(SIGTERM);
    uv_timer_start(
        &kill_timer_,
        [](uv_timer_t* t) {
          auto* self = static_cast<ExecSource*>(t->data);
          spdlog::warn("exec source '{}': pid {} still running after SIGTERM; sending SIGKILL",
                       self->ctx_->name(), self->child_pid_);
          self->killChild(SIGKILL);
        },
        static_cast<uint64_t>(kill_grace_.count()), 0);
  } else {
    closeHandle(reinterpret_cast<uv_handle_t*>(&kill_timer_));
    if (process_open_) closeHandle(reinterpret_cast<uv_handle_t*>(&process_));
  }
  closeHandle(reinterpret_cast<uv_handle_t*>(&batch_timer_));
  closeHandle(reinterpret_cast<uv_handle_t*>(&restart_timer_));
  if (stdout_open_) closeHandle(reinterpret_cast<uv_handle_t*>(&stdout_pipe_));
  if (stderr_open_) closeHandle(reinterpret_cast<uv_handle_t*>(&stderr_pipe_));
  // done runs from the last close callback; there is always at least one pending (the timers).
}

bool ExecSource::idle() const {
  if (!started_) return true;
  return !run_active_ && !uv_is_active(reinterpret_cast<const uv_handle_t*>(&restart_timer_)) &&
         parked_.empty() && current_.empty();
}

size_t ExecSource::heldEvents() const {
  size_t n = current_.size();
  for (const auto& b : parked_) n += b.size();
  return n;
}

void ExecSource::closeHandle(uv_handle_t* handle) {
  if (!uv_is_closing(handle)) uv_close(handle, &ExecSource::closeCallback);
}

void ExecSource::onClosed(uv_handle_t* handle) {
  --open_handles_;
  if (handle == reinterpret_cast<uv_handle_t*>(&process_)) {
    process_open_ = false;
  } else if (handle == reinterpret_cast<uv_handle_t*>(&stdout_pipe_)) {
    stdout_open_ = false;
    reading_ = false;
  } else if (handle == reinterpret_cast<uv_handle_t*>(&stderr_pipe_)) {
    stderr_open_ = false;
  }
  if (stopping_) {
    if (open_handles_ == 0 && done_) {
      // done may destroy this source: nothing may touch `this` after it.
      auto done = std::move(done_);
      done_ = nullptr;
      done();
    }
    return;
  }
  maybeRunFinished();
}

void ExecSource::allocStdout(uv_handle_t* handle, size_t, uv_buf_t* buf) {
  auto* self = static_cast<ExecSource*>(handle->data);
  *buf = uv_buf_init(self->stdout_buf_.data(), static_cast<unsigned>(self->stdout_buf_.size()));
}

void ExecSource::allocStderr(uv_handle_t* handle, size_t, uv_buf_t* buf) {
  auto* self = static_cast<ExecSource*>(handle->data);
  *buf = uv_buf_init(self->stderr_buf_.data(), static_cast<unsigned>(self->stderr_buf_.size()));
}

void ExecSource::readStdout(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<ExecSource*>(stream->data);
  if (nread > 0) {
    self->counters_.bytes_read->inc(static_cast<uint64_t>(nread));
    self->feedStdout(std::string_view(buf->base, static_cast<size_t>(nread)));
  } else if (nread < 0) {
    if (nread != UV_EOF) {
      spdlog::warn("exec source '{}': reading stdout: {}", self->ctx_->name(),
                   uv_strerror(static_cast<int>(nread)));
    }
    self->onStdoutEnd();
  }
}

void ExecSource::readStderr(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<ExecSource*>(stream->data);
  if (nread > 0) {
    self->stderr_splitter_.feed(std::string_view(buf->base, static_cast<size_t>(nread)),
                                [self](std::string_view line) { self->logStderr(line); });
  } else if (nread < 0) {
    self->onStderrEnd();
  }
}

void ExecSource::exitCallback(uv_process_t* process, int64_t exit_status, int term_signal) {
  static_cast<ExecSource*>(process->data)->onExit(exit_status, term_signal);
}

void ExecSource::closeCallback(uv_handle_t* handle) {
  static_cast<ExecSource*>(handle->data)->onClosed(handle);
}

void registerExecSource(Registry& registry) {
  registry.addSource<ExecConfig>(
      "exec", "Runs a command and turns each line of its stdout into an event", execOptionTable(),
      [](const ExecConfig& config, const BuildContext&) -> SourcePtr {
        return std::make_unique<ExecSource>(config);
      });
}

}  // namespace sluice

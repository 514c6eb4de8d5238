#include "sources/exec/exec_source.h"
#include "../log_capture.h"
#include "source_fixture.h"

#include <doctest/doctest.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace sluice {
namespace {

using test::FakeSourceContext;
using test::LogCapture;
using test::TestLoop;

ExecConfig config(std::string command) {
  ExecConfig c;
  c.command = std::move(command);
  c.restart = false;
  c.restart_throttle = Millis(10);
  return c;
}

std::vector<std::string> numbers(int from, int to) {
  std::vector<std::string> out;
  for (int i = from; i <= to; ++i) out.push_back(std::to_string(i));
  return out;
}

// Stops the source, waits for done and runs on 5 ms; returns how many times done was called.
int stopAndLinger(TestLoop& loop, Source& source) { return test::stopAndWait(loop, source, 5); }

using Lines = std::vector<std::string>;

TEST_CASE("exec: three lines, the last one unterminated") {
  LogCapture log;
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecSource src(config("printf 'a\\nb\\nc'"));
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
  CHECK(ctx.bodies == Lines{"a", "b", "c"});
  CHECK(ctx.count("ProcessStartCount") == 1);
  CHECK(ctx.count("BytesReadCount") == 5);
  CHECK(log.contains("info exec source 'exec_test': pid"));
  CHECK(log.contains("exited with status 0"));
  // restart is off: the source stays finished.
  loop.runFor(30);
  CHECK(ctx.count("ProcessStartCount") == 1);
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: seq 1 100000 arrives complete, in order, in batches of batch_size") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("seq 1 100000");
  c.batch_size = 1000;
  c.batch_timeout = Millis(3600000);
  ExecSource src(c);
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
  CHECK(ctx.bodies.size() == 100000);
  CHECK(ctx.bodies == numbers(1, 100000));
  CHECK(ctx.batch_sizes == std::vector<size_t>(100, 1000));
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: a refusing channel pauses the child; resume delivers everything") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("seq 1 200000");  // 1288895 bytes: far more than the pipe holds
  c.batch_size = 100;
  ExecSource src(c);
  ctx.refuse = true;
  src.start(ctx);

  // Given a channel that refuses, reading stops after the first refused batch...
  CHECK(loop.runUntil([&] { return ctx.refused >= 1; }));
  loop.runFor(200);
  // ...so the source holds at most one read chunk, and the child is blocked on its pipe.
  CHECK(ctx.refused == 1);
  CHECK(ctx.bodies.empty());
  CHECK(ctx.count("BytesReadCount") <= 64 * 1024);
  CHECK(src.heldEvents() >= 100);
  CHECK(src.heldEvents() <= 64 * 1024 / 2);
  CHECK(ctx.count("ProcessExitCount") == 0);

  // When room comes back, everything arrives, in order, exactly once.
  ctx.refuse = false;
  src.resume();
  CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
  CHECK(ctx.bodies.size() == 200000);
  CHECK(ctx.bodies == numbers(1, 200000));
  CHECK(*std::max_element(ctx.batch_sizes.begin(), ctx.batch_sizes.end()) <= 100);
  CHECK(ctx.count("BytesReadCount") == 1288895);
  CHECK(ctx.count("DroppedEventCount") == 0);
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: a channel that refuses every other offer loses and duplicates nothing") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("seq 1 50000");
  c.batch_size = 64;
  c.batch_timeout = Millis(1);  // partial batches also go through the parked path
  ExecSource src(c);
  ctx.refuse_every = 2;
  ctx.source = &src;
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
  CHECK(ctx.refused > 10);
  CHECK(ctx.bodies == numbers(1, 50000));
  CHECK(*std::max_element(ctx.batch_sizes.begin(), ctx.batch_sizes.end()) <= 64);
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: restart runs the command again after the throttle") {
  LogCapture log;
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("echo x");
  c.restart = true;
  c.restart_throttle = Millis(10);
  ExecSource src(c);
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.bodies.size() >= 3; }));
  CHECK(ctx.count("ProcessStartCount") >= 3);
  CHECK(ctx.count("ProcessExitCount") >= 2);
  CHECK(std::all_of(ctx.bodies.begin(), ctx.bodies.end(), [](auto& b) { return b == "x"; }));
  CHECK(log.contains("running 'echo x' again in 10ms"));
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: stop terminates a running child and calls done once") {
  LogCapture log;
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("sleep 60");
  c.restart = true;
  ExecSource src(c);
  src.start(ctx);
  CHECK(ctx.count("ProcessStartCount") == 1);
  loop.runFor(20);
  CHECK(ctx.count("ProcessExitCount") == 0);
  // SIGKILL only comes after 5s: a prompt done proves SIGTERM did the job.
  int done_calls = 0;
  src.stop([&] { ++done_calls; });
  CHECK(loop.runUntil([&] { return done_calls > 0; }, 3000));
  loop.runFor(20);
  CHECK(done_calls == 1);
  CHECK(ctx.count("ProcessExitCount") == 1);
  CHECK(ctx.count("ProcessStartCount") == 1);  // no restart after stop
  CHECK(log.contains("ended by signal 15 at stop"));
}

TEST_CASE("exec: a child that ignores SIGTERM gets SIGKILL after the grace period") {
  LogCapture log;
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  // An ignored signal stays ignored across exec, so sleep ignores SIGTERM too.
  ExecSource src(config("trap '' TERM; echo armed-$((40+2)) >&2; sleep 60"));
  src.setKillGrace(Millis(50));
  src.start(ctx);
  // Stop only once the shell has installed its trap (stderr lines are logged).
  REQUIRE(loop.runUntil([&] { return log.contains("armed-42"); }, 5000));
  int done_calls = 0;
  src.stop([&] { ++done_calls; });
  CHECK(loop.runUntil([&] { return done_calls > 0; }, 3000));
  CHECK(done_calls == 1);
  INFO(log.text());
  CHECK(log.contains("still running after SIGTERM; sending SIGKILL"));
  CHECK(log.contains("ended by signal 9 at stop"));
}

TEST_CASE("exec: stop kills a whole shell pipeline") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecSource src(config("sleep 60 | cat; echo after"));
  src.start(ctx);
  loop.runFor(20);
  int done_calls = 0;
  src.stop([&] { ++done_calls; });
  CHECK(loop.runUntil([&] { return done_calls > 0; }, 3000));
  CHECK(done_calls == 1);
}

TEST_CASE("exec: the source may be destroyed from done while `yes` floods it") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("yes");
  c.batch_size = 500;
  auto src = std::make_unique<ExecSource>(c);
  src->start(ctx);
  CHECK(loop.runUntil([&] { return ctx.bodies.size() >= 5000; }));
  int done_calls = 0;
  src->stop([&] {
    ++done_calls;
    src.reset();
  });
  CHECK(loop.runUntil([&] { return done_calls > 0; }, 3000));
  loop.runFor(20);
  CHECK(done_calls == 1);
  CHECK(src == nullptr);
  CHECK(ctx.count("DroppedEventCount") == 0);
  CHECK(std::all_of(ctx.bodies.begin(), ctx.bodies.end(), [](auto& b) { return b == "y"; }));
}

TEST_CASE("exec: events refused at stop are counted and logged as dropped") {
  LogCapture log;
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("yes");
  c.batch_size = 100;
  ExecSource src(c);
  ctx.refuse = true;
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.refused >= 1; }));
  size_t held = src.heldEvents();
  CHECK(held >= 100);
  CHECK(stopAndLinger(loop, src) == 1);
  // The parked events, plus at most one unfinished line read so far.
  CHECK(ctx.count("DroppedEventCount") >= held);
  CHECK(ctx.count("DroppedEventCount") <= held + 1);
  CHECK(log.contains("error exec source 'exec_test': dropping " +
                     std::to_string(ctx.count("DroppedEventCount")) + " events at stop"));
  CHECK(ctx.bodies.empty());
}

TEST_CASE("exec: stop offers the partial batch and the unfinished line") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("printf 'one\\ntw'; exec sleep 60");
  c.batch_timeout = Millis(3600000);
  ExecSource src(c);
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.count("BytesReadCount") == 6; }));
  CHECK(ctx.bodies.empty());
  CHECK(stopAndLinger(loop, src) == 1);
  CHECK(ctx.bodies == Lines{"one", "tw"});
  CHECK(ctx.count("DroppedEventCount") == 0);
}

TEST_CASE("exec: batch_timeout offers a partial batch while the child runs") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("echo a; exec sleep 60");
  c.batch_timeout = Millis(10);
  ExecSource src(c);
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.bodies.size() == 1; }));
  CHECK(ctx.bodies == Lines{"a"});
  CHECK(ctx.count("ProcessExitCount") == 0);
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: a command that cannot be spawned is logged and retried") {
  LogCapture log;
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("/nonexistent/sluice-no-such-command --flag");
  c.shell = false;
  c.restart = false;  // spawn failures are retried anyway: the command never ran
  ExecSource src(c);
  src.start(ctx);
  CHECK(loop.runUntil([&] { return src.spawnFailures() >= 3; }));
  CHECK(ctx.count("ProcessStartCount") == 0);
  CHECK(ctx.count("ProcessExitCount") == 0);
  CHECK(
      log.contains("error exec source 'exec_test': cannot run "
                   "'/nonexistent/sluice-no-such-command --flag'"));
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: an unknown command through the shell exits 127 and its stderr is logged") {
  LogCapture log;
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecSource src(config("sluice-no-such-command-xyz"));
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
  CHECK(ctx.bodies.empty());
  CHECK(log.contains("warning exec source 'exec_test': stderr: "));
  CHECK(log.contains("sluice-no-such-command-xyz"));
  CHECK(log.contains("warning exec source 'exec_test': pid"));
  CHECK(log.contains("exited with status 127"));
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: stderr is logged per line, or discarded") {
  for (bool log_stderr : {true, false}) {
    LogCapture log;
    TestLoop loop;
    FakeSourceContext ctx(loop.get(), "exec_test");
    ExecConfig c = config("echo err1 >&2; echo out; printf 'err2' >&2");
    c.log_stderr = log_stderr;
    ExecSource src(c);
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
    CHECK(ctx.bodies == Lines{"out"});
    CHECK(log.contains("warning exec source 'exec_test': stderr: err1") == log_stderr);
    CHECK(log.contains("warning exec source 'exec_test': stderr: err2") == log_stderr);
    CHECK(stopAndLinger(loop, src) == 1);
  }
}

TEST_CASE("exec: a flood of stderr is logged within a rate limit and the rest counted") {
  LogCapture log;
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig c = config("i=0; while [ $i -lt 5000 ]; do echo \"noise $i\" >&2; i=$((i+1)); done");
  c.restart = false;
  ExecSource src(c);
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
  uint64_t suppressed = ctx.count("StderrLinesSuppressedCount");
  size_t logged = log.count("stderr: noise ");
  INFO("logged " << logged << ", suppressed " << suppressed);
  // The burst (100) plus what the rate refills while the loop runs; far below 5000.
  CHECK(logged >= 100);
  CHECK(logged < 1000);
  CHECK(logged + suppressed == 5000);
  CHECK(log.contains("stderr lines were not logged (rate limit)"));
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: long lines are split or truncated and counted") {
  for (const char* policy : {"split", "truncate"}) {
    TestLoop loop;
    FakeSourceContext ctx(loop.get(), "exec_test");
    ExecConfig c = config("printf 'abcdefgh\\r\\n12\\r\\nabcdefghij'");
    c.max_line_bytes = 4;
    c.on_long_line = policy;
    ExecSource src(c);
    src.start(ctx);
    CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
    if (std::string(policy) == "split") {
      CHECK(ctx.bodies == Lines{"abcd", "efgh", "12", "abcd", "efgh", "ij"});
      CHECK(ctx.count("LinesSplitCount") == 3);
      CHECK(ctx.count("LinesTruncatedCount") == 0);
    } else {
      CHECK(ctx.bodies == Lines{"abcd", "12", "abcd"});
      CHECK(ctx.count("LinesSplitCount") == 0);
      CHECK(ctx.count("LinesTruncatedCount") == 2);
    }
    CHECK(stopAndLinger(loop, src) == 1);
  }
}

TEST_CASE("exec: without shell the command is split on whitespace") {
  ExecConfig c = config("  printf   %s\\n\tx y ");
  c.shell = false;
  CHECK(execArgv(c) == Lines{"printf", "%s\\n", "x", "y"});
  c.shell = true;
  CHECK(execArgv(c) == Lines{"/bin/sh", "-c", "  printf   %s\\n\tx y "});

  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "exec_test");
  ExecConfig d = config("printf %s\\n x 'y'");
  d.shell = false;
  ExecSource src(d);
  src.start(ctx);
  CHECK(loop.runUntil([&] { return ctx.count("ProcessExitCount") == 1 && src.idle(); }));
  CHECK(ctx.bodies == Lines{"x", "'y'"});  // no quoting without a shell
  CHECK(stopAndLinger(loop, src) == 1);
}

TEST_CASE("exec: stop before start and destruction without start are safe") {
  ExecSource never_started(config("true"));
  int done_calls = 0;
  never_started.stop([&] { ++done_calls; });
  CHECK(done_calls == 1);
  ExecSource untouched(config("true"));
}

TEST_CASE("exec: option table parses values, applies defaults and reports errors") {
  Registry registry;
  registerExecSource(registry);
  const ComponentType* type = registry.find(Kind::Source, "exec");
  REQUIRE(type != nullptr);
  auto no_env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };

  {
    Diagnostics diag;
    ConfigReader reader(diag, no_env);
    auto parsed = type->parse(YAML::Load("{command: 'tail -F /x'}"), reader, "sources.e");
    CHECK_FALSE(diag.hasErrors());
    ExecConfig cfg = std::any_cast<ExecConfig>(parsed);
    CHECK(cfg.command == "tail -F /x");
    CHECK(cfg.shell);
    CHECK(cfg.batch_size == 1000);
    CHECK(cfg.batch_timeout == Millis(1000));
    CHECK(cfg.max_line_bytes == 1024 * 1024);
    CHECK(cfg.on_long_line == "split");
    CHECK(cfg.restart);
    CHECK(cfg.restart_throttle == Millis(10000));
    CHECK(cfg.log_stderr);
    BuildContext build;
    CHECK(type->make_source(parsed, build) != nullptr);
    CHECK(type->equal(parsed, parsed));
  }
  {
    Diagnostics diag;
    ConfigReader reader(diag, no_env);
    auto parsed =
        type->parse(YAML::Load("{command: x, shell: false, batch_size: 5, batch_timeout: 250ms, "
                               "max_line_bytes: 4KiB, on_long_line: truncate, restart: false, "
                               "restart_throttle: 1s, log_stderr: false}"),
                    reader, "sources.e");
    CHECK_FALSE(diag.hasErrors());
    ExecConfig cfg = std::any_cast<ExecConfig>(parsed);
    CHECK_FALSE(cfg.shell);
    CHECK(cfg.batch_size == 5);
    CHECK(cfg.batch_timeout == Millis(250));
    CHECK(cfg.max_line_bytes == 4096);
    CHECK(cfg.on_long_line == "truncate");
    CHECK_FALSE(cfg.restart);
    CHECK(cfg.restart_throttle == Millis(1000));
    CHECK_FALSE(cfg.log_stderr);
  }
  {
    Diagnostics diag;
    ConfigReader reader(diag, no_env);
    type->parse(YAML::Load("{batch_size: 0, on_long_line: trunc, max_line_bytes: 65MiB, "
                           "batch_timeout: 0, restart_throttle: 0s}"),
                reader, "sources.e");
    std::string text = diag.format();
    CHECK(diag.all().size() == 6);
    CHECK(text.find("sources.e.restart_throttle") != std::string::npos);
    CHECK(text.find("missing required key 'command'") != std::string::npos);
    CHECK(text.find("sources.e.batch_size") != std::string::npos);
    INFO(text);
    CHECK(text.find("'trunc' is not one of split, truncate") != std::string::npos);
    CHECK(text.find("sources.e.max_line_bytes") != std::string::npos);
    CHECK(text.find("sources.e.batch_timeout") != std::string::npos);
  }
}

}  // namespace
}  // namespace sluice

// The parts of /health and of the log that can be judged without a running agent: the stall
// watch of a sink group and the journal priority prefix of log lines.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>
#include <string>

#include "agent/health.h"
#include "agent/logging.h"

namespace sluice {
namespace {

TEST_CASE("health: a sink group stalls only while events wait and nothing is delivered") {
  StallWatch w;
  CHECK(w.update(1000, 0, 0) == 0);
  CHECK(w.update(5000, 0, 0) == 0);      // nothing waits: never stalled
  CHECK(w.update(6000, 10, 0) == 1000);  // waiting since the last time nothing waited
  CHECK(w.update(9000, 20, 0) == 4000);
  CHECK(w.update(9500, 20, 5) == 0);  // something was delivered: the wait starts again
  CHECK(w.update(9700, 15, 5) == 200);
  CHECK(w.update(9800, 0, 5) == 0);
  CHECK(w.update(9900, 3, 5) == 100);
}

TEST_CASE("health: each sink group instance is watched by its own commits, retiring ones too") {
  // Given a group draining a retired channel and its successor of the same name.
  int old_group = 0, new_group = 0;
  StallWatches w;
  auto feed = [&](uint64_t now, uint64_t old_commit, uint64_t new_commit) {
    w.update(now, {{&old_group, "g", "sink_group", "c", true, 10, old_commit},
                   {&new_group, "g", "sink_group", "c", false, 10, new_commit}});
  };
  auto waited = [&](const void* instance) { return w.entries().at(instance).waited_ms; };
  feed(1000, 0, 0);

  // When only the retiring one commits, the successor still stalls.
  feed(5000, 4000, 0);
  feed(9000, 8000, 0);
  CHECK(waited(&old_group) == 0);
  CHECK(waited(&new_group) == 8000);

  // And a retiring group stuck behind a dead sink stalls too, named as retiring.
  feed(15000, 8000, 14000);
  CHECK(waited(&old_group) == 6000);
  CHECK(w.entries().at(&old_group).group.retiring);
  CHECK(waited(&new_group) == 0);

  // Then an instance that is gone is forgotten, and a new one at its address starts afresh.
  w.update(16000, {{&new_group, "g", "sink_group", "c", false, 10, 14000}});
  CHECK(w.entries().count(&old_group) == 0);
  w.forget(&new_group);
  w.update(17000, {{&new_group, "g", "sink_group", "c", false, 10, 0}});
  CHECK(waited(&new_group) == 0);
}

TEST_CASE("logging: under the journal every line starts with its syslog priority") {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  spdlog::logger logger("journal_test", sink);
  logger.set_level(spdlog::level::trace);
  sink->set_formatter(makeLogFormatter(true));
  logger.error("disk full");
  logger.warn("slow");
  logger.info("started");
  logger.debug("detail");
  logger.critical("abort");
  CHECK(out.str() ==
        "<3>error disk full\n<4>warning slow\n<6>info started\n<7>debug detail\n"
        "<2>critical abort\n");
  out.str("");
  logger.error("drain timeout:\nchannel a: 3 lost\nchannel b: 1 kept");
  CHECK(out.str() == "<3>error drain timeout:\n<3>channel a: 3 lost\n<3>channel b: 1 kept\n");

  std::ostringstream plain;
  auto plain_sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(plain);
  spdlog::logger plain_logger("plain_test", plain_sink);
  plain_sink->set_formatter(makeLogFormatter(false));
  plain_logger.error("disk full");
  CHECK(plain.str().find("<3>") == std::string::npos);
  CHECK(plain.str().find(" error disk full") != std::string::npos);
}

TEST_CASE("logging: JOURNAL_STREAM counts only when it names the descriptor") {
  char path[] = "/tmp/sluice-log-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  struct stat st {};
  REQUIRE(fstat(fd, &st) == 0);
  std::string mine = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  std::string other = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1);
  CHECK(isJournalStream(mine.c_str(), fd));
  CHECK_FALSE(isJournalStream(other.c_str(), fd));  // stderr was redirected elsewhere
  CHECK_FALSE(isJournalStream(nullptr, fd));
  CHECK_FALSE(isJournalStream("garbage", fd));
  close(fd);
  unlink(path);
}

}  // namespace
}  // namespace sluice

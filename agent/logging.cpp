#include "agent/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>

namespace sluice {

namespace {

// %* in the pattern: "<N>", the message's syslog priority.
class PriorityFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    char buf[4] = {'<', static_cast<char>('0' + journalPriority(msg.level)), '>', 0};
    dest.append(buf, buf + 3);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<PriorityFlag>();
  }
};

// Under the journal every line is a record of its own: a message with line breaks gets the
// priority prefix on each of its lines, not only the first.
class JournalFormatter final : public spdlog::formatter {
 public:
  JournalFormatter() { inner_.add_flag<PriorityFlag>('*').set_pattern("%*%l %v"); }
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    spdlog::memory_buf_t line;
    inner_.format(msg, line);
    char prefix[3] = {'<', static_cast<char>('0' + journalPriority(msg.level)), '>'};
    for (size_t i = 0; i < line.size(); ++i) {
      dest.push_back(line[i]);
      if (line[i] == '\n' && i + 1 < line.size()) dest.append(prefix, prefix + 3);
    }
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JournalFormatter>();
  }

 private:
  spdlog::pattern_formatter inner_;
};

}  // namespace

int journalPriority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::critical:
      return 2;
    case spdlog::level::err:
      return 3;
    case spdlog::level::warn:
      return 4;
    case spdlog::level::info:
      return 6;
    default:
      return 7;
  }
}

bool isJournalStream(const char* journal_stream, int fd) {
  if (journal_stream == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(journal_stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  if (fstat(fd, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev &&
         static_cast<unsigned long long>(st.st_ino) == ino;
}

std::unique_ptr<spdlog::formatter> makeLogFormatter(bool journal) {
  if (journal) return std::make_unique<JournalFormatter>();
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  return f;
}

void setUpLogging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("sluice");
  bool journal = isJournalStream(std::getenv("JOURNAL_STREAM"), 2);
  logger->set_formatter(makeLogFormatter(journal));
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::flush_on(spdlog::level::info);
}

}  // namespace sluice

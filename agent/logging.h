#pragma once
// The agent's log: stderr only (stdout belongs to the stdout sink).
//
// On a terminal or a plain file each line is "time level message". When stderr is the systemd
// journal's stream (JOURNAL_STREAM names stderr's device and inode, as systemd sets it for
// StandardError=journal), each line starts with the kernel-style priority prefix "<N>" that
// journald turns into the entry's PRIORITY, so `journalctl -p err` finds the errors; the
// journal keeps its own timestamps, so the line carries none.

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace sluice {

// The syslog priority of a log level (err = 3, warning = 4, info = 6, debug = 7).
int journalPriority(spdlog::level::level_enum level);

// Whether JOURNAL_STREAM ("device:inode") names the file descriptor `fd`.
bool isJournalStream(const char* journal_stream, int fd);

// The formatter of the agent's log lines; `journal` adds the "<N>" prefix and drops the time.
std::unique_ptr<spdlog::formatter> makeLogFormatter(bool journal);

// Sets up the default logger on stderr at `level` (spdlog's level names).
void setUpLogging(const std::string& level);

}  // namespace sluice

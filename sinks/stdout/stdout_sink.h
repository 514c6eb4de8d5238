#pragma once
// The `stdout` sink: writes events to the agent's standard output, one per line, as the body
// alone (text) or as a JSON object with timestamp, headers and body (json).

#include <unistd.h>

#include <string>

#include "agent/registry.h"

namespace sluice {

struct StdoutConfig {
  std::string format;
  bool operator==(const StdoutConfig&) const = default;
};

// Appends the JSON line of one event (with '\n'). Invalid UTF-8 in the body or headers is
// replaced by U+FFFD so the output is always valid JSON; returns true when that happened (the
// sink counts such events in InvalidUtf8EventCount).
bool appendJsonLine(std::string& out, const EventView& event);

// The sink, writing to `fd` (standard output; tests pass a file).
SinkPtr makeStdoutSink(const StdoutConfig& cfg, int fd = STDOUT_FILENO);

void registerStdoutSink(Registry& registry);

}  // namespace sluice

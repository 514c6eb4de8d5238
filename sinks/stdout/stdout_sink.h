#pragma once
// The `stdout` sink: writes events to the agent's standard output, one per line, as the body
// alone (text) or as a JSON object with timestamp, headers and body (json).

#include <string>

#include "agent/registry.h"

namespace sluice {

struct StdoutConfig {
  std::string format;
  bool operator==(const StdoutConfig&) const = default;
};

// Appends the JSON line of one event (with '\n'). Invalid UTF-8 in the body or headers is
// replaced by U+FFFD so the output is always valid JSON.
void appendJsonLine(std::string& out, const EventView& event);

void registerStdoutSink(Registry& registry);

}  // namespace sluice

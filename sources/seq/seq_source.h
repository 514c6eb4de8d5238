#pragma once
// The `seq` source: numbers 1, 2, 3... as event bodies (Flume's sequence generator). For tests,
// benchmarks and smoke checks of a pipeline. It keeps its position in the channels' durable
// positions, so with a file channel it resumes after a crash exactly where the channel's data
// ends: no number lost, none put twice.

#include "agent/registry.h"

namespace sluice {
void registerSeqSource(Registry& registry);
}  // namespace sluice

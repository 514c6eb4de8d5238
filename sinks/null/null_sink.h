#pragma once
// The `null` sink: acknowledges and discards every event. For benchmarks and for draining.

#include "agent/registry.h"

namespace sluice {
void registerNullSink(Registry& registry);
}  // namespace sluice

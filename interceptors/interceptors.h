#pragma once
// The built-in interceptors: host, timestamp, static, remove_header, regex_filter,
// regex_extractor, uuid. Each is small and runs on the loop thread, on a whole batch.

#include "agent/registry.h"

namespace sluice {

void registerInterceptors(Registry& registry);

// A random (version 4) UUID in its canonical 36-character text form.
std::string randomUuid();

}  // namespace sluice

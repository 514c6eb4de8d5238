#pragma once
// Renders the option tables: `sluice schema` and docs/CONFIGURATION.md come from here.

#include <string>

#include "agent/registry.h"

namespace sluice {

enum class SchemaFormat { Text, Markdown, Json };
// `only`: just the sections of that component type (`kafka`) or section (`agent`,
// `sink_groups`); empty: all. Returns "" when nothing matches.
std::string renderSchema(const Registry& registry, SchemaFormat format,
                         const std::string& only = "");

}  // namespace sluice

#pragma once
// Renders the option tables: `sluice schema` and docs/CONFIGURATION.md come from here.

#include <string>

#include "agent/registry.h"

namespace sluice {

enum class SchemaFormat { Text, Markdown, Json };
std::string renderSchema(const Registry& registry, SchemaFormat format);

}  // namespace sluice

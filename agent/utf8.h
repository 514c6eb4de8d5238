#pragma once
// UTF-8 validation, shared by the sinks that write JSON.

#include <string_view>

namespace sluice {

// True when `s` is well-formed UTF-8 as Unicode defines it (Table 3-7: no overlong forms, no
// surrogates, nothing above U+10FFFF, no truncated sequence). These are exactly the strings
// nlohmann::json dumps without its error handler: a sink that dumps with
// error_handler_t::replace replaces bytes with U+FFFD in a string if and only if this is false.
bool isValidUtf8(std::string_view s);

}  // namespace sluice

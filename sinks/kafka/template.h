#pragma once
// Templates for the Kafka sink's topic and key: literal text with `%{header}` (the value of an
// event header, empty when absent) and strftime-style `%Y %m %d %H %M %S` of the event time in
// UTC; `%%` is a literal percent sign. Compiled once at config load, rendered per event on the
// loop thread.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/event.h"

namespace sluice {

class EventTemplate {
 public:
  EventTemplate() = default;
  // Compiles `text`; on failure returns nullopt and sets `error` (an unknown %-sequence, an
  // unterminated %{...}).
  static std::optional<EventTemplate> compile(const std::string& text, std::string& error);

  // Appends the rendering of `event` to out (cleared first).
  void render(const EventView& event, std::string& out) const;
  bool isLiteral() const { return literal_; }
  bool empty() const { return parts_.empty(); }
  const std::string& source() const { return source_; }

 private:
  enum class Kind : uint8_t { Text, Header, Year, Month, Day, Hour, Minute, Second };
  struct Part {
    Kind kind;
    std::string text;  // Text: the literal; Header: the header name
  };
  std::vector<Part> parts_;
  std::string source_;
  bool literal_ = true;
};

// Kafka's rule for topic names: 1..249 characters of [a-zA-Z0-9._-], not "." or "..".
bool isValidTopicName(std::string_view name);

}  // namespace sluice

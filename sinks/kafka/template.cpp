#include "sinks/kafka/template.h"

#include <ctime>

namespace sluice {

std::optional<EventTemplate> EventTemplate::compile(const std::string& text, std::string& error) {
  EventTemplate t;
  t.source_ = text;
  std::string literal;
  auto flush = [&] {
    if (!literal.empty()) t.parts_.push_back({Kind::Text, std::move(literal)});
    literal.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      literal += text[i];
      continue;
    }
    if (i + 1 >= text.size()) {
      error = "'%' at the end of the template (write %% for a literal percent sign)";
      return std::nullopt;
    }
    char c = text[++i];
    Kind kind;
    switch (c) {
      case '%':
        literal += '%';
        continue;
      case '{': {
        size_t close = text.find('}', i + 1);
        if (close == std::string::npos) {
          error = "unterminated %{ at column " + std::to_string(i);
          return std::nullopt;
        }
        std::string name = text.substr(i + 1, close - i - 1);
        if (name.empty()) {
          error = "empty header name in %{}";
          return std::nullopt;
        }
        flush();
        t.parts_.push_back({Kind::Header, std::move(name)});
        t.literal_ = false;
        i = close;
        continue;
      }
      case 'Y':
        kind = Kind::Year;
        break;
      case 'm':
        kind = Kind::Month;
        break;
      case 'd':
        kind = Kind::Day;
        break;
      case 'H':
        kind = Kind::Hour;
        break;
      case 'M':
        kind = Kind::Minute;
        break;
      case 'S':
        kind = Kind::Second;
        break;
      default:
        error = std::string("unknown sequence '%") + c +
                "' (known: %{header}, %Y, %m, %d, %H, %M, %S, %%)";
        return std::nullopt;
    }
    flush();
    t.parts_.push_back({kind, {}});
    t.literal_ = false;
  }
  flush();
  return t;
}

namespace {
void appendTwo(std::string& out, int v) {
  out += static_cast<char>('0' + (v / 10) % 10);
  out += static_cast<char>('0' + v % 10);
}
}  // namespace

void EventTemplate::render(const EventView& event, std::string& out) const {
  out.clear();
  std::tm tm{};
  bool have_tm = false;
  for (const auto& p : parts_) {
    if (p.kind == Kind::Text) {
      out += p.text;
      continue;
    }
    if (p.kind == Kind::Header) {
      if (auto v = event.header(p.text)) out.append(v->data(), v->size());
      continue;
    }
    if (!have_tm) {
      int64_t ns = event.timestampNs();
      std::time_t secs = static_cast<std::time_t>(ns / 1'000'000'000);
      if (ns < 0 && ns % 1'000'000'000 != 0) --secs;  // floor, not truncation
      gmtime_r(&secs, &tm);
      have_tm = true;
    }
    switch (p.kind) {
      case Kind::Year:
        out += std::to_string(tm.tm_year + 1900);
        break;
      case Kind::Month:
        appendTwo(out, tm.tm_mon + 1);
        break;
      case Kind::Day:
        appendTwo(out, tm.tm_mday);
        break;
      case Kind::Hour:
        appendTwo(out, tm.tm_hour);
        break;
      case Kind::Minute:
        appendTwo(out, tm.tm_min);
        break;
      case Kind::Second:
        appendTwo(out, tm.tm_sec);
        break;
      default:
        break;
    }
  }
}

bool isValidTopicName(std::string_view name) {
  if (name.empty() || name.size() > 249 || name == "." || name == "..") return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace sluice

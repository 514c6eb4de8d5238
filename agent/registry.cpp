#include "agent/registry.h"

namespace sluice {

const char* kindName(Kind kind) {
  switch (kind) {
    case Kind::Source:
      return "source";
    case Kind::Channel:
      return "channel";
    case Kind::Sink:
      return "sink";
    case Kind::Interceptor:
      return "interceptor";
  }
  return "?";
}

const char* metricKind(Kind kind) {
  switch (kind) {
    case Kind::Source:
      return "SOURCE";
    case Kind::Channel:
      return "CHANNEL";
    case Kind::Sink:
      return "SINK";
    case Kind::Interceptor:
      return "INTERCEPTOR";
  }
  return "?";
}

const ComponentType* Registry::find(Kind kind, const std::string& name) const {
  for (const auto& t : types_) {
    if (t.kind == kind && t.name == name) return &t;
  }
  return nullptr;
}

std::vector<std::string> Registry::names(Kind kind) const {
  std::vector<std::string> out;
  for (const auto& t : types_) {
    if (t.kind == kind) out.push_back(t.name);
  }
  return out;
}

}  // namespace sluice

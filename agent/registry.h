#pragma once
// The registry of component types. Each type brings its option table, a parser that fills its
// typed config, an equality (so a reload keeps what did not change) and a factory. Types are
// listed explicitly in registerBuiltins (builtins.cpp); nothing registers itself.

#include <any>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "agent/channel.h"
#include "agent/interceptor.h"
#include "agent/options.h"
#include "agent/sink.h"
#include "agent/source.h"

namespace sluice {

enum class Kind { Source, Channel, Sink, Interceptor };
// "source", "channel", "sink"
const char* kindName(Kind kind);
// "SOURCE", "CHANNEL", "SINK": the metric prefix Flume uses.
const char* metricKind(Kind kind);

struct AgentSettings {
  std::string name;
  std::string data_dir;
  std::string status;  // host:port of the status server; empty: off
  Millis drain_timeout{};
  Millis watchdog_interval{};
  Millis stall_after{};  // /health fails a sink group that delivered nothing this long
  bool operator==(const AgentSettings&) const = default;
};

// Cross-key checks of a parsed config that an option table cannot express (option combinations,
// templates, pass-through maps). Each error is (key, message), where key is an option key or
// "option.entry" for an entry of a map option; the config loader reports it at that key in the
// file (else at the component) under the component's path. Empty when the config is good.
using ConfigErrors = std::vector<std::pair<std::string, std::string>>;
template <class Cfg>
using ConfigValidator = std::function<ConfigErrors(const Cfg&)>;

// What a factory gets besides its own config.
struct BuildContext {
  std::string name;
  uv_loop_t* loop = nullptr;
  const AgentSettings* agent = nullptr;
  MetricSetPtr metrics;
};

struct ComponentType {
  Kind kind = Kind::Source;
  std::string name;
  std::string help;
  std::vector<OptionInfo> options;
  std::function<std::any(const YAML::Node&, ConfigReader&, const std::string&)> parse;
  std::function<bool(const std::any&, const std::any&)> equal;
  // Run by the config loader after parse; empty: the option table is the whole validation.
  std::function<ConfigErrors(const std::any&)> validate;
  std::function<SourcePtr(const std::any&, const BuildContext&)> make_source;
  std::function<ChannelPtr(const std::any&, const BuildContext&)> make_channel;
  std::function<SinkPtr(const std::any&, const BuildContext&)> make_sink;
  std::function<InterceptorPtr(const std::any&, const BuildContext&)> make_interceptor;
  // Applies a changed config to a live channel without losing what it holds; false when the
  // change needs a new channel. Empty: never in place.
  std::function<bool(Channel&, const std::any&)> reconfigure_channel;
};

class Registry {
 public:
  template <class Cfg>
  void addSource(std::string name, std::string help, OptionTable<Cfg> table,
                 std::function<SourcePtr(const Cfg&, const BuildContext&)> make,
                 ConfigValidator<Cfg> validate = {}) {
    auto t = base<Cfg>(Kind::Source, std::move(name), std::move(help), std::move(table));
    setValidate(t, std::move(validate));
    t.make_source = [make](const std::any& c, const BuildContext& b) {
      return make(std::any_cast<const Cfg&>(c), b);
    };
    types_.push_back(std::move(t));
  }
  template <class Cfg, class C>
  void addChannel(std::string name, std::string help, OptionTable<Cfg> table,
                  std::function<std::shared_ptr<C>(const Cfg&, const BuildContext&)> make,
                  std::function<bool(C&, const Cfg&)> reconfigure = {},
                  ConfigValidator<Cfg> validate = {}) {
    auto t = base<Cfg>(Kind::Channel, std::move(name), std::move(help), std::move(table));
    setValidate(t, std::move(validate));
    t.make_channel = [make](const std::any& c, const BuildContext& b) -> ChannelPtr {
      return make(std::any_cast<const Cfg&>(c), b);
    };
    if (reconfigure) {
      t.reconfigure_channel = [reconfigure](Channel& ch, const std::any& c) {
        auto* typed = dynamic_cast<C*>(&ch);
        return typed && reconfigure(*typed, std::any_cast<const Cfg&>(c));
      };
    }
    types_.push_back(std::move(t));
  }
  template <class Cfg>
  void addSink(std::string name, std::string help, OptionTable<Cfg> table,
               std::function<SinkPtr(const Cfg&, const BuildContext&)> make,
               ConfigValidator<Cfg> validate = {}) {
    auto t = base<Cfg>(Kind::Sink, std::move(name), std::move(help), std::move(table));
    setValidate(t, std::move(validate));
    t.make_sink = [make](const std::any& c, const BuildContext& b) {
      return make(std::any_cast<const Cfg&>(c), b);
    };
    types_.push_back(std::move(t));
  }

  template <class Cfg>
  void addInterceptor(std::string name, std::string help, OptionTable<Cfg> table,
                      std::function<InterceptorPtr(const Cfg&, const BuildContext&)> make) {
    auto t = base<Cfg>(Kind::Interceptor, std::move(name), std::move(help), std::move(table));
    t.make_interceptor = [make](const std::any& c, const BuildContext& b) {
      return make(std::any_cast<const Cfg&>(c), b);
    };
    types_.push_back(std::move(t));
  }

  const ComponentType* find(Kind kind, const std::string& name) const;
  std::vector<std::string> names(Kind kind) const;
  const std::vector<ComponentType>& all() const { return types_; }

 private:
  template <class Cfg>
  static ComponentType base(Kind kind, std::string name, std::string help, OptionTable<Cfg> table) {
    ComponentType t;
    t.kind = kind;
    t.name = std::move(name);
    t.help = std::move(help);
    t.options = table.describe();
    t.parse = [table](const YAML::Node& node, ConfigReader& reader, const std::string& path) {
      Cfg cfg{};
      table.fill(node, cfg, reader, path);
      return std::any(cfg);
    };
    t.equal = [](const std::any& a, const std::any& b) {
      return std::any_cast<const Cfg&>(a) == std::any_cast<const Cfg&>(b);
    };
    return t;
  }
  template <class Cfg>
  static void setValidate(ComponentType& t, ConfigValidator<Cfg> validate) {
    if (!validate) return;
    t.validate = [validate = std::move(validate)](const std::any& c) {
      return validate(std::any_cast<const Cfg&>(c));
    };
  }

  std::vector<ComponentType> types_;
};

// Lists every built-in component type. Defined in builtins.cpp.
void registerBuiltins(Registry& registry);

}  // namespace sluice

#include "agent/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

namespace sluice {

const OptionTable<AgentSettings>& agentTable() {
  static const OptionTable<AgentSettings> table = [] {
    OptionTable<AgentSettings> t;
    t.string("name", &AgentSettings::name, "",
             "Name of this agent, reported in metrics and logs; empty means the host name.");
    t.path("data_dir", &AgentSettings::data_dir, "/var/lib/sluice",
           "Directory for durable state (file channels, positions); must be writable, or "
           "creatable, by the agent's user.");
    t.string("status", &AgentSettings::status, "",
             "host:port of the status server (/metrics, /metrics.json, /health); a bare :port "
             "listens on 127.0.0.1; empty turns it off.");
    t.duration("drain_timeout", &AgentSettings::drain_timeout, "30s", Millis(0), Millis(86'400'000),
               "On SIGTERM, how long sinks may keep draining channels before the agent exits.");
    t.duration("watchdog_interval", &AgentSettings::watchdog_interval, "0", Millis(0),
               Millis(3'600'000),
               "Interval of systemd watchdog pings; 0 means half of systemd's WatchdogSec.");
    t.duration("stall_after", &AgentSettings::stall_after, "60s", Millis(1000), Millis(86'400'000),
               "/health answers 503 for a sink group whose channel holds events for it while its "
               "sinks delivered none for this long.");
    return t;
  }();
  return table;
}

const OptionTable<SourceCommon>& sourceCommonTable() {
  static const OptionTable<SourceCommon> table = [] {
    OptionTable<SourceCommon> t;
    t.requiredString("type", &SourceCommon::type, "Source type.");
    t.list("channels", &SourceCommon::channels, true,
           "Channels every event of this source is put into (all or none).");
    return t;
  }();
  return table;
}

const OptionTable<ChannelCommon>& channelCommonTable() {
  static const OptionTable<ChannelCommon> table = [] {
    OptionTable<ChannelCommon> t;
    t.requiredString("type", &ChannelCommon::type, "Channel type.");
    return t;
  }();
  return table;
}

const OptionTable<SinkCommon>& sinkCommonTable() {
  static const OptionTable<SinkCommon> table = [] {
    OptionTable<SinkCommon> t;
    t.requiredString("type", &SinkCommon::type, "Sink type.");
    t.requiredString("channel", &SinkCommon::channel, "The channel this sink drains.");
    t.integer("batch_size", &SinkCommon::batch_size, 1000, 1, 1'000'000,
              "Most events taken from the channel per delivery.");
    t.size("batch_max_bytes", &SinkCommon::batch_max_bytes, "4MiB", 1, 1ull << 30,
           "Most bytes taken per delivery (a single larger event is still taken alone).");
    t.duration("backoff_min", &SinkCommon::backoff_min, "100ms", Millis(1), Millis(3'600'000),
               "First wait after a failed delivery; doubles per consecutive failure.");
    t.duration("backoff_max", &SinkCommon::backoff_max, "30s", Millis(1), Millis(86'400'000),
               "Longest wait between delivery attempts.");
    return t;
  }();
  return table;
}

const OptionTable<GroupCommon>& groupTable() {
  static const OptionTable<GroupCommon> table = [] {
    OptionTable<GroupCommon> t;
    t.choice("processor", &GroupCommon::processor, {"failover", "load_balance"}, "failover",
             "failover: the first live sink in list order gets every batch; load_balance: live "
             "sinks take turns (round robin).");
    t.choice("balance", &GroupCommon::balance, {"round_robin", "random"}, "round_robin",
             "load_balance: take turns in list order, or pick a random live sink per batch.");
    t.list("sinks", &GroupCommon::sinks, true,
           "Sinks of the group, in priority order; all must drain the same channel.");
    t.duration("penalty_min", &GroupCommon::penalty_min, "1s", Millis(1), Millis(3'600'000),
               "How long a failing sink is first set aside; doubles per consecutive failure.");
    t.duration("penalty_max", &GroupCommon::penalty_max, "30s", Millis(1), Millis(86'400'000),
               "Longest time a failing sink is set aside.");
    return t;
  }();
  return table;
}

const OptionTable<SelectorSpec>& selectorTable() {
  static const OptionTable<SelectorSpec> table = [] {
    OptionTable<SelectorSpec> t;
    t.choice("type", &SelectorSpec::type, {"replicating", "multiplexing"}, "replicating",
             "replicating: every event to every channel of the source; multiplexing: each event "
             "to the channels its header value maps to.");
    t.string("header", &SelectorSpec::header, "",
             "multiplexing: the header whose value picks the channels.");
    t.listMap("mapping", &SelectorSpec::mapping,
              "multiplexing: header value -> channels (each among the source's channels).");
    t.list("default", &SelectorSpec::default_channels, false,
           "multiplexing: channels for events whose value is missing or not mapped.");
    t.list("optional", &SelectorSpec::optional, false,
           "Channels whose refusal (full) does not fail the put; the event is counted in "
           "OptionalChannelFullCount instead. The others are all-or-nothing.");
    return t;
  }();
  return table;
}

const ChannelSpec* Config::channel(const std::string& name) const {
  for (const auto& c : channels) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

const SinkSpec* Config::sink(const std::string& name) const {
  for (const auto& s : sinks) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

EnvLookup processEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  };
}

std::vector<std::string> findCycle(const std::vector<std::pair<std::string, std::string>>& edges) {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& [from, to] : edges) {
    out[from].push_back(to);
    out[to];
  }
  enum { White, Grey, Black };
  std::map<std::string, int> color;
  std::vector<std::string> stack;
  std::vector<std::string> cycle;
  std::function<bool(const std::string&)> visit = [&](const std::string& n) {
    color[n] = Grey;
    stack.push_back(n);
    for (const auto& next : out[n]) {
      if (color[next] == Grey) {
        auto it = std::find(stack.begin(), stack.end(), next);
        cycle.assign(it, stack.end());
        cycle.push_back(next);
        return true;
      }
      if (color[next] == White && visit(next)) return true;
    }
    stack.pop_back();
    color[n] = Black;
    return false;
  };
  for (const auto& [n, _] : out) {
    if (color[n] == White && visit(n)) return cycle;
  }
  return {};
}

namespace {

template <class T>
std::vector<std::string> joinKeys(const std::vector<std::string>& a, const OptionTable<T>& t) {
  auto out = a;
  for (const auto& k : t.keys()) out.push_back(k);
  return out;
}

bool validName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) {
      return false;
    }
  }
  return true;
}

// Where a validator's key ("option" or "option.entry", see ConfigErrors) is in the component's
// mapping; the component itself when the key is not written there. (Read-only: assigning a
// YAML::Node that is defined rebinds the document's node.)
Location locationOfKey(const YAML::Node& body, const std::string& key) {
  std::string first = key.substr(0, key.find('.'));
  if (!body.IsMap() || !body[first].IsDefined()) return locationOf(body);
  const YAML::Node at = body[first];
  if (key.size() > first.size() && at.IsMap()) {
    const YAML::Node entry = at[key.substr(first.size() + 1)];
    if (entry.IsDefined()) return locationOf(entry);
  }
  return locationOf(at);
}

// Parses one component: its shared keys through `common`, its own through its type's table.
template <class Spec, class Common>
std::optional<Spec> parseComponent(Kind kind, const std::string& section, const YAML::Node& key,
                                   const YAML::Node& body, const OptionTable<Common>& common,
                                   const Registry& registry, ConfigReader& reader,
                                   const std::vector<std::string>& extra_keys) {
  Spec spec;
  spec.name = key.Scalar();
  spec.where = locationOf(key);
  std::string path = section + "." + spec.name;
  if (!validName(spec.name)) {
    reader.diag().error(spec.where, path,
                        "component names use letters, digits, '_', '-' and '.' only");
  }
  if (!body.IsMap()) {
    reader.diag().error(locationOf(body), path, "expected a mapping with at least 'type'");
    return std::nullopt;
  }
  common.fill(body, spec.common, reader, path);
  // YAML reads `type: null` as a null value, not the word; the null sink is spelled that way.
  if (body["type"].IsDefined() && body["type"].IsNull()) spec.common.type = "null";
  if (spec.common.type.empty()) return std::nullopt;
  spec.type = registry.find(kind, spec.common.type);
  if (!spec.type) {
    auto names = registry.names(kind);
    std::string msg = "unknown " + std::string(kindName(kind)) + " type '" + spec.common.type + "'";
    auto near = nearest(spec.common.type, names);
    if (!near.empty()) msg += " (did you mean '" + near + "'?)";
    std::string all;
    for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
    msg += "; known types: " + all;
    reader.diag().error(locationOf(body["type"]), path + ".type", msg);
    // Still report typos, but not the options of the type the user meant: only keys that no
    // type of this kind knows.
    auto known = common.keys();
    known.insert(known.end(), extra_keys.begin(), extra_keys.end());
    for (const auto& t : registry.all()) {
      if (t.kind != kind) continue;
      for (const auto& o : t.options) known.push_back(o.key);
    }
    checkKeys(body, known, reader, path);
    return std::nullopt;
  }
  std::vector<std::string> known = common.keys();
  known.insert(known.end(), extra_keys.begin(), extra_keys.end());
  for (const auto& o : spec.type->options) known.push_back(o.key);
  checkKeys(body, known, reader, path);
  size_t before = reader.diag().all().size();
  spec.config = spec.type->parse(body, reader, path);
  if (spec.type->validate) {
    // A key whose value was already refused is left at its default; the validator's view of it
    // (an empty list, say) would only repeat the first error.
    std::set<std::string> refused;
    const auto& items = reader.diag().all();
    for (size_t i = before; i < items.size(); ++i) {
      auto rest = items[i].path.substr(std::min(items[i].path.size(), path.size() + 1));
      refused.insert(rest.substr(0, rest.find_first_of(".[")));
    }
    for (const auto& [k, msg] : spec.type->validate(spec.config)) {
      if (refused.count(k.substr(0, k.find('.')))) continue;
      reader.diag().error(locationOfKey(body, k), path + "." + k, msg);
    }
  }
  return spec;
}

template <class Spec, class Common>
void parseSection(Kind kind, const std::string& section, const YAML::Node& node,
                  const OptionTable<Common>& common, const Registry& registry, ConfigReader& reader,
                  std::vector<Spec>& out, const std::vector<std::string>& extra_keys = {}) {
  if (!node.IsDefined() || node.IsNull()) return;
  if (!node.IsMap()) {
    reader.diag().error(locationOf(node), section, "expected a mapping of names to components");
    return;
  }
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (!seen.insert(kv.first.Scalar()).second) {
      reader.diag().error(locationOf(kv.first), section + "." + kv.first.Scalar(),
                          "duplicate " + std::string(kindName(kind)) + " name");
      continue;
    }
    auto spec = parseComponent<Spec>(kind, section, kv.first, kv.second, common, registry, reader,
                                     extra_keys);
    if (spec) out.push_back(std::move(*spec));
  }
}

// A source's interceptors (a list of typed steps) and its selector.
void parseSourceExtras(const YAML::Node& sources, const Registry& registry, ConfigReader& reader,
                       std::vector<SourceSpec>& specs) {
  for (auto& spec : specs) {
    YAML::Node body = sources[spec.name];
    std::string path = "sources." + spec.name;
    YAML::Node sel = body["selector"];
    if (sel.IsDefined() && !sel.IsNull()) {
      if (checkKeys(sel, selectorTable().keys(), reader, path + ".selector")) {
        selectorTable().fill(sel, spec.selector, reader, path + ".selector");
      }
    } else {
      selectorTable().fill(YAML::Node(YAML::NodeType::Map), spec.selector, reader,
                           path + ".selector");
    }
    YAML::Node list = body["interceptors"];
    if (!list.IsDefined() || list.IsNull()) continue;
    if (!list.IsSequence()) {
      reader.diag().error(locationOf(list), path + ".interceptors",
                          "expected a list of interceptors, each a mapping with a type");
      continue;
    }
    auto names = registry.names(Kind::Interceptor);
    for (size_t i = 0; i < list.size(); ++i) {
      YAML::Node item = list[i];
      std::string ipath = path + ".interceptors[" + std::to_string(i) + "]";
      if (!item.IsMap() || !item["type"].IsDefined() || !item["type"].IsScalar()) {
        reader.diag().error(locationOf(item), ipath, "expected a mapping with at least 'type'");
        continue;
      }
      std::string type = item["type"].Scalar();
      const ComponentType* t = registry.find(Kind::Interceptor, type);
      if (!t) {
        std::string msg = "unknown interceptor type '" + type + "'";
        auto near = nearest(type, names);
        if (!near.empty()) msg += " (did you mean '" + near + "'?)";
        std::string all;
        for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
        reader.diag().error(locationOf(item["type"]), ipath + ".type",
                            msg + "; known types: " + all);
        continue;
      }
      std::vector<std::string> known{"type"};
      for (const auto& o : t->options) known.push_back(o.key);
      checkKeys(item, known, reader, ipath);
      InterceptorSpec is;
      is.name = type;
      is.where = locationOf(item);
      is.type = t;
      is.config = t->parse(item, reader, ipath);
      spec.interceptors.push_back(std::move(is));
    }
  }
}

void checkSelector(const SourceSpec& s, Diagnostics& diag) {
  const auto& sel = s.selector;
  std::string path = "sources." + s.name + ".selector";
  auto listed = [&](const std::string& ch) {
    return std::find(s.common.channels.begin(), s.common.channels.end(), ch) !=
           s.common.channels.end();
  };
  auto check = [&](const std::vector<std::string>& chans, const std::string& key) {
    for (const auto& ch : chans) {
      if (!listed(ch)) {
        diag.error(s.where, path + "." + key,
                   "channel '" + ch + "' is not among the source's channels");
      }
    }
  };
  check(sel.optional, "optional");
  if (sel.type == "replicating") {
    if (!sel.header.empty() || !sel.mapping.empty() || !sel.default_channels.empty()) {
      diag.error(s.where, path,
                 "header, mapping and default are for type: multiplexing; this selector is "
                 "replicating");
    }
    if (sel.optional.size() >= s.common.channels.size() && !s.common.channels.empty()) {
      diag.warning(s.where, path + ".optional",
                   "every channel is optional: events refused by all of them are counted, "
                   "not kept");
    }
    return;
  }
  if (sel.header.empty()) diag.error(s.where, path, "multiplexing needs 'header'");
  if (sel.mapping.empty() && sel.default_channels.empty()) {
    diag.error(s.where, path, "multiplexing needs a 'mapping', a 'default', or both");
  }
  check(sel.default_channels, "default");
  for (const auto& [value, chans] : sel.mapping) check(chans, "mapping." + value);
}

void checkWiring(Config& cfg, Diagnostics& diag) {
  std::set<std::string> channel_names;
  for (const auto& c : cfg.channels) channel_names.insert(c.name);
  std::vector<std::string> channel_list(channel_names.begin(), channel_names.end());
  std::vector<std::pair<std::string, std::string>> edges;
  std::set<std::string> written, read;

  auto missingChannel = [&](Location where, const std::string& path, const std::string& name) {
    std::string msg = "channel '" + name + "' is not defined in channels";
    auto near = nearest(name, channel_list);
    if (!near.empty()) msg += " (did you mean '" + near + "'?)";
    diag.error(where, path, msg);
  };

  for (const auto& s : cfg.sources) {
    checkSelector(s, diag);
    std::set<std::string> listed;
    for (const auto& ch : s.common.channels) {
      if (!channel_names.count(ch)) missingChannel(s.where, "sources." + s.name + ".channels", ch);
      if (!listed.insert(ch).second) {
        diag.error(s.where, "sources." + s.name + ".channels", "channel '" + ch + "' listed twice");
      }
      written.insert(ch);
      edges.push_back({"source " + s.name, "channel " + ch});
    }
  }
  std::map<std::string, std::string> sink_channel;
  std::vector<std::string> sink_names;
  for (const auto& s : cfg.sinks) {
    sink_names.push_back(s.name);
    sink_channel[s.name] = s.common.channel;
    if (!channel_names.count(s.common.channel)) {
      missingChannel(s.where, "sinks." + s.name + ".channel", s.common.channel);
    }
    read.insert(s.common.channel);
    if (s.common.backoff_min > s.common.backoff_max) {
      diag.error(s.where, "sinks." + s.name + ".backoff_min", "must not exceed backoff_max");
    }
  }
  std::map<std::string, std::string> group_of_sink;
  for (const auto& g : cfg.groups) {
    std::string path = "sink_groups." + g.name;
    std::string channel;
    for (const auto& sink : g.common.sinks) {
      if (!sink_channel.count(sink)) {
        std::string msg = "sink '" + sink + "' is not defined in sinks";
        auto near = nearest(sink, sink_names);
        if (!near.empty()) msg += " (did you mean '" + near + "'?)";
        diag.error(g.where, path + ".sinks", msg);
        continue;
      }
      if (group_of_sink.count(sink)) {
        diag.error(g.where, path + ".sinks",
                   "sink '" + sink + "' is already in group '" + group_of_sink[sink] +
                       "'; a sink belongs to one group");
        continue;
      }
      group_of_sink[sink] = g.name;
      if (channel.empty()) {
        channel = sink_channel[sink];
      } else if (channel != sink_channel[sink]) {
        diag.error(g.where, path + ".sinks",
                   "all sinks of a group drain one channel: '" + sink + "' drains '" +
                       sink_channel[sink] + "', others drain '" + channel + "'");
      }
      edges.push_back({"channel " + sink_channel[sink], "group " + g.name});
      edges.push_back({"group " + g.name, "sink " + sink});
    }
    if (sink_channel.count(g.name) && !group_of_sink.count(g.name)) {
      diag.error(g.where, path, "a group may not share its name with a sink outside it");
    }
    if (g.common.penalty_min > g.common.penalty_max) {
      diag.error(g.where, path + ".penalty_min", "must not exceed penalty_max");
    }
  }
  // A sink that no group lists is a group of one, named after the sink.
  for (const auto& s : cfg.sinks) {
    if (group_of_sink.count(s.name)) continue;
    GroupSpec g;
    g.name = s.name;
    g.where = s.where;
    g.implicit = true;
    g.common.processor = "failover";
    g.common.balance = "round_robin";
    g.common.sinks = {s.name};
    g.common.penalty_min = s.common.backoff_min;
    g.common.penalty_max = s.common.backoff_max;
    for (const auto& e : cfg.groups) {
      if (e.name == s.name) {
        diag.error(e.where, "sink_groups." + e.name,
                   "a group may not share its name with a sink outside it");
      }
    }
    edges.push_back({"channel " + s.common.channel, "group " + g.name});
    edges.push_back({"group " + g.name, "sink " + s.name});
    cfg.groups.push_back(std::move(g));
  }
  for (const auto& c : cfg.channels) {
    if (!read.count(c.name)) {
      diag.error(c.where, "channels." + c.name,
                 "no sink drains this channel; its events would pile up until it is full");
    } else if (!written.count(c.name)) {
      diag.warning(c.where, "channels." + c.name, "no source writes to this channel");
    }
  }
  auto cycle = findCycle(edges);
  if (!cycle.empty()) {
    std::string path;
    for (const auto& n : cycle) path += (path.empty() ? "" : " -> ") + n;
    diag.error({}, "", "the pipeline has a cycle: " + path);
  }
  if (cfg.sources.empty() && cfg.sinks.empty()) {
    diag.warning({}, "", "the configuration defines no sources and no sinks; the agent idles");
  }
}

// yaml-cpp's message for `brokers: [${KAFKA}]` says nothing of the cause: in a flow list or
// mapping, `{` and `}` are YAML's own, so a ${VAR} there must be quoted.
std::string syntaxHint(const std::string& text, const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return "";
  size_t start = 0;
  for (int l = 0; l < mark.line && start != std::string::npos; ++l) {
    start = text.find('\n', start);
    if (start != std::string::npos) ++start;
  }
  if (start == std::string::npos) return "";
  std::string line = text.substr(start, text.find('\n', start) - start);
  if (line.find("${") == std::string::npos || line.find_first_of("[{") == std::string::npos) {
    return "";
  }
  return " (inside [ ] or { }, quote a ${VAR}: ['${VAR}'])";
}

}  // namespace

namespace {

// The whole of loadConfigText but the verdict: the Config as far as it could be read (the
// file-system checks of loadConfigFile still look at it), or nullopt when not even that.
std::optional<Config> parseConfig(const std::string& text, const std::string& file,
                                  const Registry& registry, Diagnostics& diag, EnvLookup env) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    Location where;
    if (!e.mark.is_null()) where = {e.mark.line + 1, e.mark.column + 1};
    diag.error(where, "", "YAML syntax: " + e.msg + syntaxHint(text, e.mark));
    return std::nullopt;
  }
  ConfigReader reader(diag, std::move(env));
  if (!file.empty()) {
    std::error_code ec;
    auto dir = std::filesystem::absolute(file, ec).parent_path();
    if (!ec) reader.setBaseDir(dir.lexically_normal().string());
  }
  Config cfg;
  cfg.file = file;
  if (root.IsNull() || !root.IsDefined()) {
    root = YAML::Node(YAML::NodeType::Map);
  }
  if (!checkKeys(root, {"agent", "sources", "channels", "sinks", "sink_groups"}, reader, "")) {
    return std::nullopt;
  }
  YAML::Node agent = root["agent"];
  if (agent.IsMap() && agent["data_dir"].IsDefined())
    cfg.data_dir_at = locationOf(agent["data_dir"]);
  if (agent.IsDefined() && !agent.IsNull()) {
    if (checkKeys(agent, agentTable().keys(), reader, "agent")) {
      agentTable().fill(agent, cfg.agent, reader, "agent");
      // Empty (`data_dir: ""`, or an unset ${VAR:-}): state would go to /channels/<name>.
      if (agent["data_dir"].IsDefined() && cfg.agent.data_dir.empty()) {
        reader.diag().error(cfg.data_dir_at, "agent.data_dir", "must not be empty");
      }
    }
  } else {
    agentTable().fill(YAML::Node(YAML::NodeType::Map), cfg.agent, reader, "agent");
  }
  if (cfg.agent.name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    cfg.agent.name = host;
  }

  parseSection(Kind::Source, "sources", root["sources"], sourceCommonTable(), registry, reader,
               cfg.sources, {"interceptors", "selector"});
  parseSourceExtras(root["sources"], registry, reader, cfg.sources);
  parseSection(Kind::Channel, "channels", root["channels"], channelCommonTable(), registry, reader,
               cfg.channels);
  parseSection(Kind::Sink, "sinks", root["sinks"], sinkCommonTable(), registry, reader, cfg.sinks);

  YAML::Node groups = root["sink_groups"];
  if (groups.IsDefined() && !groups.IsNull()) {
    if (!groups.IsMap()) {
      diag.error(locationOf(groups), "sink_groups", "expected a mapping of names to groups");
    } else {
      for (const auto& kv : groups) {
        GroupSpec g;
        g.name = kv.first.Scalar();
        g.where = locationOf(kv.first);
        std::string path = "sink_groups." + g.name;
        if (!validName(g.name)) {
          diag.error(g.where, path, "group names use letters, digits, '_', '-' and '.' only");
        }
        if (checkKeys(kv.second, groupTable().keys(), reader, path)) {
          groupTable().fill(kv.second, g.common, reader, path);
          cfg.groups.push_back(std::move(g));
        }
      }
    }
  }
  checkWiring(cfg, diag);
  return cfg;
}

}  // namespace

std::optional<Config> loadConfigText(const std::string& text, const std::string& file,
                                     const Registry& registry, Diagnostics& diag, EnvLookup env) {
  auto cfg = parseConfig(text, file, registry, diag, std::move(env));
  if (diag.hasErrors()) return std::nullopt;
  return cfg;
}

std::optional<Config> loadConfigFile(const std::string& path, const Registry& registry,
                                     Diagnostics& diag, EnvLookup env) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    diag.error({}, "", "cannot read the configuration file: it is a directory");
    return std::nullopt;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    diag.error({}, "", "cannot read the configuration file: " + std::string(std::strerror(errno)));
    return std::nullopt;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto cfg = parseConfig(ss.str(), path, registry, diag, std::move(env));
  if (!cfg) return cfg;
  bool refused = std::any_of(diag.all().begin(), diag.all().end(),
                             [](const Diagnostic& d) { return d.path == "agent.data_dir"; });
  if (!refused) checkDataDir(cfg->agent.data_dir, cfg->data_dir_at, diag);
  if (diag.hasErrors()) return std::nullopt;
  return cfg;
}

void checkDataDir(const std::string& dir, Location where, Diagnostics& diag) {
  const std::string path = "agent.data_dir";
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      diag.error(where, path, "'" + dir + "' is not a directory");
    } else if (::faccessat(AT_FDCWD, dir.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
      diag.error(where, path,
                 "'" + dir + "' is not writable by this user (uid " + std::to_string(::geteuid()) +
                     "): " + std::strerror(errno));
    }
    return;
  }
  if (errno != ENOENT && errno != ENOTDIR) {
    diag.error(where, path, "cannot use '" + dir + "': " + std::strerror(errno));
    return;
  }
  // Missing: the components create it, so the nearest existing ancestor must let them.
  std::filesystem::path p(dir);
  while (p.has_relative_path() && p.has_parent_path() && p != p.parent_path()) {
    p = p.parent_path();
    if (::stat(p.c_str(), &st) != 0) continue;
    if (!S_ISDIR(st.st_mode) || ::faccessat(AT_FDCWD, p.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
      std::string msg = "'" + dir + "' does not exist and cannot be created: '" + p.string() +
                        "' is not a directory this user (uid " + std::to_string(::geteuid()) +
                        ") can write";
      // The default directory missing is a developer's run of a demo, not a service (systemd's
      // StateDirectory creates it): only the components that keep state there would fail.
      if (where.line == 0) {
        diag.warning(where, path,
                     msg +
                         "; file channels, positions and dead letters would fail to open "
                         "(set agent.data_dir)");
      } else {
        diag.error(where, path, msg);
      }
    }
    return;
  }
}

}  // namespace sluice

#pragma once
// The agent's configuration: one YAML file with the sections agent, sources, channels, sinks
// and sink_groups. Loading returns a Config or fills Diagnostics with every problem
// (syntax, unknown keys, bad values, wiring), each with file:line:column and key path.

#include <any>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/diagnostics.h"
#include "agent/options.h"
#include "agent/registry.h"

namespace sluice {

struct SourceCommon {
  std::string type;
  std::vector<std::string> channels;
  bool operator==(const SourceCommon&) const = default;
};

struct ChannelCommon {
  std::string type;
  bool operator==(const ChannelCommon&) const = default;
};

struct SinkCommon {
  std::string type;
  std::string channel;
  uint64_t batch_size = 0;
  uint64_t batch_max_bytes = 0;
  Millis backoff_min{};
  Millis backoff_max{};
  bool operator==(const SinkCommon&) const = default;
};

struct GroupCommon {
  std::string processor;
  std::string balance;
  std::vector<std::string> sinks;
  Millis penalty_min{};
  Millis penalty_max{};
  bool operator==(const GroupCommon&) const = default;
};

struct ComponentSpec {
  std::string name;
  Location where;
  const ComponentType* type = nullptr;
  std::any config;
  bool sameConfig(const ComponentSpec& other) const {
    return type == other.type && type && type->equal(config, other.config);
  }
};

struct InterceptorSpec : ComponentSpec {
  bool operator==(const InterceptorSpec& o) const { return sameConfig(o); }
};

// Which of a source's channels an event goes to.
struct SelectorSpec {
  std::string type;    // replicating | multiplexing
  std::string header;  // multiplexing: the header whose value picks the channels
  std::map<std::string, std::vector<std::string>> mapping;
  std::vector<std::string> default_channels;  // multiplexing: for values not in mapping
  std::vector<std::string> optional;          // a full optional channel does not fail the put
  bool operator==(const SelectorSpec&) const = default;
};

struct SourceSpec : ComponentSpec {
  SourceCommon common;
  std::vector<InterceptorSpec> interceptors;
  SelectorSpec selector;
  bool operator==(const SourceSpec& o) const {
    return common == o.common && sameConfig(o) && interceptors == o.interceptors &&
           selector == o.selector;
  }
};
struct ChannelSpec : ComponentSpec {
  ChannelCommon common;
  bool operator==(const ChannelSpec& o) const { return common == o.common && sameConfig(o); }
};
struct SinkSpec : ComponentSpec {
  SinkCommon common;
  bool operator==(const SinkSpec& o) const { return common == o.common && sameConfig(o); }
};
struct GroupSpec {
  std::string name;
  Location where;
  GroupCommon common;
  bool implicit = false;  // a sink that no group lists: a group of one, named after the sink
  bool operator==(const GroupSpec& o) const { return common == o.common; }
};

struct Config {
  std::string file;
  AgentSettings agent;
  std::vector<SourceSpec> sources;
  std::vector<ChannelSpec> channels;
  std::vector<SinkSpec> sinks;
  std::vector<GroupSpec> groups;  // explicit groups first, then one implicit group per lone sink
  Location data_dir_at;           // where agent.data_dir is written; unknown when defaulted

  const ChannelSpec* channel(const std::string& name) const;
  const SinkSpec* sink(const std::string& name) const;
};

using EnvLookup = ConfigReader::EnvLookup;
EnvLookup processEnv();

std::optional<Config> loadConfigText(const std::string& text, const std::string& file,
                                     const Registry& registry, Diagnostics& diag, EnvLookup env);
// Reads the file, then loadConfigText (relative paths resolve against the file's directory),
// then checks what the agent needs of the file system outside any component: that data_dir is
// a directory this user can write (or create). `sluice check`, `run` and a reload all load
// through here, so they accept and refuse the same files.
std::optional<Config> loadConfigFile(const std::string& path, const Registry& registry,
                                     Diagnostics& diag, EnvLookup env);
// Reports (at `where`, the key in the file) a data_dir this user can neither write nor create;
// only a warning for the default one when it is missing (`where` unknown).
void checkDataDir(const std::string& dir, Location where, Diagnostics& diag);

// The option tables of the parts every component of a kind shares, and of the agent section.
const OptionTable<AgentSettings>& agentTable();
const OptionTable<SourceCommon>& sourceCommonTable();
const OptionTable<ChannelCommon>& channelCommonTable();
const OptionTable<SinkCommon>& sinkCommonTable();
const OptionTable<GroupCommon>& groupTable();
const OptionTable<SelectorSpec>& selectorTable();

// Finds a cycle in a directed graph given as edges between node names; returns the nodes of one
// cycle in order (first node repeated at the end), or an empty vector.
std::vector<std::string> findCycle(const std::vector<std::pair<std::string, std::string>>& edges);

}  // namespace sluice

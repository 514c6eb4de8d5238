#pragma once
// Option tables: one per component type, one row per key (name, type, default, bounds, help).
// The table fills the component's typed config from YAML, rejects what it does not know, and
// describes itself for `sluice schema` and docs/CONFIGURATION.md. There is no other list of
// options anywhere.

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/diagnostics.h"

namespace re2 {
class RE2;
}

namespace sluice {

using Millis = std::chrono::milliseconds;

// A regular expression from the configuration, compiled once when the file is loaded (RE2:
// linear time whatever the input, so a hostile log line cannot stall the agent).
struct Regex {
  std::string pattern;
  std::shared_ptr<const re2::RE2> re;
  bool operator==(const Regex& other) const { return pattern == other.pattern; }
};
// Compiles a pattern; on failure returns null and sets `error` to RE2's explanation.
std::shared_ptr<const re2::RE2> compileRegex(const std::string& pattern, std::string& error);

// Pure value parsers; on failure they return nullopt and set `error`.
// Sizes: 512, 64KiB, 64MiB, 8GiB, 1TiB (binary), 64KB, 64MB (decimal), 64k/m/g (binary).
std::optional<uint64_t> parseSize(const std::string& text, std::string& error);
// Durations: 250ms, 30s, 5m, 1h, 1d; a bare 0 means zero.
std::optional<Millis> parseDuration(const std::string& text, std::string& error);
std::string formatSize(uint64_t bytes);
std::string formatDuration(Millis d);
// Expands ${VAR} and ${VAR:-default} from `lookup`; $$ is a literal $. Unset without a default
// is an error.
std::optional<std::string> expandEnv(
    const std::string& text,
    const std::function<std::optional<std::string>(const std::string&)>& lookup,
    std::string& error);

Location locationOf(const YAML::Node& node);

// Whether a name (a key path, a librdkafka property, an environment variable) looks like it
// holds a secret: it contains, in any case, one of password, passwd, secret, token, credential,
// passphrase, key, jaas, oauthbearer, auth or private. The one list every masking decision uses.
bool looksSecret(const std::string& name);

// Why `file` is not a readable regular file (or, with dir_ok, a directory) for this process's
// effective user, or nothing when it is. Uses stat() and faccessat(AT_EACCESS) only: opening a
// FIFO would block.
std::optional<std::string> checkReadableFile(const std::string& file, bool dir_ok = false);

// Reads scalars with environment expansion and reports problems to diagnostics.
class ConfigReader {
 public:
  using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
  ConfigReader(Diagnostics& diag, EnvLookup env) : diag_(diag), env_(std::move(env)) {}

  std::optional<std::string> scalar(const YAML::Node& node, const std::string& path);
  std::optional<std::vector<std::string>> stringList(const YAML::Node& node,
                                                     const std::string& path);
  Diagnostics& diag() { return diag_; }
  // Relative paths in the file are read against this directory (the configuration file's), so
  // the working directory (`/` under systemd) does not matter. Empty: left relative.
  void setBaseDir(std::string dir) { base_dir_ = std::move(dir); }
  std::string resolvePath(const std::string& path) const;
  // A path option's value resolved as resolvePath() does; a leading `~` is an error (no shell
  // expands it, and `<confdir>/~/x` is never what was meant).
  std::string pathValue(const YAML::Node& node, const std::string& value, const std::string& path);
  // How a value is quoted in a diagnostic: as the user wrote it, and for a value that came from
  // the environment also what it expanded to, unless the key may hold a secret (see
  // maySecret), whose expansion is never echoed.
  static std::string shown(const YAML::Node& node, const std::string& value,
                           const std::string& path) {
    if (node.Scalar() == value) return value;
    if (maySecret(path) || referencesSecret(node.Scalar()))
      return node.Scalar() + " (expanded from the environment, value hidden)";
    return node.Scalar() + " (expanded to '" + value + "')";
  }
  // A parser's error message, quoting the value as shown() does.
  static std::string parseError(const YAML::Node& node, const std::string& value,
                                const std::string& path, const std::string& error,
                                const std::string& what) {
    return node.Scalar() == value
               ? error
               : shown(node, value, path) + " is not a valid " + what + ": " +
                     (maySecret(path) || referencesSecret(node.Scalar()) ? "hidden" : error);
  }
  // Whether a key path names something secret (see looksSecret).
  static bool maySecret(const std::string& path) { return looksSecret(path); }
  // Whether a value as written refers to an environment variable whose name looks secret
  // (`${KAFKA_PASSWORD}`), whatever key it sits under.
  static bool referencesSecret(const std::string& raw);

 private:
  Diagnostics& diag_;
  EnvLookup env_;
  std::string base_dir_;
};

struct OptionInfo {
  std::string key;
  std::string type;  // string, path, bool, integer, size, duration, choice, list
  std::string default_text;
  std::string help;
  bool required = false;
  std::vector<std::string> choices;
  std::string bounds;  // "1..1000000", for the schema
};

inline OptionInfo makeInfo(std::string key, std::string type, std::string def, std::string help) {
  OptionInfo info;
  info.key = std::move(key);
  info.type = std::move(type);
  info.default_text = std::move(def);
  info.help = std::move(help);
  return info;
}

template <class Cfg>
class OptionTable {
 public:
  OptionTable& string(std::string key, std::string Cfg::*member, std::string def,
                      std::string help) {
    return add(
        makeInfo(key, "string", def, help), [member, def](Cfg& c) { c.*member = def; },
        [member](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          if (auto v = r.scalar(n, path)) c.*member = *v;
        });
  }
  OptionTable& requiredString(std::string key, std::string Cfg::*member, std::string help) {
    OptionInfo info = makeInfo(key, "string", "", help);
    info.required = true;
    return add(
        info, [](Cfg&) {},
        [member](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          if (auto v = r.scalar(n, path)) {
            if (v->empty()) {
              r.diag().error(locationOf(n), path, "must not be empty");
            }
            c.*member = *v;
          }
        });
  }
  // A file or directory; a relative one is resolved against the configuration file's directory.
  // `literal`: a word the option also takes that is not a path (kafka's tls_ca_file `probe`).
  OptionTable& path(std::string key, std::string Cfg::*member, std::string def, std::string help,
                    std::string literal = {}) {
    return add(
        makeInfo(key, "path", def, help), [member, def](Cfg& c) { c.*member = def; },
        [member, literal](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          auto v = r.scalar(n, path);
          if (!v) return;
          c.*member = !literal.empty() && *v == literal ? *v : r.pathValue(n, *v, path);
        });
  }
  OptionTable& boolean(std::string key, bool Cfg::*member, bool def, std::string help) {
    return add(
        makeInfo(key, "bool", def ? "true" : "false", help),
        [member, def](Cfg& c) { c.*member = def; },
        [member](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          auto v = r.scalar(n, path);
          if (!v) return;
          if (*v == "true" || *v == "yes" || *v == "on") {
            c.*member = true;
          } else if (*v == "false" || *v == "no" || *v == "off") {
            c.*member = false;
          } else {
            r.diag().error(locationOf(n), path,
                           "expected true or false, got '" + r.shown(n, *v, path) + "'");
          }
        });
  }
  OptionTable& integer(std::string key, uint64_t Cfg::*member, uint64_t def, uint64_t min,
                       uint64_t max, std::string help) {
    OptionInfo info = makeInfo(key, "integer", std::to_string(def), help);
    info.bounds = std::to_string(min) + ".." + std::to_string(max);
    return add(
        info, [member, def](Cfg& c) { c.*member = def; },
        [=](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          auto v = r.scalar(n, path);
          if (!v) return;
          uint64_t value = 0;
          if (!parseUnsigned(*v, value)) {
            r.diag().error(locationOf(n), path,
                           "expected a whole number, got '" + r.shown(n, *v, path) + "'");
          } else if (value < min || value > max) {
            r.diag().error(locationOf(n), path,
                           "must be between " + std::to_string(min) + " and " +
                               std::to_string(max) + ", got " + r.shown(n, *v, path));
          } else {
            c.*member = value;
          }
        });
  }
  OptionTable& size(std::string key, uint64_t Cfg::*member, std::string def, uint64_t min,
                    uint64_t max, std::string help) {
    OptionInfo info = makeInfo(key, "size", def, help);
    info.bounds = formatSize(min) + ".." + formatSize(max);
    std::string ignored;
    uint64_t def_value = parseSize(def, ignored).value_or(0);
    return add(
        info, [member, def_value](Cfg& c) { c.*member = def_value; },
        [=](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          auto v = r.scalar(n, path);
          if (!v) return;
          std::string error;
          auto value = parseSize(*v, error);
          if (!value) {
            r.diag().error(locationOf(n), path, r.parseError(n, *v, path, error, "size"));
          } else if (*value < min || *value > max) {
            r.diag().error(locationOf(n), path,
                           "must be between " + formatSize(min) + " and " + formatSize(max) +
                               ", got " + r.shown(n, *v, path));
          } else {
            c.*member = *value;
          }
        });
  }
  OptionTable& duration(std::string key, Millis Cfg::*member, std::string def, Millis min,
                        Millis max, std::string help) {
    OptionInfo info = makeInfo(key, "duration", def, help);
    info.bounds = formatDuration(min) + ".." + formatDuration(max);
    std::string ignored;
    Millis def_value = parseDuration(def, ignored).value_or(Millis(0));
    return add(
        info, [member, def_value](Cfg& c) { c.*member = def_value; },
        [=](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          auto v = r.scalar(n, path);
          if (!v) return;
          std::string error;
          auto value = parseDuration(*v, error);
          if (!value) {
            r.diag().error(locationOf(n), path, r.parseError(n, *v, path, error, "duration"));
          } else if (*value < min || *value > max) {
            r.diag().error(locationOf(n), path,
                           "must be between " + formatDuration(min) + " and " +
                               formatDuration(max) + ", got " + r.shown(n, *v, path));
          } else {
            c.*member = *value;
          }
        });
  }
  OptionTable& choice(std::string key, std::string Cfg::*member, std::vector<std::string> choices,
                      std::string def, std::string help) {
    OptionInfo info = makeInfo(key, "choice", def, help);
    info.choices = choices;
    return add(
        info, [member, def](Cfg& c) { c.*member = def; },
        [=](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          auto v = r.scalar(n, path);
          if (!v) return;
          for (const auto& ch : choices) {
            if (ch == *v) {
              c.*member = *v;
              return;
            }
          }
          std::string msg =
              fmt::format("'{}' is not one of {}", r.shown(n, *v, path), joinChoices(choices));
          auto near = nearest(*v, choices);
          if (!near.empty()) msg += " (did you mean '" + near + "'?)";
          r.diag().error(locationOf(n), path, msg);
        });
  }
  OptionTable& list(std::string key, std::vector<std::string> Cfg::*member, bool required,
                    std::string help) {
    OptionInfo info = makeInfo(key, "list", required ? "" : "[]", help);
    info.required = required;
    return add(
        info, [member](Cfg& c) { (c.*member).clear(); },
        [=](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          if (auto v = r.stringList(n, path)) {
            if (required && v->empty()) {
              r.diag().error(locationOf(n), path, "must list at least one entry");
            }
            c.*member = *v;
          }
        });
  }

  // Files or glob patterns; relative ones are resolved against the configuration file's
  // directory, as for path().
  OptionTable& pathList(std::string key, std::vector<std::string> Cfg::*member, bool required,
                        std::string help) {
    OptionInfo info = makeInfo(key, "path list", required ? "" : "[]", help);
    info.required = required;
    return add(
        info, [member](Cfg& c) { (c.*member).clear(); },
        [=](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          if (auto v = r.stringList(n, path)) {
            if (required && v->empty()) {
              r.diag().error(locationOf(n), path, "must list at least one entry");
            }
            for (size_t i = 0; i < v->size(); ++i) {
              (*v)[i] = r.pathValue(n.IsSequence() ? n[i] : n, (*v)[i],
                                    n.IsSequence() ? path + "[" + std::to_string(i) + "]" : path);
            }
            c.*member = *v;
          }
        });
  }

  OptionTable& regex(std::string key, Regex Cfg::*member, bool required, std::string help) {
    OptionInfo info = makeInfo(key, "regex", "", help);
    info.required = required;
    return add(
        info, [member](Cfg& c) { c.*member = Regex{}; },
        [member](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          auto v = r.scalar(n, path);
          if (!v) return;
          std::string error;
          auto re = compileRegex(*v, error);
          if (!re) {
            r.diag().error(locationOf(n), path,
                           "bad regular expression '" + r.shown(n, *v, path) + "': " + error);
            return;
          }
          c.*member = Regex{*v, std::move(re)};
        });
  }
  OptionTable& stringMap(std::string key, std::map<std::string, std::string> Cfg::*member,
                         std::string help) {
    return add(
        makeInfo(key, "map", "{}", help), [member](Cfg& c) { (c.*member).clear(); },
        [member](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          if (!n.IsMap()) {
            r.diag().error(locationOf(n), path, "expected a mapping of names to values");
            return;
          }
          for (const auto& kv : n) {
            auto v = r.scalar(kv.second, path + "." + kv.first.Scalar());
            if (v) (c.*member)[kv.first.Scalar()] = *v;
          }
        });
  }
  OptionTable& listMap(std::string key,
                       std::map<std::string, std::vector<std::string>> Cfg::*member,
                       std::string help) {
    return add(
        makeInfo(key, "map of lists", "{}", help), [member](Cfg& c) { (c.*member).clear(); },
        [member](const YAML::Node& n, Cfg& c, ConfigReader& r, const std::string& path) {
          if (!n.IsMap()) {
            r.diag().error(locationOf(n), path, "expected a mapping of values to lists");
            return;
          }
          for (const auto& kv : n) {
            auto v = r.stringList(kv.second, path + "." + kv.first.Scalar());
            if (v) (c.*member)[kv.first.Scalar()] = *v;
          }
        });
  }

  const std::vector<OptionInfo>& describe() const { return infos_; }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const auto& i : infos_) out.push_back(i.key);
    return out;
  }

  // Sets every default, then fills the keys of `map` that this table knows. Unknown keys are
  // left to the caller (several tables may share one map); see checkKeys.
  void fill(const YAML::Node& map, Cfg& cfg, ConfigReader& reader, const std::string& path) const {
    for (size_t i = 0; i < rows_.size(); ++i) {
      rows_[i].set_default(cfg);
      const auto& key = infos_[i].key;
      YAML::Node value = map.IsMap() ? map[key] : YAML::Node();
      if (value.IsDefined() && !value.IsNull()) {
        rows_[i].parse(value, cfg, reader, path + "." + key);
      } else if (infos_[i].required && !(value.IsDefined() && key == "type")) {
        reader.diag().error(locationOf(map), path, "missing required key '" + key + "'");
      }
    }
  }

 private:
  struct Row {
    std::function<void(Cfg&)> set_default;
    std::function<void(const YAML::Node&, Cfg&, ConfigReader&, const std::string&)> parse;
  };
  OptionTable& add(
      OptionInfo info, std::function<void(Cfg&)> set_default,
      std::function<void(const YAML::Node&, Cfg&, ConfigReader&, const std::string&)> parse) {
    infos_.push_back(std::move(info));
    rows_.push_back({std::move(set_default), std::move(parse)});
    return *this;
  }
  static bool parseUnsigned(const std::string& s, uint64_t& out) {
    if (s.empty() || s.size() > 19) return false;
    out = 0;
    for (char ch : s) {
      if (ch < '0' || ch > '9') return false;
      out = out * 10 + static_cast<uint64_t>(ch - '0');
    }
    return true;
  }
  static std::string joinChoices(const std::vector<std::string>& v) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
    return out;
  }

  std::vector<OptionInfo> infos_;
  std::vector<Row> rows_;
};

// Reports every key of `map` that is not in `known`, with a did-you-mean; also reports a
// `map` that is not a mapping at all. Returns false when `map` is not a mapping.
bool checkKeys(const YAML::Node& map, const std::vector<std::string>& known, ConfigReader& reader,
               const std::string& path);

}  // namespace sluice

#include "agent/options.h"

#include <re2/re2.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>

namespace sluice {

namespace {

bool splitNumber(const std::string& text, uint64_t& number, std::string& unit) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  size_t start = i;
  number = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    if (number > (std::numeric_limits<uint64_t>::max() - 9) / 10) return false;
    number = number * 10 + static_cast<uint64_t>(text[i] - '0');
    ++i;
  }
  if (i == start) return false;
  while (i < text.size() && text[i] == ' ') ++i;
  unit = text.substr(i);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();
  return true;
}

}  // namespace

std::optional<uint64_t> parseSize(const std::string& text, std::string& error) {
  uint64_t n = 0;
  std::string unit;
  if (!splitNumber(text, n, unit)) {
    error = "expected a size such as 512KiB, 64MiB or 8GiB, got '" + text + "'";
    return std::nullopt;
  }
  struct Unit {
    const char* name;
    uint64_t factor;
  };
  static const Unit units[] = {
      {"", 1},
      {"B", 1},
      {"k", 1ull << 10},
      {"K", 1ull << 10},
      {"KiB", 1ull << 10},
      {"KB", 1000},
      {"m", 1ull << 20},
      {"M", 1ull << 20},
      {"MiB", 1ull << 20},
      {"MB", 1000000},
      {"g", 1ull << 30},
      {"G", 1ull << 30},
      {"GiB", 1ull << 30},
      {"GB", 1000000000},
      {"TiB", 1ull << 40},
      {"TB", 1000000000000ull},
  };
  for (const auto& u : units) {
    if (unit == u.name) {
      if (n > std::numeric_limits<uint64_t>::max() / u.factor) {
        error = "size '" + text + "' is too large";
        return std::nullopt;
      }
      return n * u.factor;
    }
  }
  error =
      "unknown size unit '" + unit + "' in '" + text + "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB)";
  return std::nullopt;
}

std::optional<Millis> parseDuration(const std::string& text, std::string& error) {
  uint64_t n = 0;
  std::string unit;
  if (!splitNumber(text, n, unit)) {
    error = "expected a duration such as 250ms, 30s, 5m or 1h, got '" + text + "'";
    return std::nullopt;
  }
  uint64_t factor = 0;
  if (unit == "ms")
    factor = 1;
  else if (unit == "s")
    factor = 1000;
  else if (unit == "m" || unit == "min")
    factor = 60'000;
  else if (unit == "h")
    factor = 3'600'000;
  else if (unit == "d")
    factor = 86'400'000;
  else if (unit.empty() && n == 0)
    factor = 1;
  if (factor == 0) {
    error = unit.empty()
                ? "duration '" + text + "' needs a unit (ms, s, m, h, d), such as '" + text + "s'"
                : "unknown duration unit '" + unit + "' in '" + text + "' (use ms, s, m, h, d)";
    return std::nullopt;
  }
  if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / factor) {
    error = "duration '" + text + "' is too large";
    return std::nullopt;
  }
  return Millis(static_cast<int64_t>(n * factor));
}

std::string formatSize(uint64_t bytes) {
  static const char* names[] = {"TiB", "GiB", "MiB", "KiB"};
  static const uint64_t factors[] = {1ull << 40, 1ull << 30, 1ull << 20, 1ull << 10};
  for (int i = 0; i < 4; ++i) {
    if (bytes != 0 && bytes % factors[i] == 0) return std::to_string(bytes / factors[i]) + names[i];
  }
  return std::to_string(bytes) + "B";
}

std::string formatDuration(Millis d) {
  auto ms = d.count();
  if (ms == 0) return "0s";
  if (ms % 86'400'000 == 0) return std::to_string(ms / 86'400'000) + "d";
  if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::optional<std::string> expandEnv(
    const std::string& text,
    const std::function<std::optional<std::string>(const std::string&)>& lookup,
    std::string& error) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '$') {
      out += text[i];
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '$') {
      out += '$';
      ++i;
      continue;
    }
    if (i + 1 >= text.size() || text[i + 1] != '{') {
      out += '$';
      continue;
    }
    size_t close = text.find('}', i + 2);
    if (close == std::string::npos) {
      error = "unterminated '${' in '" + text + "'";
      return std::nullopt;
    }
    std::string inner = text.substr(i + 2, close - i - 2);
    std::string name = inner, fallback;
    bool has_fallback = false;
    if (auto dash = inner.find(":-"); dash != std::string::npos) {
      name = inner.substr(0, dash);
      fallback = inner.substr(dash + 2);
      has_fallback = true;
    }
    bool valid = !name.empty();
    for (char c : name) valid = valid && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
    if (!valid) {
      error = "'${" + inner + "}' is not a valid variable reference";
      return std::nullopt;
    }
    auto value = lookup(name);
    if (value && !value->empty()) {
      out += *value;
    } else if (has_fallback) {
      out += fallback;
    } else if (value) {
      out += *value;
    } else {
      error = "environment variable " + name + " is not set (write ${" + name +
              ":-default} to give a default)";
      return std::nullopt;
    }
    i = close;
  }
  return out;
}

std::shared_ptr<const re2::RE2> compileRegex(const std::string& pattern, std::string& error) {
  RE2::Options options;
  options.set_log_errors(false);
  auto re = std::make_shared<const re2::RE2>(pattern, options);
  if (!re->ok()) {
    error = re->error();
    return nullptr;
  }
  return re;
}

Location locationOf(const YAML::Node& node) {
  auto mark = node.Mark();
  if (mark.is_null()) return {};
  return {mark.line + 1, mark.column + 1};
}

std::optional<std::string> ConfigReader::scalar(const YAML::Node& node, const std::string& path) {
  if (!node.IsScalar()) {
    diag_.error(locationOf(node), path,
                node.IsSequence() ? "expected a single value, got a list"
                : node.IsMap()    ? "expected a single value, got a mapping"
                                  : "expected a value");
    return std::nullopt;
  }
  std::string error;
  auto expanded = expandEnv(node.Scalar(), env_, error);
  if (!expanded) {
    diag_.error(locationOf(node), path, error);
    return std::nullopt;
  }
  return expanded;
}

std::optional<std::vector<std::string>> ConfigReader::stringList(const YAML::Node& node,
                                                                 const std::string& path) {
  std::vector<std::string> out;
  if (node.IsScalar()) {
    auto v = scalar(node, path);
    if (!v) return std::nullopt;
    out.push_back(*v);
    return out;
  }
  if (!node.IsSequence()) {
    diag_.error(locationOf(node), path, "expected a list");
    return std::nullopt;
  }
  bool ok = true;
  for (size_t i = 0; i < node.size(); ++i) {
    auto v = scalar(node[i], path + "[" + std::to_string(i) + "]");
    if (v) {
      out.push_back(*v);
    } else {
      ok = false;
    }
  }
  if (!ok) return std::nullopt;
  return out;
}

bool checkKeys(const YAML::Node& map, const std::vector<std::string>& known, ConfigReader& reader,
               const std::string& path) {
  if (!map.IsMap()) {
    reader.diag().error(locationOf(map), path, "expected a mapping of keys to values");
    return false;
  }
  // Sets, not scans: a file with many keys (generated, or pasted twice) stays linear.
  std::unordered_set<std::string> known_set(known.begin(), known.end());
  std::unordered_set<std::string> seen;
  for (const auto& kv : map) {
    auto key = kv.first.Scalar();
    auto where = locationOf(kv.first);
    if (!seen.insert(key).second) {
      reader.diag().error(where, path.empty() ? key : path + "." + key, "duplicate key");
    } else if (!known_set.count(key)) {
      if (reader.diag().full()) {  // not shown: counted, without a did-you-mean search
        reader.diag().error(where, std::string(), std::string());
        continue;
      }
      std::string msg = "unknown key '" + key + "'";
      auto near = nearest(key, known);
      if (!near.empty()) msg += " (did you mean '" + near + "'?)";
      reader.diag().error(where, path.empty() ? key : path + "." + key, msg);
    }
  }
  return true;
}

bool looksSecret(const std::string& name) {
  std::string lower;
  for (char c : name) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* word : {"password", "passwd", "secret", "token", "credential", "passphrase",
                           "key", "jaas", "oauthbearer", "auth", "private"}) {
    if (lower.find(word) != std::string::npos) return true;
  }
  return false;
}

bool ConfigReader::referencesSecret(const std::string& raw) {
  for (size_t i = raw.find("${"); i != std::string::npos; i = raw.find("${", i + 2)) {
    if (i > 0 && raw[i - 1] == '$') continue;  // $${X} is a literal
    size_t end = raw.find_first_of(":}", i + 2);
    if (end == std::string::npos) return false;
    if (looksSecret(raw.substr(i + 2, end - i - 2))) return true;
  }
  return false;
}

std::optional<std::string> checkReadableFile(const std::string& file, bool dir_ok) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    return "cannot read '" + file + "': " + std::strerror(errno);
  }
  if (!S_ISREG(st.st_mode) && !(dir_ok && S_ISDIR(st.st_mode))) {
    return "'" + file + "' is not a regular file" + (dir_ok ? " or a directory" : "");
  }
  if (::faccessat(AT_FDCWD, file.c_str(), R_OK | (S_ISDIR(st.st_mode) ? X_OK : 0), AT_EACCESS) !=
      0) {
    return "'" + file + "' is not readable by this user (uid " + std::to_string(::geteuid()) +
           "): " + std::strerror(errno);
  }
  return std::nullopt;
}

std::string ConfigReader::pathValue(const YAML::Node& node, const std::string& value,
                                    const std::string& path) {
  if (!value.empty() && value[0] == '~') {
    diag_.error(locationOf(node), path, "~ is not expanded; write the full path");
    return value;
  }
  return resolvePath(value);
}

std::string ConfigReader::resolvePath(const std::string& path) const {
  if (path.empty() || path[0] == '/' || base_dir_.empty()) return path;
  return base_dir_ + "/" + path;
}

}  // namespace sluice

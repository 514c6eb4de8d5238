#include "interceptors/interceptors.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <openssl/rand.h>
#include <re2/re2.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <ctime>
#include <random>

namespace sluice {

namespace {

// --- host ---------------------------------------------------------------------------------

struct HostConfig {
  std::string header;
  bool use_ip = false;
  bool preserve_existing = true;
  bool operator==(const HostConfig&) const = default;
};

// The first non-loopback IPv4 address of an interface that is up; no DNS involved, so it
// cannot block the loop.
std::string firstAddress() {
  struct ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string out;
  for (auto* a = list; a && out.empty(); a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    if ((a->ifa_flags & IFF_LOOPBACK) || !(a->ifa_flags & IFF_UP)) continue;
    char buf[INET_ADDRSTRLEN] = {};
    auto* sin = reinterpret_cast<struct sockaddr_in*>(a->ifa_addr);
    if (inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf))) out = buf;
  }
  freeifaddrs(list);
  return out.empty() ? "127.0.0.1" : out;
}

std::string hostName() {
  char buf[256] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

// Sets header `key` to `value` on every event, or only where it is missing.
void setAll(Batch& batch, const std::string& key, std::string_view value, bool preserve) {
  for (size_t i = 0; i < batch.size(); ++i) {
    if (preserve && batch[i].header(key)) continue;
    batch.setHeader(static_cast<uint32_t>(i), key, value);
  }
}

class HostInterceptor : public Interceptor {
 public:
  explicit HostInterceptor(HostConfig cfg)
      : cfg_(std::move(cfg)), value_(cfg_.use_ip ? firstAddress() : hostName()) {}
  size_t apply(Batch& batch) override {
    setAll(batch, cfg_.header, value_, cfg_.preserve_existing);
    return 0;
  }

 private:
  HostConfig cfg_;
  std::string value_;
};

// --- timestamp ----------------------------------------------------------------------------

struct TimestampConfig {
  std::string header;
  std::string format;
  bool preserve_existing = false;
  bool operator==(const TimestampConfig&) const = default;
};

class TimestampInterceptor : public Interceptor {
 public:
  explicit TimestampInterceptor(TimestampConfig cfg) : cfg_(std::move(cfg)) {}
  size_t apply(Batch& batch) override {
    for (size_t i = 0; i < batch.size(); ++i) {
      auto ev = batch[i];
      if (cfg_.preserve_existing && ev.header(cfg_.header)) continue;
      batch.setHeader(static_cast<uint32_t>(i), cfg_.header, format(ev.timestampNs()));
    }
    return 0;
  }

 private:
  std::string format(int64_t ns) const {
    if (cfg_.format == "millis") return std::to_string(ns / 1'000'000);
    return formatIsoTime(ns);
  }
  TimestampConfig cfg_;
};

// --- static -------------------------------------------------------------------------------

struct StaticConfig {
  std::map<std::string, std::string> headers;
  bool preserve_existing = false;
  bool operator==(const StaticConfig&) const = default;
};

class StaticInterceptor : public Interceptor {
 public:
  explicit StaticInterceptor(StaticConfig cfg) : cfg_(std::move(cfg)) {}
  size_t apply(Batch& batch) override {
    for (const auto& [k, v] : cfg_.headers) setAll(batch, k, v, cfg_.preserve_existing);
    return 0;
  }

 private:
  StaticConfig cfg_;
};

// --- remove_header ------------------------------------------------------------------------

struct RemoveHeaderConfig {
  std::vector<std::string> names;
  Regex pattern;
  bool operator==(const RemoveHeaderConfig&) const = default;
};

class RemoveHeaderInterceptor : public Interceptor {
 public:
  explicit RemoveHeaderInterceptor(RemoveHeaderConfig cfg) : cfg_(std::move(cfg)) {}
  size_t apply(Batch& batch) override {
    std::vector<std::string> doomed;
    for (size_t i = 0; i < batch.size(); ++i) {
      auto idx = static_cast<uint32_t>(i);
      for (const auto& n : cfg_.names) batch.removeHeader(idx, n);
      if (!cfg_.pattern.re) continue;
      doomed.clear();
      batch[i].forEachHeader([&](std::string_view k, std::string_view) {
        if (RE2::FullMatch(re2::StringPiece(k.data(), k.size()), *cfg_.pattern.re)) {
          doomed.emplace_back(k);
        }
      });
      for (const auto& k : doomed) batch.removeHeader(idx, k);
    }
    return 0;
  }

 private:
  RemoveHeaderConfig cfg_;
};

// --- regex_filter -------------------------------------------------------------------------

struct RegexFilterConfig {
  Regex regex;
  bool exclude = false;
  bool operator==(const RegexFilterConfig&) const = default;
};

class RegexFilterInterceptor : public Interceptor {
 public:
  explicit RegexFilterInterceptor(RegexFilterConfig cfg) : cfg_(std::move(cfg)) {}
  size_t apply(Batch& batch) override {
    return batch.retainIf([&](const EventView& e) {
      auto body = e.body();
      bool match = RE2::PartialMatch(re2::StringPiece(body.data(), body.size()), *cfg_.regex.re);
      return match != cfg_.exclude;
    });
  }

 private:
  RegexFilterConfig cfg_;
};

// --- regex_extractor ----------------------------------------------------------------------

struct RegexExtractorConfig {
  Regex regex;
  std::string header_prefix;
  bool operator==(const RegexExtractorConfig&) const = default;
};

class RegexExtractorInterceptor : public Interceptor {
 public:
  explicit RegexExtractorInterceptor(RegexExtractorConfig cfg) : cfg_(std::move(cfg)) {
    const auto& re = *cfg_.regex.re;
    groups_.resize(static_cast<size_t>(re.NumberOfCapturingGroups()) + 1);
    for (const auto& [name, index] : re.NamedCapturingGroups()) {
      names_.push_back({static_cast<size_t>(index), cfg_.header_prefix + name});
    }
  }
  size_t apply(Batch& batch) override {
    if (names_.empty()) return 0;
    const auto& re = *cfg_.regex.re;
    for (size_t i = 0; i < batch.size(); ++i) {
      auto body = batch[i].body();
      re2::StringPiece text(body.data(), body.size());
      if (!re.Match(text, 0, text.size(), RE2::UNANCHORED, groups_.data(),
                    static_cast<int>(groups_.size()))) {
        continue;
      }
      // The groups point into the body, which moves when setHeader grows the arena: copy all
      // of them out before setting the first header.
      values_.clear();
      for (const auto& [index, header] : names_) {
        const auto& g = groups_[index];
        if (g.data() == nullptr) continue;  // an optional group that did not take part
        values_.emplace_back(&header, std::string(g.data(), g.size()));
      }
      for (const auto& [header, value] : values_) {
        batch.setHeader(static_cast<uint32_t>(i), *header, value);
      }
    }
    return 0;
  }

 private:
  RegexExtractorConfig cfg_;
  std::vector<re2::StringPiece> groups_;
  std::vector<std::pair<size_t, std::string>> names_;
  std::vector<std::pair<const std::string*, std::string>> values_;
};

// --- uuid ---------------------------------------------------------------------------------

struct UuidConfig {
  std::string header;
  std::string prefix;
  bool preserve_existing = true;
  bool operator==(const UuidConfig&) const = default;
};

class UuidInterceptor : public Interceptor {
 public:
  explicit UuidInterceptor(UuidConfig cfg) : cfg_(std::move(cfg)) {}
  size_t apply(Batch& batch) override {
    for (size_t i = 0; i < batch.size(); ++i) {
      if (cfg_.preserve_existing && batch[i].header(cfg_.header)) continue;
      batch.setHeader(static_cast<uint32_t>(i), cfg_.header, cfg_.prefix + randomUuid());
    }
    return 0;
  }

 private:
  UuidConfig cfg_;
};

template <class T, class Cfg>
std::function<InterceptorPtr(const Cfg&, const BuildContext&)> maker() {
  return [](const Cfg& cfg, const BuildContext&) -> InterceptorPtr {
    return std::make_unique<T>(cfg);
  };
}

}  // namespace

std::string randomUuid() {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof(b)) != 1) {
    // The CSPRNG failing is near impossible; fall back rather than emit a constant id.
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    for (auto& c : b) c = static_cast<unsigned char>(rng());
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += hex[b[i] >> 4];
    out += hex[b[i] & 0x0f];
  }
  return out;
}

void registerInterceptors(Registry& registry) {
  {
    OptionTable<HostConfig> t;
    t.string("header", &HostConfig::header, "host", "Header to set.");
    t.boolean("use_ip", &HostConfig::use_ip, false,
              "The first non-loopback IPv4 address instead of the host name.");
    // An event that already names its host (the syslog source sets `host` to the sender's
    // name) keeps it by default: the agent's own name would hide where the line came from.
    t.boolean("preserve_existing", &HostConfig::preserve_existing, true,
              "Keep the header where an event already has it (a syslog sender's host); false "
              "overwrites it with this agent's host. To keep both, set another header.");
    registry.addInterceptor<HostConfig>("host", "Puts the host name (or IP) into a header.", t,
                                        maker<HostInterceptor, HostConfig>());
  }
  {
    OptionTable<TimestampConfig> t;
    t.string("header", &TimestampConfig::header, "timestamp", "Header to set.");
    t.choice("format", &TimestampConfig::format, {"millis", "iso8601"}, "millis",
             "millis: milliseconds since the epoch (as Flume); iso8601: UTC with milliseconds.");
    t.boolean("preserve_existing", &TimestampConfig::preserve_existing, false,
              "Keep the header where an event already has it.");
    registry.addInterceptor<TimestampConfig>("timestamp", "Puts the event time into a header.", t,
                                             maker<TimestampInterceptor, TimestampConfig>());
  }
  {
    OptionTable<StaticConfig> t;
    t.stringMap("headers", &StaticConfig::headers, "Headers to set: name -> value.");
    t.boolean("preserve_existing", &StaticConfig::preserve_existing, false,
              "Keep a header where an event already has it.");
    registry.addInterceptor<StaticConfig>("static", "Sets fixed headers.", t,
                                          maker<StaticInterceptor, StaticConfig>());
  }
  {
    OptionTable<RemoveHeaderConfig> t;
    t.list("names", &RemoveHeaderConfig::names, false, "Header names to remove.");
    t.regex("pattern", &RemoveHeaderConfig::pattern, false,
            "Remove every header whose whole name matches this regular expression.");
    registry.addInterceptor<RemoveHeaderConfig>(
        "remove_header", "Removes headers by name or by a pattern on the name.", t,
        maker<RemoveHeaderInterceptor, RemoveHeaderConfig>());
  }
  {
    OptionTable<RegexFilterConfig> t;
    t.regex("regex", &RegexFilterConfig::regex, true,
            "Regular expression (RE2 syntax) searched for in the body.");
    t.boolean("exclude", &RegexFilterConfig::exclude, false,
              "false: keep only matching events; true: drop matching events. Dropped events "
              "are counted in the source's EventFilteredCount.");
    registry.addInterceptor<RegexFilterConfig>("regex_filter",
                                               "Keeps or drops events by a regular expression.", t,
                                               maker<RegexFilterInterceptor, RegexFilterConfig>());
  }
  {
    OptionTable<RegexExtractorConfig> t;
    t.regex("regex", &RegexExtractorConfig::regex, true,
            "Regular expression (RE2 syntax) searched for in the body; each named group "
            "(?P<name>...) that matches becomes a header.");
    t.string("header_prefix", &RegexExtractorConfig::header_prefix, "",
             "Prefix for the header names.");
    registry.addInterceptor<RegexExtractorConfig>(
        "regex_extractor", "Copies named groups of a regular expression into headers.", t,
        maker<RegexExtractorInterceptor, RegexExtractorConfig>());
  }
  {
    OptionTable<UuidConfig> t;
    t.string("header", &UuidConfig::header, "id", "Header to set.");
    t.string("prefix", &UuidConfig::prefix, "", "Text put before the UUID.");
    t.boolean("preserve_existing", &UuidConfig::preserve_existing, true,
              "Keep the header where an event already has it (so retries keep one id).");
    registry.addInterceptor<UuidConfig>(
        "uuid", "Adds a random UUID header so downstream stores can de-duplicate.", t,
        maker<UuidInterceptor, UuidConfig>());
  }
}

}  // namespace sluice

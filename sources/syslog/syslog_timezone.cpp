#include "sources/syslog/syslog_timezone.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>

namespace sluice {

namespace {

std::string zoneDir() {
  const char* dir = std::getenv("TZDIR");
  return dir != nullptr && *dir != '\0' ? dir : "/usr/share/zoneinfo";
}

// An IANA name: letters, digits, '_', '-', '+' in '/'-separated parts, none starting with '.'
// (so no "..", no absolute path, and no CCTZ prefix such as "libc:", which would read the
// process's TZ through localtime_r).
bool zoneName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name.front() == '/' || name.back() == '/') {
    return false;
  }
  char prev = '/';
  for (char ch : name) {
    bool ok = std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '+' ||
              ch == '/' || (ch == '.' && prev != '/');
    if (!ok || (ch == '/' && prev == '/')) return false;
    prev = ch;
  }
  return true;
}

// "+05:30", "-0800", "+05": seconds east of UTC.
std::optional<int> fixedOffset(std::string_view spec) {
  if (spec.size() < 3 || (spec[0] != '+' && spec[0] != '-')) return std::nullopt;
  std::string digits;
  for (size_t i = 1; i < spec.size(); ++i) {
    if (spec[i] == ':' && i == 3) continue;
    if (spec[i] < '0' || spec[i] > '9') return std::nullopt;
    digits += spec[i];
  }
  // +HH, +HHMM or +HH:MM ("+05:" has two digits but is not one of them).
  if ((digits.size() != 2 && digits.size() != 4) || spec.size() == 4) return std::nullopt;
  int h = std::stoi(digits.substr(0, 2));
  int m = digits.size() == 4 ? std::stoi(digits.substr(2)) : 0;
  if (h > 23 || m > 59) return std::nullopt;
  return (h * 3600 + m * 60) * (spec[0] == '-' ? -1 : 1);
}

}  // namespace

SyslogTimeZone SyslogTimeZone::fixed(int offset_s) {
  return SyslogTimeZone(cctz::fixed_time_zone(cctz::seconds(offset_s)));
}

std::optional<SyslogTimeZone> SyslogTimeZone::resolve(std::string_view spec, std::string& error) {
  const std::string shown(spec);
  if (spec == "UTC" || spec == "utc" || spec == "Z") return SyslogTimeZone();
  if (!spec.empty() && (spec[0] == '+' || spec[0] == '-')) {
    if (auto offset = fixedOffset(spec)) return fixed(*offset);
    error = "'" + shown + "' is not a UTC offset (write +HH:MM or -HH:MM, e.g. +05:30)";
    return std::nullopt;
  }
  cctz::time_zone tz;
  if (spec == "local") {
    // As glibc and cctz::local_time_zone() read the host's zone, but an unloadable TZ is an
    // error (local_time_zone() would silently use UTC): TZ unset is /etc/localtime (missing:
    // UTC), TZ empty is UTC, else TZ is a zone name or path, with or without a leading ':'.
    const char* env = std::getenv("TZ");
    if (env == nullptr) {
      if (access("/etc/localtime", F_OK) != 0) return SyslogTimeZone();
      if (cctz::load_time_zone("/etc/localtime", &tz)) return SyslogTimeZone(tz);
      error = "local: /etc/localtime is not a readable time zone file";
      return std::nullopt;
    }
    std::string_view value = env;
    if (!value.empty() && value[0] == ':') value.remove_prefix(1);
    if (value.empty()) return SyslogTimeZone();
    if ((value[0] == '/' || zoneName(value)) && cctz::load_time_zone(std::string(value), &tz)) {
      return SyslogTimeZone(tz);
    }
    error = "local: the TZ environment variable ('" + std::string(env) +
            "') is not a time zone in " + zoneDir() +
            " nor a zone file (POSIX TZ strings are not supported): set TZ to a zone name such "
            "as Europe/Berlin, or rfc3164_timezone to a zone or an offset such as +01:00";
    return std::nullopt;
  }
  if (!zoneName(spec)) {
    error = "'" + shown +
            "' is not a time zone (use local, UTC, an offset such as +05:30 or an IANA name "
            "such as Europe/Berlin)";
    return std::nullopt;
  }
  if (cctz::load_time_zone(shown, &tz)) return SyslogTimeZone(tz);
  error = "unknown time zone '" + shown + "' (not a readable zone file in " + zoneDir() +
          "; use local, UTC, an offset such as +05:30 or an IANA name such as Europe/Berlin)";
  return std::nullopt;
}

int SyslogTimeZone::offsetAt(int64_t utc_s) const {
  return tz_.lookup(cctz::time_point<cctz::seconds>(cctz::seconds(utc_s))).offset;
}

int64_t SyslogTimeZone::toUtc(int64_t local_s, int64_t near_s) const {
  const auto cl = tz_.lookup(cctz::civil_second(1970, 1, 1, 0, 0, 0) + local_s);
  const int64_t pre = cl.pre.time_since_epoch().count();
  const int64_t post = cl.post.time_since_epoch().count();
  // UNIQUE: pre == post. SKIPPED (a DST gap): the offset in force before the gap. REPEATED: the
  // occurrence nearer to near_s.
  if (cl.kind == cctz::time_zone::civil_lookup::REPEATED) {
    return std::abs(post - near_s) < std::abs(pre - near_s) ? post : pre;
  }
  return pre;
}

}  // namespace sluice

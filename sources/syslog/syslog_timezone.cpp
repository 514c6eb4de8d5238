#include "sources/syslog/syslog_timezone.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

#include "sources/syslog/syslog_parser.h"

namespace sluice {

namespace {

constexpr int64_t kDay = 86400;

// A POSIX TZ rule ("CET-1CEST,M3.5.0,M10.5.0/3"): the TZ variable's syntax and the footer of
// TZif files, which gives the offsets after the file's last transition.
struct PosixRule {
  struct Date {
    char kind = 'M';  // 'J': Jn (1..365, Feb 29 not counted), 'N': n (0..365), 'M': Mm.w.d
    int a = 0, b = 0, c = 0;
    int time_s = 7200;  // local time of day of the change, may be negative or past 24h
  };
  int std_offset = 0;  // seconds east of UTC
  bool has_dst = false;
  int dst_offset = 0;
  Date start, end;
};

bool leapYear(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

// The instant of a rule date in year y, read in the offset in force before the change.
int64_t changeAt(const PosixRule::Date& date, int64_t y, int offset_before) {
  int64_t day = syslogDaysFromCivil(y, 1, 1);
  if (date.kind == 'J') {
    day += date.a - 1 + (leapYear(y) && date.a >= 60 ? 1 : 0);
  } else if (date.kind == 'N') {
    day += date.a;
  } else {
    static const int kDays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int month_days = date.a == 2 && leapYear(y) ? 29 : kDays[date.a - 1];
    int64_t first = syslogDaysFromCivil(y, static_cast<unsigned>(date.a), 1);
    int first_wday = static_cast<int>(((first + 4) % 7 + 7) % 7);  // 1970-01-01 was a Thursday
    int64_t d = first + (date.c - first_wday + 7) % 7 + int64_t{date.b - 1} * 7;
    while (d >= first + month_days) d -= 7;  // week 5: the last such weekday
    day = d;
  }
  return day * kDay + date.time_s - offset_before;
}

int ruleOffsetAt(const PosixRule& r, int64_t utc_s) {
  if (!r.has_dst) return r.std_offset;
  int64_t days = utc_s + r.std_offset;
  days = days >= 0 ? days / kDay : (days - kDay + 1) / kDay;
  int64_t y = 0;
  unsigned m = 0, d = 0;
  syslogCivilFromDays(days, y, m, d);
  int64_t start = changeAt(r.start, y, r.std_offset);
  int64_t end = changeAt(r.end, y, r.dst_offset);
  bool dst = start < end ? (utc_s >= start && utc_s < end) : !(utc_s >= end && utc_s < start);
  return dst ? r.dst_offset : r.std_offset;
}

// ---- POSIX TZ string parsing ----

struct Scan {
  std::string_view s;
  size_t pos = 0;
  char peek() const { return pos < s.size() ? s[pos] : '\0'; }
  bool eat(char c) {
    if (peek() != c) return false;
    ++pos;
    return true;
  }
  bool number(int max, int& out) {
    size_t start = pos;
    out = 0;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9' && pos - start < 3) {
      out = out * 10 + (s[pos++] - '0');
    }
    return pos > start && out <= max;
  }
};

bool zoneAbbreviation(Scan& sc) {
  size_t start = sc.pos;
  if (sc.eat('<')) {
    while (sc.pos < sc.s.size() && sc.s[sc.pos] != '>') ++sc.pos;
    return sc.eat('>') && sc.pos - start >= 5;
  }
  while (std::isalpha(static_cast<unsigned char>(sc.peek()))) ++sc.pos;
  return sc.pos - start >= 3;
}

// [+-]hh[:mm[:ss]], hours up to max_hours.
bool clockTime(Scan& sc, int max_hours, int& out_s) {
  int sign = sc.eat('-') ? -1 : (sc.eat('+'), 1);
  int h = 0, m = 0, s = 0;
  if (!sc.number(max_hours, h)) return false;
  if (sc.eat(':') && (!sc.number(59, m) || (sc.eat(':') && !sc.number(59, s)))) return false;
  out_s = sign * (h * 3600 + m * 60 + s);
  return true;
}

bool ruleDate(Scan& sc, PosixRule::Date& date) {
  if (sc.eat('M')) {
    date.kind = 'M';
    if (!sc.number(12, date.a) || date.a < 1 || !sc.eat('.') || !sc.number(5, date.b) ||
        date.b < 1 || !sc.eat('.') || !sc.number(6, date.c)) {
      return false;
    }
  } else if (sc.eat('J')) {
    date.kind = 'J';
    if (!sc.number(365, date.a) || date.a < 1) return false;
  } else {
    date.kind = 'N';
    if (!sc.number(365, date.a)) return false;
  }
  date.time_s = 7200;
  return !sc.eat('/') || clockTime(sc, 167, date.time_s);
}

std::optional<PosixRule> parsePosixRule(std::string_view text) {
  Scan sc{text};
  PosixRule r;
  int west = 0;
  if (!zoneAbbreviation(sc) || !clockTime(sc, 24, west)) return std::nullopt;
  r.std_offset = -west;
  if (sc.pos == text.size()) return r;
  if (!zoneAbbreviation(sc)) return std::nullopt;
  r.has_dst = true;
  r.dst_offset = r.std_offset + 3600;
  if (sc.peek() != ',' && sc.pos < text.size()) {
    if (!clockTime(sc, 24, west)) return std::nullopt;
    r.dst_offset = -west;
  }
  if (sc.pos == text.size()) {
    // No rule: glibc's default, the US rule.
    r.start = {'M', 3, 2, 0, 7200};
    r.end = {'M', 11, 1, 0, 7200};
    return r;
  }
  if (!sc.eat(',') || !ruleDate(sc, r.start) || !sc.eat(',') || !ruleDate(sc, r.end) ||
      sc.pos != text.size()) {
    return std::nullopt;
  }
  return r;
}

// ---- TZif files (RFC 8536) ----

struct Reader {
  const std::string& data;
  size_t pos = 0;
  bool has(size_t n) const { return n <= data.size() - pos; }
  int64_t be(size_t n) {  // n-byte big-endian signed
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = v << 8 | static_cast<unsigned char>(data[pos + i]);
    pos += n;
    if (n < 8 && (v >> (n * 8 - 1)) != 0) v |= ~uint64_t{0} << (n * 8);
    return static_cast<int64_t>(v);
  }
};

struct TzifCounts {
  int64_t isut = 0, isstd = 0, leap = 0, time = 0, type = 0, chars = 0;
};

bool tzifHeader(Reader& r, char& version, TzifCounts& n) {
  if (!r.has(44) || r.data.compare(r.pos, 4, "TZif") != 0) return false;
  version = r.data[r.pos + 4];
  r.pos += 20;
  n.isut = r.be(4);
  n.isstd = r.be(4);
  n.leap = r.be(4);
  n.time = r.be(4);
  n.type = r.be(4);
  n.chars = r.be(4);
  return n.isut >= 0 && n.isstd >= 0 && n.leap >= 0 && n.time >= 0 && n.type >= 1 &&
         n.type <= 256 && n.chars >= 0;
}

}  // namespace

struct SyslogTimeZone::Rules {
  std::vector<int64_t> transitions;  // instants, ascending
  std::vector<int> offsets;          // in force from transitions[i]
  int initial_offset = 0;            // before the first transition
  std::optional<PosixRule> footer;   // after the last transition

  int offsetAt(int64_t t) const {
    if (transitions.empty() || t >= transitions.back()) {
      if (footer) return ruleOffsetAt(*footer, t);
      return transitions.empty() ? initial_offset : offsets.back();
    }
    auto it = std::upper_bound(transitions.begin(), transitions.end(), t);
    return it == transitions.begin() ? initial_offset : offsets[it - transitions.begin() - 1];
  }
};

namespace {

using Rules = SyslogTimeZone::Rules;

// Parses a TZif file (version 1 data is skipped when version 2+ data follows). Leap-second
// records ("right/" zones) are ignored.
std::shared_ptr<const Rules> parseTzif(const std::string& data) {
  Reader r{data};
  char version = 0;
  TzifCounts n;
  if (!tzifHeader(r, version, n)) return nullptr;
  size_t time_size = 4;
  if (version >= '2') {
    size_t v1 = n.time * 5 + n.type * 6 + n.chars + n.leap * 8 + n.isstd + n.isut;
    if (!r.has(v1)) return nullptr;
    r.pos += v1;
    if (!tzifHeader(r, version, n)) return nullptr;
    time_size = 8;
  }
  size_t body =
      n.time * (time_size + 1) + n.type * 6 + n.chars + n.leap * (time_size + 4) + n.isstd + n.isut;
  if (!r.has(body)) return nullptr;
  auto rules = std::make_shared<Rules>();
  for (int64_t i = 0; i < n.time; ++i) rules->transitions.push_back(r.be(time_size));
  std::vector<int> type_of;
  for (int64_t i = 0; i < n.time; ++i) type_of.push_back(static_cast<int>(r.be(1) & 0xff));
  std::vector<int> utoff;
  for (int64_t i = 0; i < n.type; ++i) {
    utoff.push_back(static_cast<int>(r.be(4)));
    r.pos += 2;  // isdst, abbreviation index
  }
  r.pos += n.chars + n.leap * (time_size + 4) + n.isstd + n.isut;
  for (int t : type_of) {
    if (t >= n.type) return nullptr;
    rules->offsets.push_back(utoff[static_cast<size_t>(t)]);
  }
  if (!std::is_sorted(rules->transitions.begin(), rules->transitions.end())) return nullptr;
  rules->initial_offset = utoff[0];
  if (time_size == 8 && r.has(1) && data[r.pos] == '\n') {
    size_t end = data.find('\n', r.pos + 1);
    if (end == std::string::npos) return nullptr;
    std::string_view footer(data.data() + r.pos + 1, end - r.pos - 1);
    if (!footer.empty()) {
      rules->footer = parsePosixRule(footer);
      if (!rules->footer) return nullptr;
    }
  }
  return rules;
}

enum class Load { Ok, Missing, Bad };

Load loadTzif(const std::string& path, std::shared_ptr<const Rules>& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return errno == ENOENT || errno == ENOTDIR ? Load::Missing : Load::Bad;
  std::string data;
  char buf[8192];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    data.append(buf, static_cast<size_t>(in.gcount()));
    if (data.size() > (1 << 20)) return Load::Bad;  // no zone file is this large
  }
  out = parseTzif(data);
  return out ? Load::Ok : Load::Bad;
}

std::string zoneDir() {
  const char* dir = std::getenv("TZDIR");
  return dir != nullptr && *dir != '\0' ? dir : "/usr/share/zoneinfo";
}

// An IANA name: letters, digits, '_', '-', '+' in '/'-separated parts, none starting with '.'
// (so no "..", no absolute path).
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
  SyslogTimeZone z;
  z.fixed_offset_s_ = offset_s;
  return z;
}

std::optional<SyslogTimeZone> SyslogTimeZone::resolve(std::string_view spec, std::string& error) {
  const std::string shown(spec);
  if (spec == "UTC" || spec == "utc" || spec == "Z") return SyslogTimeZone();
  if (!spec.empty() && (spec[0] == '+' || spec[0] == '-')) {
    if (auto offset = fixedOffset(spec)) return fixed(*offset);
    error = "'" + shown + "' is not a UTC offset (write +HH:MM or -HH:MM, e.g. +05:30)";
    return std::nullopt;
  }
  std::shared_ptr<const Rules> rules;
  if (spec == "local") {
    // As glibc reads the host's zone: TZ unset is /etc/localtime (missing: UTC), TZ empty is
    // UTC, TZ is a zone name, a ':'-prefixed name or path, or a POSIX TZ string.
    const char* tz = std::getenv("TZ");
    if (tz == nullptr) {
      Load l = loadTzif("/etc/localtime", rules);
      if (l == Load::Missing) return SyslogTimeZone();
      if (l == Load::Bad) {
        error = "local: /etc/localtime is not a readable time zone file";
        return std::nullopt;
      }
      return SyslogTimeZone(std::move(rules));
    }
    std::string_view value = tz;
    bool colon = !value.empty() && value[0] == ':';
    if (colon) value.remove_prefix(1);
    if (value.empty() || value == "UTC") return SyslogTimeZone();
    std::string path = value[0] == '/'   ? std::string(value)
                       : zoneName(value) ? zoneDir() + "/" + std::string(value)
                                         : std::string();
    if (!path.empty() && loadTzif(path, rules) == Load::Ok) return SyslogTimeZone(rules);
    if (auto rule = colon ? std::nullopt : parsePosixRule(value)) {
      auto r = std::make_shared<Rules>();
      r->footer = rule;
      r->initial_offset = rule->std_offset;
      return SyslogTimeZone(std::move(r));
    }
    error = "local: the TZ environment variable ('" + std::string(tz) +
            "') is neither a time zone in " + zoneDir() + " nor a POSIX TZ string";
    return std::nullopt;
  }
  if (!zoneName(spec)) {
    error = "'" + shown +
            "' is not a time zone (use local, UTC, an offset such as +05:30 or an IANA name "
            "such as Europe/Berlin)";
    return std::nullopt;
  }
  std::string path = zoneDir() + "/" + shown;
  Load l = loadTzif(path, rules);
  if (l == Load::Ok) return SyslogTimeZone(std::move(rules));
  error = l == Load::Missing
              ? "unknown time zone '" + shown + "' (no " + path +
                    "; use local, UTC, an offset such as +05:30 or an IANA name "
                    "such as Europe/Berlin)"
              : "time zone '" + shown + "': " + path + " is not a readable time zone file";
  return std::nullopt;
}

int SyslogTimeZone::offsetAt(int64_t utc_s) const {
  return rules_ ? rules_->offsetAt(utc_s) : fixed_offset_s_;
}

int64_t SyslogTimeZone::toUtc(int64_t local_s, int64_t near_s) const {
  if (!rules_) return local_s - fixed_offset_s_;
  // The true instant is local_s - offset with |offset| < 2 days, so these two offsets are the
  // ones in force just before and just after it (zones change at most once in four days).
  int before = rules_->offsetAt(local_s - 2 * kDay);
  int after = rules_->offsetAt(local_s + 2 * kDay);
  if (before == after) return local_s - before;
  bool before_ok = rules_->offsetAt(local_s - before) == before;
  bool after_ok = rules_->offsetAt(local_s - after) == after;
  if (before_ok && after_ok) {  // the repeated hour: the occurrence nearer to near_s
    int64_t a = local_s - before, b = local_s - after;
    return std::abs(a - near_s) <= std::abs(b - near_s) ? a : b;
  }
  return after_ok && !before_ok ? local_s - after : local_s - before;
}

}  // namespace sluice

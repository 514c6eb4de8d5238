#include "sources/syslog/syslog_parser.h"

#include <array>
#include <cstdint>
#include <cstring>
#include <string>

namespace sluice {

namespace {

constexpr int64_t kNsPerSec = 1000000000;

const char* const kFacilityNames[24] = {
    "kern",   "user",   "mail",     "daemon", "auth",   "syslog",   "lpr",     "news",
    "uucp",   "cron",   "authpriv", "ftp",    "ntp",    "security", "console", "solaris-cron",
    "local0", "local1", "local2",   "local3", "local4", "local5",   "local6",  "local7"};
const char* const kSeverityNames[8] = {"emerg",   "alert",  "crit", "err",
                                       "warning", "notice", "info", "debug"};
const char* const kMonths[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool isPrintUsAscii(char c) { return c >= 33 && c <= 126; }

// A cursor over the raw message.
struct Cursor {
  std::string_view s;
  size_t pos = 0;
  bool done() const { return pos >= s.size(); }
  char peek(size_t ahead = 0) const { return pos + ahead < s.size() ? s[pos + ahead] : '\0'; }
  bool eat(char c) {
    if (peek() != c || done()) return false;
    ++pos;
    return true;
  }
  std::string_view rest() const { return s.substr(pos < s.size() ? pos : s.size()); }
  // Reads exactly n digits into out.
  bool digits(size_t n, int& out) {
    if (pos + n > s.size()) return false;
    int v = 0;
    for (size_t i = 0; i < n; ++i) {
      char c = s[pos + i];
      if (!isDigit(c)) return false;
      v = v * 10 + (c - '0');
    }
    out = v;
    pos += n;
    return true;
  }
};

unsigned daysInMonth(int64_t y, unsigned m) {
  static const unsigned kDays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

// A valid date and time in any year.
bool validDateTime(int64_t y, int mo, int d, int h, int mi, int s) {
  return mo >= 1 && mo <= 12 && d >= 1 &&
         static_cast<unsigned>(d) <= daysInMonth(y, static_cast<unsigned>(mo)) && h >= 0 &&
         h <= 23 && mi >= 0 && mi <= 59 && s >= 0 && s <= 60;
}

// Years an int64 of nanoseconds since 1970 can hold (with any offset).
bool representableYear(int64_t y) { return y >= 1678 && y <= 2261; }

constexpr SyslogDeviations bit(SyslogDeviation d) { return syslogDeviationBit(d); }

// Seconds since 1970 of a civil date and time read as UTC.
int64_t civilSeconds(int64_t y, int mo, int d, int h, int mi, int s) {
  if (s == 60) s = 59;  // a leap second is kept within its minute
  int64_t days = syslogDaysFromCivil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d));
  return days * 86400 + h * 3600 + mi * 60 + s;
}

int64_t toNs(int64_t y, int mo, int d, int h, int mi, int s, int64_t frac_ns, int offset_s) {
  return (civilSeconds(y, mo, d, h, mi, s) - offset_s) * kNsPerSec + frac_ns;
}

// A civil time without a zone, read in `zone` (the occurrence nearer to now when it is
// ambiguous).
int64_t zonedNs(int64_t y, int mo, int d, int h, int mi, int s, int64_t frac_ns,
                const SyslogTimeZone& zone, int64_t now_ns) {
  return zone.toUtc(civilSeconds(y, mo, d, h, mi, s), now_ns / kNsPerSec) * kNsPerSec + frac_ns;
}

// Reads ".ddd" (1 to max_digits digits) into nanoseconds, digits past the ninth dropped, and
// their number into `digits`; nothing when there is no '.'.
bool fraction(Cursor& c, int64_t& ns, size_t max_digits, size_t& digits) {
  ns = 0;
  digits = 0;
  if (c.peek() != '.' || !isDigit(c.peek(1))) return c.peek() != '.';
  ++c.pos;
  int64_t scale = 100000000;
  while (isDigit(c.peek())) {
    if (++digits > max_digits) return false;
    ns += (c.peek() - '0') * scale;
    scale /= 10;
    ++c.pos;
  }
  return true;
}

// "Z" or "+hh:mm" / "-hh:mm".
bool zoneOffset(Cursor& c, int& offset_s, bool& lowercase) {
  if (c.peek() == 'Z' || c.peek() == 'z') {
    lowercase = lowercase || c.peek() == 'z';
    ++c.pos;
    offset_s = 0;
    return true;
  }
  char sign = c.peek();
  if (sign != '+' && sign != '-') return false;
  ++c.pos;
  int h = 0, m = 0;
  if (!c.digits(2, h) || !c.eat(':') || !c.digits(2, m) || h > 23 || m > 59) return false;
  offset_s = (h * 3600 + m * 60) * (sign == '-' ? -1 : 1);
  return true;
}

// RFC 3339 full date-time. What RFC 5424 forbids in it is accepted and reported in
// `deviations`: a lowercase 't'/'z', second 60, a fraction longer than 6 digits (up to
// max_fraction; nanoseconds kept). A year that cannot be held in int64 nanoseconds is
// TimestampRange with ns = 0. With `local_zone` the offset may be missing and the time is read
// in that zone.
bool isoTimestamp(Cursor& c, int64_t& ns, const SyslogTimeZone* local_zone, int64_t now_ns,
                  size_t max_fraction, SyslogDeviations& deviations) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  if (!c.digits(4, y) || !c.eat('-') || !c.digits(2, mo) || !c.eat('-') || !c.digits(2, d)) {
    return false;
  }
  bool lowercase = c.peek() == 't';
  if (!(c.eat('T') || c.eat('t'))) return false;
  if (!c.digits(2, h) || !c.eat(':') || !c.digits(2, mi) || !c.eat(':') || !c.digits(2, s)) {
    return false;
  }
  int64_t frac = 0;
  size_t frac_digits = 0;
  if (!fraction(c, frac, max_fraction, frac_digits)) return false;
  int offset = 0;
  bool has_offset = zoneOffset(c, offset, lowercase);
  if (!has_offset && local_zone == nullptr) return false;
  if (!validDateTime(y, mo, d, h, mi, s)) return false;
  if (lowercase) deviations |= bit(SyslogDeviation::TimestampCase);
  if (s == 60) deviations |= bit(SyslogDeviation::LeapSecond);
  if (frac_digits > 6) deviations |= bit(SyslogDeviation::FractionDigits);
  if (!representableYear(y)) {
    deviations |= bit(SyslogDeviation::TimestampRange);
    ns = 0;
    return true;
  }
  ns = has_offset ? toNs(y, mo, d, h, mi, s, frac, offset)
                  : zonedNs(y, mo, d, h, mi, s, frac, *local_zone, now_ns);
  return true;
}

// A space-terminated RFC 5424 header field: 1..max PRINTUSASCII, or "-" for nil.
bool headerField(Cursor& c, size_t max, std::string_view& out) {
  size_t start = c.pos;
  while (!c.done() && isPrintUsAscii(c.peek())) ++c.pos;
  size_t len = c.pos - start;
  if (len == 0 || len > max || !c.eat(' ')) return false;
  out = c.s.substr(start, len);
  if (out == "-") out = {};
  return true;
}

bool sdName(Cursor& c, std::string_view& out) {
  size_t start = c.pos;
  while (!c.done()) {
    char ch = c.peek();
    if (!isPrintUsAscii(ch) || ch == '=' || ch == ']' || ch == '"') break;
    ++c.pos;
  }
  size_t len = c.pos - start;
  if (len == 0 || len > 32) return false;
  out = c.s.substr(start, len);
  return true;
}

// Adds a param of the element that starts at sd[element_start], numbering a name repeated in it.
void addSd(std::vector<SyslogSdParam>& sd, size_t element_start, std::string_view id,
           int id_occurrence, std::string_view name, std::string value) {
  int name_occurrence = 1;
  for (size_t i = element_start; i < sd.size(); ++i) {
    if (sd[i].name == name) ++name_occurrence;
  }
  sd.push_back({id, name, std::move(value), id_occurrence, name_occurrence});
}

bool structuredData(Cursor& c, std::vector<SyslogSdParam>& sd, SyslogDeviations& deviations) {
  if (c.eat('-')) return true;
  if (c.peek() != '[') return false;
  while (c.eat('[')) {
    std::string_view id;
    if (!sdName(c, id)) return false;
    // Every element adds at least one entry, in order: the last with this SD-ID has its number.
    int id_occurrence = 1;
    for (const auto& p : sd) {
      if (p.id == id) id_occurrence = p.id_occurrence + 1;
    }
    if (id_occurrence > 1) deviations |= bit(SyslogDeviation::SdRepeatedId);
    size_t element_start = sd.size();
    bool any_param = false;
    while (c.eat(' ')) {
      std::string_view name;
      if (!sdName(c, name) || !c.eat('=') || !c.eat('"')) return false;
      std::string value;
      bool closed = false;
      while (!c.done()) {
        char ch = c.s[c.pos++];
        if (ch == '"') {
          closed = true;
          break;
        }
        if (ch == '\\' && !c.done()) {
          char next = c.peek();
          // Only '"', '\' and ']' are escapes; any other backslash is kept as it is.
          if (next == '"' || next == '\\' || next == ']') {
            value += next;
            ++c.pos;
            continue;
          }
        }
        if (ch == ']') deviations |= bit(SyslogDeviation::SdBracket);
        value += ch;
      }
      if (!closed) return false;
      addSd(sd, element_start, id, id_occurrence, name, std::move(value));
      any_param = true;
    }
    if (!c.eat(']')) return false;
    if (!any_param) addSd(sd, element_start, id, id_occurrence, {}, {});
  }
  return true;
}

void parse5424(Cursor& c, SyslogMessage& m) {
  m.format = SyslogFormat::Rfc5424;
  // TIMESTAMP
  size_t ts_start = c.pos;
  if (c.eat('-')) {
    m.timestamp_ns = 0;
  } else if (!isoTimestamp(c, m.timestamp_ns, nullptr, 0, SIZE_MAX, m.deviations)) {
    m.failure = SyslogFailure::Timestamp;
    return;
  } else {
    m.timestamp_text = c.s.substr(ts_start, c.pos - ts_start);
  }
  if (!c.eat(' ')) {
    m.failure = SyslogFailure::Timestamp;
    return;
  }
  if (!headerField(c, 255, m.host) || !headerField(c, 48, m.app) ||
      !headerField(c, 128, m.procid)) {
    m.failure = SyslogFailure::Header;
    return;
  }
  // MSGID is followed by SP SD; accept a message that ends right after MSGID SP "-"-less? No:
  // SD is mandatory in 5424.
  if (!headerField(c, 32, m.msgid)) {
    m.failure = SyslogFailure::Header;
    return;
  }
  if (!structuredData(c, m.sd, m.deviations)) {
    m.failure = SyslogFailure::StructuredData;
    m.sd.clear();
    return;
  }
  if (c.done()) return;
  if (!c.eat(' ')) {
    m.failure = SyslogFailure::StructuredData;
    m.sd.clear();
    return;
  }
  std::string_view msg = c.rest();
  if (msg.size() >= 3 && std::memcmp(msg.data(), "\xEF\xBB\xBF", 3) == 0) {
    m.bom = true;
    msg.remove_prefix(3);
  }
  m.body = msg;
}

int monthIndex(std::string_view s) {
  for (int i = 0; i < 12; ++i) {
    if (s.size() >= 3 && s.substr(0, 3) == kMonths[i]) return i + 1;
  }
  return 0;
}

// The year for a month/day without one: the latest of next, this and last year that is not
// more than kFutureTolerance ahead of now, both read in `zone`. So "Dec 31 23:59:59" received on
// Jan 1 is last year's, "Jan  1 00:00:01" from a device a few seconds ahead on Dec 31 is next
// year's, and a month that has not come yet this year is last year's.
int64_t inferYear(int mo, int d, int h, int mi, int s, int64_t now_ns, const SyslogTimeZone& zone) {
  constexpr int64_t kFutureTolerance = int64_t{30} * 86400 * kNsPerSec;
  int64_t now_s = now_ns / kNsPerSec;
  int64_t local_s = now_s + zone.offsetAt(now_s);
  int64_t year = 0;
  unsigned month = 0, day = 0;
  syslogCivilFromDays(local_s >= 0 ? local_s / 86400 : (local_s - 86399) / 86400, year, month, day);
  for (int64_t y = year + 1; y >= year - 4; --y) {
    if (static_cast<unsigned>(d) > daysInMonth(y, static_cast<unsigned>(mo))) continue;
    if (zonedNs(y, mo, d, h, mi, s, 0, zone, now_ns) <= now_ns + kFutureTolerance) return y;
  }
  return year;
}

// "Mmm dd hh:mm:ss[.frac][ yyyy][ ZONE][:]" with dd space- or zero-padded; Cisco may also put
// the year before the time ("Mar  1 2024 18:48:50"). Read in `zone` unless ZONE is UTC or GMT.
bool bsdTimestamp(Cursor& c, int64_t& ns, int64_t now_ns, const SyslogTimeZone& zone,
                  SyslogDeviations& deviations) {
  Cursor t = c;
  int mo = monthIndex(t.rest());
  if (mo == 0) return false;
  t.pos += 3;
  if (!t.eat(' ')) return false;
  t.eat(' ');
  int d = 0;
  if (isDigit(t.peek()) && isDigit(t.peek(1))) {
    t.digits(2, d);
  } else if (!t.digits(1, d)) {
    return false;
  }
  if (!t.eat(' ')) return false;
  int year = 0;
  if (isDigit(t.peek()) && isDigit(t.peek(3)) && t.peek(4) == ' ' && isDigit(t.peek(5))) {
    t.digits(4, year);
    t.eat(' ');
  }
  int h = 0, mi = 0, s = 0;
  if (!t.digits(2, h) || !t.eat(':') || !t.digits(2, mi) || !t.eat(':') || !t.digits(2, s)) {
    return false;
  }
  int64_t frac = 0;
  size_t frac_digits = 0;
  if (!fraction(t, frac, 9, frac_digits)) return false;
  if (year == 0 && t.peek() == ' ' && isDigit(t.peek(1)) && isDigit(t.peek(2)) &&
      isDigit(t.peek(3)) && isDigit(t.peek(4)) && (t.peek(5) == ' ' || t.peek(5) == ':')) {
    ++t.pos;
    t.digits(4, year);
  }
  if (h > 23 || mi > 59 || s > 60 || d < 1 || d > 31) return false;
  // A zone abbreviation ("UTC", "CET"): only UTC/GMT are understood; others are skipped and the
  // time is read in `zone`.
  bool utc = false;
  if (t.peek() == ' ' && t.peek(1) >= 'A' && t.peek(1) <= 'Z') {
    size_t p = t.pos + 1;
    while (p < t.s.size() && t.s[p] >= 'A' && t.s[p] <= 'Z') ++p;
    size_t len = p - t.pos - 1;
    if (len >= 3 && len <= 5 && (p == t.s.size() || t.s[p] == ':' || t.s[p] == ' ')) {
      // Only take it when it is followed by ':' (Cisco) or is UTC/GMT: "host" words are lower.
      std::string_view word = t.s.substr(t.pos + 1, len);
      utc = word == "UTC" || word == "GMT";
      if (utc || (p < t.s.size() && t.s[p] == ':')) t.pos = p;
    }
  }
  const SyslogTimeZone kUtc;
  const SyslogTimeZone& in = utc ? kUtc : zone;
  if (year == 0) year = static_cast<int>(inferYear(mo, d, h, mi, s > 59 ? 59 : s, now_ns, in));
  if (!validDateTime(year, mo, d, h, mi, s)) return false;
  c = t;
  if (!representableYear(year)) {  // a year that was sent ("Jan 15 1024 10:00:00")
    deviations |= bit(SyslogDeviation::TimestampRange);
    ns = 0;
    return true;
  }
  ns = zonedNs(year, mo, d, h, mi, s, frac, in, now_ns);
  return true;
}

// A syslog tag: "name[pid]:" or "name:" at the start of the content.
void parseTag(std::string_view content, SyslogMessage& m) {
  size_t i = 0;
  while (i < content.size() && i <= 48) {
    char ch = content[i];
    if (ch == ':' || ch == '[' || ch == ' ' || !isPrintUsAscii(ch)) break;
    ++i;
  }
  if (i == 0 || i > 48 || i >= content.size()) {
    m.body = content;
    return;
  }
  std::string_view app = content.substr(0, i);
  std::string_view pid;
  if (content[i] == '[') {
    size_t close = content.find(']', i);
    if (close == std::string_view::npos || close - i - 1 > 128 || close - i - 1 == 0) {
      m.body = content;
      return;
    }
    pid = content.substr(i + 1, close - i - 1);
    i = close + 1;
    // "sshd[123] message" without a colon still names the program.
    if (i < content.size() && content[i] == ':') ++i;
  } else if (content[i] == ':') {
    ++i;
  } else {
    m.body = content;
    return;
  }
  m.app = app;
  m.procid = pid;
  if (i < content.size() && content[i] == ' ') ++i;
  m.body = content.substr(i);
}

bool looksLikeTag(std::string_view token) {
  return !token.empty() && (token.back() == ':' || token.find('[') != std::string_view::npos);
}

void parse3164(Cursor& c, SyslogMessage& m, int64_t now_ns, const SyslogTimeZone& zone) {
  m.format = SyslogFormat::Rfc3164;
  // Cisco: "<189>52: *Mar  1 18:48:50.483 UTC: %SYS-5-CONFIG_I: ..."
  {
    size_t p = c.pos;
    while (p < c.s.size() && isDigit(c.s[p])) ++p;
    if (p > c.pos && p - c.pos <= 10 && p + 1 < c.s.size() && c.s[p] == ':' && c.s[p + 1] == ' ') {
      m.sequence = c.s.substr(c.pos, p - c.pos);
      c.pos = p + 2;
    }
  }
  size_t ts_start = c.pos;
  bool marked = c.peek() == '*' || c.peek() == '.';  // Cisco: clock not synchronised / was
  if (marked) ++c.pos;
  bool have_ts = false;
  bool ts_colon = false;
  // RFC 5424's rules for the ISO timestamp do not apply here: only an unusable year is reported.
  SyslogDeviations ts_deviations = 0;
  if (isDigit(c.peek())) {
    Cursor t = c;
    if (isoTimestamp(t, m.timestamp_ns, &zone, now_ns, 9, ts_deviations)) {
      c = t;
      have_ts = true;
    }
  } else if (bsdTimestamp(c, m.timestamp_ns, now_ns, zone, ts_deviations)) {
    have_ts = true;
  }
  m.deviations |= ts_deviations & bit(SyslogDeviation::TimestampRange);
  if (!have_ts) {
    c.pos = ts_start;
    m.timestamp_ns = 0;
  } else {
    m.timestamp_text = c.s.substr(ts_start + (marked ? 1 : 0), c.pos - ts_start - (marked ? 1 : 0));
    if (c.eat(':')) ts_colon = true;
    c.eat(' ');
  }
  std::string_view rest = c.rest();
  // HOSTNAME: only after a timestamp, and only when the next word is not already the tag.
  if (have_ts && !ts_colon) {
    size_t sp = rest.find(' ');
    if (sp != std::string_view::npos && sp > 0) {
      std::string_view token = rest.substr(0, sp);
      bool printable = true;
      for (char ch : token) printable = printable && isPrintUsAscii(ch);
      if (printable && !looksLikeTag(token)) {
        m.host = token;
        rest.remove_prefix(sp + 1);
      }
    }
  }
  parseTag(rest, m);
}

}  // namespace

const char* syslogFailureName(SyslogFailure f) {
  switch (f) {
    case SyslogFailure::None:
      return "none";
    case SyslogFailure::Empty:
      return "empty";
    case SyslogFailure::Pri:
      return "pri";
    case SyslogFailure::Timestamp:
      return "timestamp";
    case SyslogFailure::Header:
      return "header";
    case SyslogFailure::StructuredData:
      return "structured_data";
  }
  return "unknown";
}

const char* syslogFacilityName(int facility) {
  return facility >= 0 && facility < 24 ? kFacilityNames[facility] : "unknown";
}

const char* syslogSeverityName(int severity) {
  return severity >= 0 && severity < 8 ? kSeverityNames[severity] : "unknown";
}

int64_t syslogDaysFromCivil(int64_t y, unsigned m, unsigned d) {
  // Howard Hinnant's days_from_civil.
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void syslogCivilFromDays(int64_t days, int64_t& y, unsigned& m, unsigned& d) {
  // Howard Hinnant's civil_from_days.
  const int64_t z = days + 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  d = static_cast<unsigned>(doy - (153 * mp + 2) / 5 + 1);
  m = static_cast<unsigned>(mp < 10 ? mp + 3 : mp - 9);
  y = yoe + era * 400 + (m <= 2 ? 1 : 0);
}

const char* syslogDeviationName(SyslogDeviation d) {
  switch (d) {
    case SyslogDeviation::PriMissing:
      return "pri_missing";
    case SyslogDeviation::Version:
      return "version";
    case SyslogDeviation::TimestampCase:
      return "timestamp_case";
    case SyslogDeviation::LeapSecond:
      return "leap_second";
    case SyslogDeviation::FractionDigits:
      return "fraction_digits";
    case SyslogDeviation::TimestampRange:
      return "timestamp_range";
    case SyslogDeviation::SdBracket:
      return "sd_bracket";
    case SyslogDeviation::SdRepeatedId:
      return "sd_repeated_id";
  }
  return "unknown";
}

std::string syslogDeviationMetricName(SyslogDeviation d) {
  std::string camel = "Deviation";
  bool upper = true;
  for (const char* p = syslogDeviationName(d); *p != '\0'; ++p) {
    if (*p == '_') {
      upper = true;
      continue;
    }
    camel += upper ? static_cast<char>(*p - 'a' + 'A') : *p;
    upper = false;
  }
  return camel + "Count";
}

SyslogFailure syslogDeviationFailure(SyslogDeviation d) {
  switch (d) {
    case SyslogDeviation::PriMissing:
      return SyslogFailure::Pri;
    case SyslogDeviation::Version:
      return SyslogFailure::Header;
    case SyslogDeviation::TimestampCase:
    case SyslogDeviation::LeapSecond:
    case SyslogDeviation::FractionDigits:
      return SyslogFailure::Timestamp;
    case SyslogDeviation::TimestampRange:
      return SyslogFailure::None;
    case SyslogDeviation::SdBracket:
    case SyslogDeviation::SdRepeatedId:
      return SyslogFailure::StructuredData;
  }
  return SyslogFailure::None;
}

SyslogMessage parseSyslog(std::string_view raw, int64_t now_ns, const SyslogTimeZone& rfc3164_zone,
                          bool strict) {
  SyslogMessage m;
  Cursor c{raw};
  // Leading whitespace (a stray LF between frames) is not part of the message.
  while (!c.done() &&
         (c.peek() == ' ' || c.peek() == '\t' || c.peek() == '\r' || c.peek() == '\n')) {
    ++c.pos;
  }
  if (c.done()) {
    m.failure = SyslogFailure::Empty;
    return m;
  }
  // No PRI at all: RFC 3164 4.3.3 has a relay give it PRI 13 (user.notice) and keep the whole
  // message as its content.
  if (c.peek() != '<') {
    m.deviations |= bit(SyslogDeviation::PriMissing);
    if (strict) {
      m.failure = SyslogFailure::Pri;
      return m;
    }
    m.facility = 1;
    m.severity = 5;
    parse3164(c, m, now_ns, rfc3164_zone);
    return m;
  }
  // PRI: "<" 1*3DIGIT ">", 0..191.
  c.eat('<');
  int pri = 0;
  size_t n = 0;
  while (isDigit(c.peek()) && n < 3) {
    pri = pri * 10 + (c.peek() - '0');
    ++c.pos;
    ++n;
  }
  if (n == 0 || !c.eat('>') || pri > 191) {
    m.failure = SyslogFailure::Pri;
    return m;
  }
  m.facility = pri / 8;
  m.severity = pri % 8;
  // VERSION: 1-3 digits, the first not 0, then SP. "<13>1 ..." is 5424; "<13>52: ..." is not.
  size_t p = c.pos;
  while (p < raw.size() && isDigit(raw[p]) && p - c.pos < 3) ++p;
  if (p > c.pos && raw[c.pos] != '0' && p < raw.size() && raw[p] == ' ') {
    int v = 0;
    for (size_t i = c.pos; i < p; ++i) v = v * 10 + (raw[i] - '0');
    m.version = v;
    // Only VERSION 1 exists; a later one is read as 1 (its header shows what was sent).
    if (v != 1) m.deviations |= bit(SyslogDeviation::Version);
    c.pos = p + 1;
    parse5424(c, m);
  } else {
    parse3164(c, m, now_ns, rfc3164_zone);
  }
  if (strict && m.failure == SyslogFailure::None) {
    // The first deviation in the message that strict mode refuses gives the failure kind.
    for (int k = 0; k < kSyslogDeviationKinds; ++k) {
      auto d = static_cast<SyslogDeviation>(k);
      if ((m.deviations & bit(d)) != 0 && syslogDeviationFailure(d) != SyslogFailure::None) {
        m.failure = syslogDeviationFailure(d);
        break;
      }
    }
  }
  if (m.failure != SyslogFailure::None) {
    // Keep only what is certain: PRI, and the deviations (in strict mode, the reason).
    SyslogMessage bad;
    bad.failure = m.failure;
    bad.facility = m.facility;
    bad.severity = m.severity;
    bad.deviations = m.deviations;
    return bad;
  }
  return m;
}

SyslogFailure addSyslogEvent(Batch& batch, std::string_view raw, bool incomplete,
                             int64_t receive_ns, const SyslogEventOptions& options) {
  SyslogMessage m =
      parseSyslog(raw, receive_ns, options.rfc3164_zone ? *options.rfc3164_zone : SyslogTimeZone(),
                  options.strict);
  if (options.deviations != nullptr) *options.deviations = m.deviations;
  bool ok = m.failure == SyslogFailure::None;
  uint32_t e =
      batch.add(ok ? m.body : raw, ok && m.timestamp_ns != 0 ? m.timestamp_ns : receive_ns);
  const char* format = !ok ? "invalid" : m.format == SyslogFormat::Rfc5424 ? "rfc5424" : "rfc3164";
  batch.setHeader(e, "syslog.format", format);
  if (m.facility >= 0) {
    char buf[4];
    auto num = [&buf](int v) {
      int len = 0;
      if (v >= 100) buf[len++] = static_cast<char>('0' + v / 100);
      if (v >= 10) buf[len++] = static_cast<char>('0' + v / 10 % 10);
      buf[len++] = static_cast<char>('0' + v % 10);
      return std::string_view(buf, static_cast<size_t>(len));
    };
    batch.setHeader(e, "syslog.facility", num(m.facility));
    batch.setHeader(e, "syslog.facility_name", syslogFacilityName(m.facility));
    batch.setHeader(e, "syslog.severity", num(m.severity));
    batch.setHeader(e, "syslog.severity_name", syslogSeverityName(m.severity));
    if (m.version > 0) batch.setHeader(e, "syslog.version", num(m.version));
  }
  if (!m.timestamp_text.empty()) batch.setHeader(e, "timestamp", m.timestamp_text);
  if (!m.host.empty()) batch.setHeader(e, "host", m.host);
  if (!m.app.empty()) batch.setHeader(e, "app", m.app);
  if (!m.procid.empty()) batch.setHeader(e, "procid", m.procid);
  if (!m.msgid.empty()) batch.setHeader(e, "msgid", m.msgid);
  if (!m.sequence.empty()) batch.setHeader(e, "syslog.sequence", m.sequence);
  if (!m.sd.empty()) {
    std::string key;
    for (const auto& p : m.sd) {
      key.assign("sd.");
      key.append(p.id);
      if (p.id_occurrence > 1) key.append("#").append(std::to_string(p.id_occurrence));
      if (!p.name.empty()) {
        key += '.';
        key.append(p.name);
        if (p.name_occurrence > 1) key.append("#").append(std::to_string(p.name_occurrence));
      }
      batch.setHeader(e, key, p.value);
    }
  }
  if (!ok) batch.setHeader(e, "syslog.invalid", syslogFailureName(m.failure));
  if (m.deviations != 0) {
    std::string names;
    for (int k = 0; k < kSyslogDeviationKinds; ++k) {
      auto d = static_cast<SyslogDeviation>(k);
      if ((m.deviations & bit(d)) == 0) continue;
      if (!names.empty()) names += ',';
      names += syslogDeviationName(d);
    }
    batch.setHeader(e, "syslog.deviation", names);
  }
  if (incomplete) batch.setHeader(e, "syslog.incomplete", "true");
  if (!options.client_ip.empty()) {
    batch.setHeader(e, "client.ip", options.client_ip);
    batch.setHeader(e, "client.port", options.client_port);
  }
  if (options.raw_header) batch.setHeader(e, "syslog.raw", raw);
  return m.failure;
}

}  // namespace sluice

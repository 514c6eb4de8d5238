// The rfc3164_timezone option: resolving zones (UTC, offsets, IANA names, the host's zone from
// TZ) and reading zone-less RFC 3164 timestamps in them.

#include "sources/syslog/syslog_timezone.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <ctime>
#include <optional>
#include <string>

#include "sources/syslog/syslog_parser.h"

namespace sluice {
namespace {

int64_t utc(int64_t y, unsigned mo, unsigned d, int h, int mi, int s) {
  return (syslogDaysFromCivil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s) * 1000000000;
}

const int64_t kNow = utc(2026, 11, 25, 12, 0, 0);

SyslogTimeZone zone(const std::string& spec) {
  std::string error;
  auto z = SyslogTimeZone::resolve(spec, error);
  INFO(spec, ": ", error);
  REQUIRE(z.has_value());
  return *z;
}

int64_t ts(const std::string& raw, const SyslogTimeZone& z, int64_t now = kNow) {
  SyslogMessage m = parseSyslog(raw, now, z);
  REQUIRE(m.failure == SyslogFailure::None);
  return m.timestamp_ns;
}

// Sets TZ (nullopt: unsets it) for the test process and restores it afterwards.
class ScopedTz {
 public:
  explicit ScopedTz(std::optional<std::string> value) {
    const char* old = std::getenv("TZ");
    if (old != nullptr) old_ = old;
    set(value);
  }
  ~ScopedTz() { set(old_); }
  ScopedTz(const ScopedTz&) = delete;
  ScopedTz& operator=(const ScopedTz&) = delete;

 private:
  static void set(const std::optional<std::string>& value) {
    if (value) {
      setenv("TZ", value->c_str(), 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  }
  std::optional<std::string> old_;
};

// glibc's offset at `utc_s` under the current TZ: the reference the loader must agree with.
int libcOffset(int64_t utc_s) {
  time_t t = static_cast<time_t>(utc_s);
  struct tm tm {};
  localtime_r(&t, &tm);
  return static_cast<int>(tm.tm_gmtoff);
}

TEST_CASE("syslog timezone: UTC and fixed offsets") {
  const std::string msg = "<13>Dec  1 13:45:00 host app: x";
  CHECK(ts(msg, zone("UTC")) == utc(2026, 12, 1, 13, 45, 0));
  CHECK(ts(msg, SyslogTimeZone()) == utc(2026, 12, 1, 13, 45, 0));
  CHECK(ts(msg, zone("+05:30")) == utc(2026, 12, 1, 8, 15, 0));
  CHECK(ts(msg, zone("+0530")) == utc(2026, 12, 1, 8, 15, 0));
  CHECK(ts(msg, zone("-08:00")) == utc(2026, 12, 1, 21, 45, 0));
  CHECK(ts(msg, zone("-08")) == utc(2026, 12, 1, 21, 45, 0));
  std::string error;
  for (const char* bad : {"+5:30", "+24:00", "+05:60", "+05:", "05:30", "+05:30x", ""}) {
    INFO(bad);
    CHECK_FALSE(SyslogTimeZone::resolve(bad, error));
  }
  CHECK(error.find("not a time zone") != std::string::npos);
}

TEST_CASE("syslog timezone: an IANA name, by the message's own date (summer, winter, DST)") {
  SyslogTimeZone berlin = zone("Europe/Berlin");
  // The offset of the message's date, not of the receive time (November: CET).
  CHECK(ts("<13>Jul 15 12:00:00 host app: x", berlin) == utc(2026, 7, 15, 10, 0, 0));
  CHECK(ts("<13>Jan 15 12:00:00 host app: x", berlin) == utc(2026, 1, 15, 11, 0, 0));
  // Past the last transition of the file: the POSIX rule of its footer.
  CHECK(ts("<13>2100-07-01T12:00:00 host app: x", berlin) == utc(2100, 7, 1, 10, 0, 0));
  CHECK(ts("<13>2100-12-01T12:00:00 host app: x", berlin) == utc(2100, 12, 1, 11, 0, 0));
  // 02:30 on 2026-03-29 does not exist: read with the offset before the gap (CET).
  CHECK(ts("<13>Mar 29 02:30:00 host app: x", berlin) == utc(2026, 3, 29, 1, 30, 0));
  // 02:30 on 2026-10-25 happens twice: the one nearer to the receive time.
  CHECK(ts("<13>Oct 25 02:30:00 host app: x", berlin, utc(2026, 10, 25, 0, 31, 0)) ==
        utc(2026, 10, 25, 0, 30, 0));
  CHECK(ts("<13>Oct 25 02:30:00 host app: x", berlin, utc(2026, 10, 25, 1, 31, 0)) ==
        utc(2026, 10, 25, 1, 30, 0));
  // The southern hemisphere: DST over new year.
  SyslogTimeZone sydney = zone("Australia/Sydney");
  CHECK(ts("<13>Jan 15 12:00:00 host app: x", sydney) == utc(2026, 1, 15, 1, 0, 0));
  CHECK(ts("<13>Jul 15 12:00:00 host app: x", sydney) == utc(2026, 7, 15, 2, 0, 0));
  std::string error;
  CHECK_FALSE(SyslogTimeZone::resolve("Europe/Berln", error));
  CHECK(error.find("unknown time zone 'Europe/Berln'") != std::string::npos);
  CHECK_FALSE(SyslogTimeZone::resolve("../../etc/passwd", error));
  CHECK_FALSE(SyslogTimeZone::resolve("/etc/passwd", error));
  // CCTZ's own prefixes are not zone names ("libc:" would go through the process's TZ).
  CHECK_FALSE(SyslogTimeZone::resolve("libc:localtime", error));
  CHECK_FALSE(SyslogTimeZone::resolve("file:/etc/localtime", error));
}

TEST_CASE("syslog timezone: local follows TZ, with DST by the message's own date") {
  {
    ScopedTz tz("Europe/Berlin");
    SyslogTimeZone local = zone("local");
    CHECK(ts("<13>Jul 15 12:00:00 host app: x", local) == utc(2026, 7, 15, 10, 0, 0));
    CHECK(ts("<13>Jan 15 12:00:00 host app: x", local) == utc(2026, 1, 15, 11, 0, 0));
  }
  {
    ScopedTz tz(":America/New_York");
    SyslogTimeZone local = zone("local");
    CHECK(ts("<13>Jul 15 12:00:00 host app: x", local) == utc(2026, 7, 15, 16, 0, 0));
    CHECK(ts("<13>Jan 15 12:00:00 host app: x", local) == utc(2026, 1, 15, 17, 0, 0));
  }
  {
    ScopedTz tz(":/usr/share/zoneinfo/Asia/Tokyo");  // a zone file's path
    CHECK(ts("<13>Jul 15 12:00:00 host app: x", zone("local")) == utc(2026, 7, 15, 3, 0, 0));
  }
  for (const char* posix : {"CET-1CEST,M3.5.0,M10.5.0/3", "<+0330>-3:30", "UTC0"}) {
    // A POSIX TZ string: CCTZ cannot load it, so it is a config error naming the way out, not
    // a silent UTC.
    ScopedTz tz(posix);
    std::string error;
    INFO(posix);
    CHECK_FALSE(SyslogTimeZone::resolve("local", error));
    CHECK(error.find("TZ environment variable ('" + std::string(posix) + "')") !=
          std::string::npos);
    CHECK(error.find("POSIX TZ strings") != std::string::npos);
  }
  {
    ScopedTz tz("");  // empty TZ is UTC, as for glibc
    CHECK(ts("<13>Jul 15 12:00:00 host app: x", zone("local")) == utc(2026, 7, 15, 12, 0, 0));
  }
  {
    ScopedTz tz("Not/AZone");
    std::string error;
    CHECK_FALSE(SyslogTimeZone::resolve("local", error));
    CHECK(error.find("TZ environment variable ('Not/AZone')") != std::string::npos);
  }
  // Whatever the zone, CCTZ agrees with glibc's localtime_r from 1900 to 2200, around every
  // DST change (hourly samples through March/April and October/November).
  for (const char* name : {"Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata",
                           "America/Sao_Paulo", "Pacific/Chatham", "Europe/Dublin",
                           "Africa/Casablanca", "Etc/GMT+5", "America/St_Johns", "Asia/Tehran"}) {
    ScopedTz tz(name);
    SyslogTimeZone local = zone("local");
    int mismatches = 0;
    for (int64_t y = 1900; y <= 2200 && mismatches < 3; y += (y < 2000 || y > 2040) ? 7 : 1) {
      for (unsigned mo : {1u, 3u, 4u, 7u, 10u, 11u}) {
        int64_t start = syslogDaysFromCivil(y, mo, 1) * 86400;
        int64_t step = mo == 1 || mo == 7 ? 86400 * 7 : 3600;
        for (int64_t t = start; t < start + 31 * 86400 && mismatches < 3; t += step) {
          if (local.offsetAt(t) != libcOffset(t)) {
            ++mismatches;
            INFO(std::string(name), " at ", t, ": ", local.offsetAt(t), " != ", libcOffset(t));
            CHECK(local.offsetAt(t) == libcOffset(t));
          }
        }
      }
    }
    CHECK(mismatches == 0);
  }
  {
    ScopedTz tz(std::nullopt);  // unset: /etc/localtime, as localtime_r reads it
    SyslogTimeZone local = zone("local");
    for (int64_t t : {int64_t{0}, utc(2026, 1, 15, 0, 0, 0) / 1000000000,
                      utc(2026, 7, 15, 0, 0, 0) / 1000000000}) {
      CHECK(local.offsetAt(t) == libcOffset(t));
    }
  }
}

TEST_CASE("syslog timezone: a zone or offset in the message wins over the option") {
  SyslogTimeZone kolkata = zone("+05:30");
  // Cisco's "UTC:" and a "GMT" word.
  CHECK(ts("<189>52: *Mar  1 18:48:50 UTC: %SYS-5-CONFIG_I: x", kolkata) ==
        utc(2026, 3, 1, 18, 48, 50));
  CHECK(ts("<13>Dec  1 13:45:00 GMT host app: x", kolkata) == utc(2026, 12, 1, 13, 45, 0));
  // Another zone word is skipped: the option's zone applies.
  CHECK(ts("<189>52: Mar  1 18:48:50 CET: %SYS-5-CONFIG_I: x", kolkata) ==
        utc(2026, 3, 1, 13, 18, 50));
  // ISO timestamps with an offset or Z keep it; without one they are read in the option's zone.
  CHECK(ts("<13>2026-11-25T10:20:30+01:00 host app: x", kolkata) == utc(2026, 11, 25, 9, 20, 30));
  CHECK(ts("<13>2026-11-25T10:20:30Z host app: x", kolkata) == utc(2026, 11, 25, 10, 20, 30));
  CHECK(ts("<13>2026-11-25T10:20:30 host app: x", kolkata) == utc(2026, 11, 25, 4, 50, 30));
  // RFC 5424 is unaffected.
  CHECK(ts("<13>1 2026-11-25T10:20:30Z host app - - - x", kolkata) ==
        utc(2026, 11, 25, 10, 20, 30));
}

TEST_CASE("syslog timezone: year inference around new year in the chosen zone") {
  SyslogTimeZone kolkata = zone("+05:30");
  // Sent at 23:59:59 local on Dec 31, received just after local midnight (18:30 UTC): 2026.
  int64_t after_local_midnight = utc(2026, 12, 31, 18, 30, 5);
  CHECK(ts("<13>Dec 31 23:59:59 host app: x", kolkata, after_local_midnight) ==
        utc(2026, 12, 31, 18, 29, 59));
  // A device slightly ahead, received at 23:59:58 local on Dec 31: next year's Jan 1.
  int64_t before_local_midnight = utc(2026, 12, 31, 18, 29, 58);
  CHECK(ts("<13>Jan  1 00:00:01 host app: x", kolkata, before_local_midnight) ==
        utc(2026, 12, 31, 18, 30, 1));
  // The 30-day tolerance is measured in the zone: Dec 30 20:00 at -08:00 on Dec 1 00:00 UTC is
  // 30 days and 4 hours ahead, so last year's (read as UTC it would be within 30 days).
  SyslogTimeZone pacific = zone("-08:00");
  CHECK(ts("<13>Dec 30 20:00:00 host app: x", pacific, utc(2026, 12, 1, 0, 0, 0)) ==
        utc(2025, 12, 31, 4, 0, 0));
  // Berlin: Jan 1 00:30 CET is Dec 31 23:30 UTC; received then, it is this new year's.
  SyslogTimeZone berlin = zone("Europe/Berlin");
  CHECK(ts("<13>Jan  1 00:30:00 host app: x", berlin, utc(2026, 12, 31, 23, 30, 1)) ==
        utc(2026, 12, 31, 23, 30, 0));
}

}  // namespace
}  // namespace sluice

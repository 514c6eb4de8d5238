#pragma once
// The time zone in which RFC 3164 timestamps without a zone ("Dec  1 13:45:00") are read.
//
// Resolved once, when the configuration is loaded, and immutable afterwards. Zones come from
// Google's CCTZ (Debian's libcctz), which reads the system's TZif files itself and, unlike
// localtime_r/mktime, never depends on the process-wide TZ: lookups are thread-safe, so the loop
// thread can use it freely. (libstdc++ 12 has no std::chrono::locate_zone.)
//
// Specifications (the rfc3164_timezone option):
//   local          the host's zone: the TZ environment variable (a zone name, ':name' or a TZif
//                  path; empty is UTC), else /etc/localtime, else UTC. A TZ value CCTZ cannot
//                  load (an unknown name, a POSIX TZ string) is an error, not a silent UTC.
//   UTC            (also utc, Z)
//   +05:30, -0800  a fixed offset east of UTC
//   Europe/Berlin  an IANA name, read from $TZDIR or /usr/share/zoneinfo

#include <cctz/time_zone.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice {

class SyslogTimeZone {
 public:
  SyslogTimeZone() = default;  // UTC
  static SyslogTimeZone fixed(int offset_s);
  // Resolves a specification (see above); nullopt with the reason in `error` for an unknown or
  // unreadable zone or a malformed offset.
  static std::optional<SyslogTimeZone> resolve(std::string_view spec, std::string& error);

  // Seconds east of UTC at the instant `utc_s` (seconds since 1970).
  int offsetAt(int64_t utc_s) const;
  // The instant of the local wall-clock time `local_s` (seconds since 1970 of the civil time,
  // read as if it were UTC). A time that occurs twice (the hour repeated when DST ends) is the
  // occurrence nearer to `near_s`; a time skipped by a DST gap is read with the offset in force
  // before the gap (02:30 on the spring-forward day is 01:30 standard time + 1 hour).
  int64_t toUtc(int64_t local_s, int64_t near_s) const;

 private:
  explicit SyslogTimeZone(cctz::time_zone tz) : tz_(tz) {}
  cctz::time_zone tz_;  // default: UTC
};

}  // namespace sluice

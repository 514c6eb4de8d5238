#pragma once
// The time zone in which RFC 3164 timestamps without a zone ("Dec  1 13:45:00") are read.
//
// Resolved once, when the configuration is loaded, and immutable afterwards: lookups read no
// files, take no locks and never touch the process's TZ, so the loop thread can use it freely.
// libstdc++ 12 has no std::chrono::locate_zone and localtime_r/mktime depend on the global TZ,
// so zones are read from the system's TZif files (RFC 8536) by the small loader in
// syslog_timezone.cpp, with the POSIX TZ rule of the file's footer for dates past its last
// transition.
//
// Specifications (the rfc3164_timezone option):
//   local          the host's zone: the TZ environment variable (a zone name, a TZif path or a
//                  POSIX TZ string, as glibc reads it), else /etc/localtime, else UTC
//   UTC            (also utc, Z)
//   +05:30, -0800  a fixed offset east of UTC
//   Europe/Berlin  an IANA name, read from $TZDIR or /usr/share/zoneinfo

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace sluice {

class SyslogTimeZone {
 public:
  SyslogTimeZone() = default;  // UTC
  static SyslogTimeZone fixed(int offset_s);
  // Resolves a specification (see above); nullopt with the reason in `error` for an unknown
  // zone, an unreadable or malformed zone file, or a malformed offset.
  static std::optional<SyslogTimeZone> resolve(std::string_view spec, std::string& error);

  // Seconds east of UTC at the instant `utc_s` (seconds since 1970).
  int offsetAt(int64_t utc_s) const;
  // The instant of the local wall-clock time `local_s` (seconds since 1970 of the civil time,
  // read as if it were UTC). A time that occurs twice (the hour repeated when DST ends) is the
  // occurrence nearer to `near_s`; a time skipped by a DST gap is read with the offset in force
  // before the gap (02:30 on the spring-forward day is 01:30 standard time + 1 hour).
  int64_t toUtc(int64_t local_s, int64_t near_s) const;

  struct Rules;

 private:
  explicit SyslogTimeZone(std::shared_ptr<const Rules> rules) : rules_(std::move(rules)) {}
  std::shared_ptr<const Rules> rules_;  // null: a fixed offset
  int fixed_offset_s_ = 0;
};

}  // namespace sluice

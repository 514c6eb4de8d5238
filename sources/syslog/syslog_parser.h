#pragma once
// Syslog message parsing: RFC 5424 in full and RFC 3164 as devices really send it.
//
// Pure functions, no I/O, no clock: the caller passes "now" (for RFC 3164's missing year). The
// result points into the raw message (string_views) except for structured-data values, which
// are unescaped copies. A message that cannot be parsed is not lost: parseSyslog() reports the
// kind of failure and the caller keeps the whole message as the body (see addSyslogEvent).
//
// Headers set by addSyslogEvent (absent when the message has no such field, or "-" in 5424):
//   syslog.format         rfc5424 | rfc3164 | invalid
//   syslog.facility       0..23            syslog.facility_name  kern, user, ... local7
//   syslog.severity       0..7             syslog.severity_name  emerg, alert, ... debug
//   syslog.version        RFC 5424 VERSION (1)
//   timestamp             the TIMESTAMP as sent; the event time is its parsed value
//   host, app, procid, msgid
//   sd.<SD-ID>.<PARAM>    RFC 5424 structured data, values unescaped; a repeated PARAM joins
//                         its values with ','; an SD-ELEMENT without params gives sd.<SD-ID> = ""
//   syslog.sequence       Cisco-style sequence number ("52: *Mar  1 ...")
//   syslog.invalid        the failure kind (pri, timestamp, header, structured_data, empty)
//   syslog.incomplete     "true" when the message was cut at max_message_size

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/event.h"
#include "sources/syslog/syslog_timezone.h"

namespace sluice {

enum class SyslogFormat { Rfc5424, Rfc3164, Invalid };

// Why a message could not be parsed. Each has a stable name (syslogFailureName) used for the
// syslog.invalid header and the ParseFailure<Kind>Count metrics.
enum class SyslogFailure {
  None,
  Empty,           // nothing but whitespace
  Pri,             // no <PRI>, or PRI out of range
  Timestamp,       // RFC 5424 TIMESTAMP malformed
  Header,          // RFC 5424 HOSTNAME / APP-NAME / PROCID / MSGID malformed or missing
  StructuredData,  // RFC 5424 STRUCTURED-DATA malformed
};
constexpr int kSyslogFailureKinds = 6;
const char* syslogFailureName(SyslogFailure f);

struct SyslogSdParam {
  std::string_view id;
  std::string_view name;  // empty for an SD-ELEMENT without params
  std::string value;
};

struct SyslogMessage {
  SyslogFormat format = SyslogFormat::Invalid;
  SyslogFailure failure = SyslogFailure::None;
  int facility = -1;
  int severity = -1;
  int version = 0;
  std::string_view timestamp_text;
  int64_t timestamp_ns = 0;  // 0: no usable timestamp (nil, missing); use the receive time
  std::string_view host, app, procid, msgid;
  std::string_view sequence;
  std::vector<SyslogSdParam> sd;
  std::string_view body;  // MSG (5424, without BOM) or the content after the tag (3164)
  bool bom = false;
};

// Parses one message (one frame or datagram, without its terminator). `now_ns` picks the year
// of RFC 3164 timestamps: the latest year that puts the timestamp no more than 30 days after
// now (so "Dec 31 23:59:59" received on Jan 1 is last year's). RFC 3164 timestamps without a
// zone or offset are read in `rfc3164_zone` (UTC by default; the source passes its
// rfc3164_timezone option); an offset or a UTC/GMT word in the message wins. RFC 5424
// timestamps always carry their offset.
SyslogMessage parseSyslog(std::string_view raw, int64_t now_ns,
                          const SyslogTimeZone& rfc3164_zone = SyslogTimeZone());

const char* syslogFacilityName(int facility);
const char* syslogSeverityName(int severity);

// Options for turning a parsed message into an event.
struct SyslogEventOptions {
  bool raw_header = false;     // syslog.raw: the message exactly as received
  std::string_view client_ip;  // client.ip / client.port when not empty
  std::string_view client_port;
  const SyslogTimeZone* rfc3164_zone = nullptr;  // zone-less RFC 3164 timestamps; null: UTC
};

// Appends one event for `raw` (already cut at the size limit; `incomplete` says so) to `batch`
// and returns the parse result's failure kind. The event time is the message's timestamp, or
// `receive_ns` when it has none.
SyslogFailure addSyslogEvent(Batch& batch, std::string_view raw, bool incomplete,
                             int64_t receive_ns, const SyslogEventOptions& options);

// Days since 1970-01-01 of a proleptic Gregorian date (no validation), and back.
int64_t syslogDaysFromCivil(int64_t y, unsigned m, unsigned d);
void syslogCivilFromDays(int64_t days, int64_t& y, unsigned& m, unsigned& d);

}  // namespace sluice

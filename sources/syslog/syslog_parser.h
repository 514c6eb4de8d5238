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
//   sd.<SD-ID>.<PARAM>    RFC 5424 structured data, values unescaped; an SD-ELEMENT without
//                         params gives sd.<SD-ID> = "". The n-th (n >= 2) element with the same
//                         SD-ID is sd.<SD-ID>#n.<PARAM>, the n-th PARAM of the same name within
//                         one element sd.<SD-ID>.<PARAM>#n (no joining: values may hold ',')
//   syslog.sequence       Cisco-style sequence number ("52: *Mar  1 ...")
//   syslog.invalid        the failure kind (pri, timestamp, header, structured_data, empty)
//   syslog.incomplete     "true" when the message was cut at max_message_size
//   syslog.deviation      what the message does that the RFCs forbid but sluice accepted (or, in
//                         strict mode, why it was refused), and a timestamp sluice could not
//                         use: deviation names joined with ',' (syslogDeviationName)

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

// What a parsed message does that the RFCs forbid, or a timestamp sluice cannot represent. In
// lenient mode (the default) the message is kept and each kind is a bit in
// SyslogMessage::deviations; in strict mode the RFC violations (all but TimestampRange) make the
// message invalid with the failure kind syslogDeviationFailure() gives. Each kind has a stable
// name (syslogDeviationName) for the syslog.deviation header and the Deviation<Kind>Count
// metrics (syslogDeviationMetricName). The order is the order in which they occur in a message.
enum class SyslogDeviation : uint32_t {
  PriMissing,      // no <PRI> at all: read as RFC 3164 with PRI 13 (user.notice), RFC 3164 4.3.3
  Version,         // RFC 5424 VERSION other than 1: parsed as 1
  TimestampCase,   // RFC 5424 timestamp with a lowercase 't' or 'z'
  LeapSecond,      // RFC 5424 timestamp with second 60: read as :59 of its minute
  FractionDigits,  // RFC 5424 fraction of more than 6 digits: nanoseconds kept, the rest dropped
  TimestampRange,  // a year outside 1678..2261 (not an int64 of ns): the event time is the
                   // receive time; the timestamp header keeps the text. Not refused in strict mode
  SdBracket,       // RFC 5424 PARAM-VALUE with an unescaped ']'
  SdRepeatedId,    // RFC 5424 SD-ID present more than once: the later ones are sd.<SD-ID>#n.*
};
constexpr int kSyslogDeviationKinds = 8;
using SyslogDeviations = uint32_t;  // a bit (1 << kind) per SyslogDeviation
constexpr SyslogDeviations syslogDeviationBit(SyslogDeviation d) {
  return SyslogDeviations{1} << static_cast<uint32_t>(d);
}
const char* syslogDeviationName(SyslogDeviation d);
// "DeviationLeapSecondCount" for LeapSecond.
std::string syslogDeviationMetricName(SyslogDeviation d);
// The failure kind a deviation gives in strict mode; None for TimestampRange.
SyslogFailure syslogDeviationFailure(SyslogDeviation d);

struct SyslogSdParam {
  std::string_view id;
  std::string_view name;  // empty for an SD-ELEMENT without params
  std::string value;
  int id_occurrence = 1;    // n for the n-th SD-ELEMENT with this SD-ID
  int name_occurrence = 1;  // n for the n-th PARAM of this name within its SD-ELEMENT
};

struct SyslogMessage {
  SyslogFormat format = SyslogFormat::Invalid;
  SyslogFailure failure = SyslogFailure::None;
  int facility = -1;
  int severity = -1;
  int version = 0;
  std::string_view timestamp_text;
  int64_t timestamp_ns = 0;  // 0: no usable timestamp (nil, missing, out of range): use the
                             // receive time
  std::string_view host, app, procid, msgid;
  std::string_view sequence;
  std::vector<SyslogSdParam> sd;
  std::string_view body;  // MSG (5424, without BOM) or the content after the tag (3164)
  bool bom = false;
  SyslogDeviations deviations = 0;
};

// Parses one message (one frame or datagram, without its terminator). `now_ns` picks the year
// of RFC 3164 timestamps: the latest year that puts the timestamp no more than 30 days after
// now (so "Dec 31 23:59:59" received on Jan 1 is last year's). RFC 3164 timestamps without a
// zone or offset are read in `rfc3164_zone` (UTC by default; the source passes its
// rfc3164_timezone option); an offset or a UTC/GMT word in the message wins. RFC 5424
// timestamps always carry their offset. `strict` refuses what RFC 5424 forbids (and a message
// without PRI) instead of accepting it with a deviation bit; see SyslogDeviation.
SyslogMessage parseSyslog(std::string_view raw, int64_t now_ns,
                          const SyslogTimeZone& rfc3164_zone = SyslogTimeZone(),
                          bool strict = false);

const char* syslogFacilityName(int facility);
const char* syslogSeverityName(int severity);

// Options for turning a parsed message into an event.
struct SyslogEventOptions {
  bool raw_header = false;     // syslog.raw: the message exactly as received
  std::string_view client_ip;  // client.ip / client.port when not empty
  std::string_view client_port;
  const SyslogTimeZone* rfc3164_zone = nullptr;  // zone-less RFC 3164 timestamps; null: UTC
  bool strict = false;                           // see parseSyslog
  SyslogDeviations* deviations = nullptr;        // when set, receives the message's deviations
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

// The syslog parser and framer: RFC 5424 / RFC 3164 examples, real-world variants, every header.

#include "sources/syslog/syslog_parser.h"

#include <doctest/doctest.h>
#include <rapidcheck.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "sources/syslog/syslog_framing.h"

namespace sluice {
namespace {

using namespace std::string_literals;

int64_t utc(int64_t y, unsigned mo, unsigned d, int h, int mi, int s, int64_t frac_ns = 0) {
  return (syslogDaysFromCivil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s) * 1000000000 + frac_ns;
}

const int64_t kNow = utc(2026, 11, 25, 12, 0, 0);

using Headers = std::map<std::string, std::string>;

struct Event {
  std::string body;
  int64_t ts;
  Headers headers;
};

Event event(std::string_view raw, int64_t now = kNow, bool incomplete = false,
            SyslogEventOptions options = {}) {
  Batch b;
  addSyslogEvent(b, raw, incomplete, now, options);
  Event e{std::string(b[0].body()), b[0].timestampNs(), {}};
  b[0].forEachHeader(
      [&](std::string_view k, std::string_view v) { e.headers[std::string(k)] = std::string(v); });
  return e;
}

TEST_CASE("syslog 5424: RFC 5424 example 1 (no structured data, BOM)") {
  auto e = event(
      "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
      "\xEF\xBB\xBF'su root' failed for lonvick on /dev/pts/8");
  CHECK(e.body == "'su root' failed for lonvick on /dev/pts/8");
  CHECK(e.ts == utc(2003, 10, 11, 22, 14, 15, 3000000));
  CHECK(e.headers == Headers{{"syslog.format", "rfc5424"},
                             {"syslog.facility", "4"},
                             {"syslog.facility_name", "auth"},
                             {"syslog.severity", "2"},
                             {"syslog.severity_name", "crit"},
                             {"syslog.version", "1"},
                             {"timestamp", "2003-10-11T22:14:15.003Z"},
                             {"host", "mymachine.example.com"},
                             {"app", "su"},
                             {"msgid", "ID47"}});
}

TEST_CASE("syslog 5424: RFC 5424 example 2 (offset, microseconds, no procid)") {
  auto e = event(
      "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - "
      "%% It's time to make the do-nuts.");
  CHECK(e.body == "%% It's time to make the do-nuts.");
  CHECK(e.ts == utc(2003, 8, 24, 12, 14, 15, 3000));
  CHECK(e.headers["syslog.facility_name"] == "local4");
  CHECK(e.headers["syslog.severity_name"] == "notice");
  CHECK(e.headers["host"] == "192.0.2.1");
  CHECK(e.headers["app"] == "myproc");
  CHECK(e.headers["procid"] == "8710");
  CHECK(e.headers.count("msgid") == 0);
}

TEST_CASE("syslog 5424: RFC 5424 examples 3 and 4 (structured data)") {
  auto e = event(
      "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
      "[exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] "
      "\xEF\xBB\xBF"
      "An application event log entry...");
  CHECK(e.body == "An application event log entry...");
  CHECK(e.headers["sd.exampleSDID@32473.iut"] == "3");
  CHECK(e.headers["sd.exampleSDID@32473.eventSource"] == "Application");
  CHECK(e.headers["sd.exampleSDID@32473.eventID"] == "1011");

  auto f = event(
      "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
      "[exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"]"
      "[examplePriority@32473 class=\"high\"]");
  CHECK(f.body == "");  // MSG is optional
  CHECK(f.headers["sd.examplePriority@32473.class"] == "high");
  CHECK(f.headers["sd.exampleSDID@32473.iut"] == "3");
}

TEST_CASE("syslog 5424: escapes, repeated params, empty element, nil everything") {
  auto e = event(
      "<13>1 - - - - - [a@1 v=\"q\\\"b\\\\s\\]e\\n\" ip=\"1.1.1.1\" ip=\"2.2.2.2\"][origin] x");
  CHECK(e.body == "x");
  CHECK(e.headers["sd.a@1.v"] == "q\"b\\s]e\\n");  // \n is not an escape: kept as is
  // A repeated PARAM (RFC 5424 allows it) gets its own name: a value may hold ','.
  CHECK(e.headers["sd.a@1.ip"] == "1.1.1.1");
  CHECK(e.headers["sd.a@1.ip#2"] == "2.2.2.2");
  CHECK(e.headers.count("syslog.deviation") == 0);
  CHECK(e.headers.count("sd.origin") == 1);
  CHECK(e.headers["sd.origin"] == "");
  CHECK(e.headers.count("host") == 0);
  CHECK(e.headers.count("timestamp") == 0);
  CHECK(e.ts == kNow);  // nil timestamp: the receive time
  CHECK(e.headers["syslog.format"] == "rfc5424");
}

TEST_CASE("syslog 5424: a UTF-8 value, no fraction, +hh:mm offset, msg without BOM") {
  auto e = event("<14>1 2026-01-02T03:04:05+01:30 h a p m [x k=\"é]\"] héllo wörld");
  CHECK(e.ts == utc(2026, 1, 2, 1, 34, 5));
  CHECK(e.headers["sd.x.k"] == "é]");
  CHECK(e.body == "héllo wörld");
}

TEST_CASE("syslog 5424: malformed messages are kept whole and marked") {
  struct Case {
    std::string raw, kind;
  };
  std::vector<Case> cases = {
      {"<192>1 - - - - - - x", "pri"},
      {"<12", "pri"},
      {"<abc>hello", "pri"},
      {"   ", "empty"},
      {"<13>1 2003-13-11T22:14:15Z h a p m - x", "timestamp"},
      {"<13>1 2003-02-30T22:14:15Z h a p m - x", "timestamp"},
      {"<13>1 2003-10-11 22:14:15Z h a p m - x", "timestamp"},
      {"<13>1 2003-10-11T22:14:15 h a p m - x", "timestamp"},  // zone is mandatory
      {"<13>1 - h a p", "header"},
      {"<13>1 - h " + std::string(49, 'a') + " p m - x", "header"},
      {"<13>1 - h a p " + std::string(33, 'm') + " - x", "header"},
      {"<13>1 - h a p m [x k=\"v] x", "structured_data"},
      {"<13>1 - h a p m [x k=v] x", "structured_data"},
      {"<13>1 - h a p m [x k=\"v\"]x", "structured_data"},
      {"<13>1 - h a p m x", "structured_data"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.raw);
    auto e = event(c.raw);
    CHECK(e.body == c.raw);
    CHECK(e.headers["syslog.invalid"] == c.kind);
    CHECK(e.headers["syslog.format"] == "invalid");
    CHECK(e.ts == kNow);
  }
  // What is certain (PRI) is kept on a message whose header is broken.
  auto e = event("<13>1 - h a p");
  CHECK(e.headers["syslog.facility_name"] == "user");
  CHECK(e.headers["syslog.severity_name"] == "notice");
}

TEST_CASE("syslog 3164: RFC 3164 examples") {
  auto e = event("<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8");
  CHECK(e.body == "'su root' failed for lonvick on /dev/pts/8");
  CHECK(e.ts == utc(2026, 10, 11, 22, 14, 15));
  CHECK(e.headers == Headers{{"syslog.format", "rfc3164"},
                             {"syslog.facility", "4"},
                             {"syslog.facility_name", "auth"},
                             {"syslog.severity", "2"},
                             {"syslog.severity_name", "crit"},
                             {"timestamp", "Oct 11 22:14:15"},
                             {"host", "mymachine"},
                             {"app", "su"}});

  auto f = event("<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!");
  CHECK(f.headers["host"] == "10.0.0.99");
  CHECK(f.headers.count("app") == 0);
  CHECK(f.body == "Use the BFG!");
  CHECK(f.ts == utc(2026, 2, 5, 17, 32, 18));
  CHECK(f.headers["timestamp"] == "Feb  5 17:32:18");
}

TEST_CASE("syslog 3164: tag with pid, missing hostname, zero-padded day") {
  auto e = event("<30>Nov 24 08:00:01 web1 sshd[4242]: Accepted publickey for root");
  CHECK(e.headers["host"] == "web1");
  CHECK(e.headers["app"] == "sshd");
  CHECK(e.headers["procid"] == "4242");
  CHECK(e.headers["syslog.facility_name"] == "daemon");
  CHECK(e.headers["syslog.severity_name"] == "info");
  CHECK(e.body == "Accepted publickey for root");

  // logger -u /dev/log style: no hostname.
  auto f = event("<13>Nov 25 09:15:00 myapp[77]: hello");
  CHECK(f.headers.count("host") == 0);
  CHECK(f.headers["app"] == "myapp");
  CHECK(f.headers["procid"] == "77");
  CHECK(f.body == "hello");
  auto g = event("<13>Nov 05 09:15:00 cron: job done");
  CHECK(g.headers.count("host") == 0);
  CHECK(g.headers["app"] == "cron");
  CHECK(g.ts == utc(2026, 11, 5, 9, 15, 0));
}

TEST_CASE("syslog 3164: year inference around new year") {
  // Sent at 23:59:59 on Dec 31, received just after midnight: last year.
  int64_t jan1 = utc(2027, 1, 1, 0, 0, 5);
  CHECK(event("<13>Dec 31 23:59:59 h a: x", jan1).ts == utc(2026, 12, 31, 23, 59, 59));
  // A device clock slightly ahead at the end of the year: next year.
  int64_t dec31 = utc(2026, 12, 31, 23, 59, 58);
  CHECK(event("<13>Jan  1 00:00:01 h a: x", dec31).ts == utc(2027, 1, 1, 0, 0, 1));
  // Feb 29 is only valid in a leap year: 2028 near 2028.
  CHECK(event("<13>Feb 29 10:00:00 h a: x", utc(2028, 3, 1, 0, 0, 0)).ts ==
        utc(2028, 2, 29, 10, 0, 0));
  CHECK(event("<13>Feb 29 10:00:00 h a: x", utc(2027, 3, 1, 0, 0, 0)).ts ==
        utc(2024, 2, 29, 10, 0, 0));
  // A month that has not come yet this year is last year's; a few days ahead is this year's.
  CHECK(event("<13>Apr  1 10:00:00 h a: x", utc(2026, 2, 1, 0, 0, 0)).ts ==
        utc(2025, 4, 1, 10, 0, 0));
  CHECK(event("<13>Dec  1 10:00:00 h a: x", kNow).ts == utc(2026, 12, 1, 10, 0, 0));
}

TEST_CASE("syslog 3164: ISO timestamps (rsyslog high precision) and milliseconds") {
  auto e = event("<13>2026-11-25T10:20:30.123456+01:00 host1 app[9]: iso");
  CHECK(e.ts == utc(2026, 11, 25, 9, 20, 30, 123456000));
  CHECK(e.headers["timestamp"] == "2026-11-25T10:20:30.123456+01:00");
  CHECK(e.headers["host"] == "host1");
  CHECK(e.headers["app"] == "app");
  CHECK(e.headers["syslog.format"] == "rfc3164");
  auto f = event("<13>Nov 25 10:20:30.250 host1 app: ms");
  CHECK(f.ts == utc(2026, 11, 25, 10, 20, 30, 250000000));
}

TEST_CASE("syslog 3164: Cisco sequence numbers, '*' and zone, year") {
  auto e =
      event("<189>52: *Mar  1 18:48:50.483 UTC: %SYS-5-CONFIG_I: Configured from console by vty0");
  CHECK(e.headers["syslog.sequence"] == "52");
  CHECK(e.headers["syslog.facility_name"] == "local7");
  CHECK(e.headers["syslog.severity_name"] == "notice");
  CHECK(e.headers["timestamp"] == "Mar  1 18:48:50.483 UTC");
  CHECK(e.headers.count("host") == 0);
  CHECK(e.headers["app"] == "%SYS-5-CONFIG_I");
  CHECK(e.body == "Configured from console by vty0");
  CHECK(e.ts == utc(2026, 3, 1, 18, 48, 50, 483000000));

  auto f = event("<187>000123: Jan 15 2024 10:00:00: %LINK-3-UPDOWN: Interface Gi0/1, down");
  CHECK(f.headers["syslog.sequence"] == "000123");
  CHECK(f.ts == utc(2024, 1, 15, 10, 0, 0));
  CHECK(f.headers["app"] == "%LINK-3-UPDOWN");
  CHECK(f.body == "Interface Gi0/1, down");
}

TEST_CASE("syslog 3164: no timestamp at all, or no tag") {
  auto e = event("<13>just some text");
  CHECK(e.headers["syslog.format"] == "rfc3164");
  CHECK(e.body == "just some text");
  CHECK(e.ts == kNow);
  CHECK(e.headers.count("timestamp") == 0);
  auto f = event("<13>app: text only");
  CHECK(f.headers["app"] == "app");
  CHECK(f.body == "text only");
}

TEST_CASE("syslog: incomplete, client and raw headers") {
  SyslogEventOptions o;
  o.raw_header = true;
  o.client_ip = "10.1.2.3";
  o.client_port = "5140";
  auto e = event("<13>1 - h a - - - cut her", kNow, true, o);
  CHECK(e.headers["syslog.incomplete"] == "true");
  CHECK(e.headers["client.ip"] == "10.1.2.3");
  CHECK(e.headers["client.port"] == "5140");
  CHECK(e.headers["syslog.raw"] == "<13>1 - h a - - - cut her");
  CHECK(e.body == "cut her");
}

TEST_CASE("syslog: facility and severity names cover every value") {
  CHECK(std::string(syslogFacilityName(0)) == "kern");
  CHECK(std::string(syslogFacilityName(10)) == "authpriv");
  CHECK(std::string(syslogFacilityName(23)) == "local7");
  CHECK(std::string(syslogSeverityName(0)) == "emerg");
  CHECK(std::string(syslogSeverityName(4)) == "warning");
  CHECK(std::string(syslogSeverityName(7)) == "debug");
  auto e = event("<0>1 - - - - - - k");
  CHECK(e.headers["syslog.facility"] == "0");
  CHECK(e.headers["syslog.severity"] == "0");
  auto f = event("<191>1 - - - - - - k");
  CHECK(f.headers["syslog.facility"] == "23");
  CHECK(f.headers["syslog.severity"] == "7");
}

TEST_CASE("syslog 5424: a year int64 nanoseconds cannot hold keeps every header") {
  for (std::string year : {"0522", "1677", "2262", "9999"}) {
    std::string ts = year + "-11-25T10:20:30Z";
    auto e = event("<13>1 " + ts + " h a p m [x k=\"v\"] msg");
    CAPTURE(ts);
    CHECK(e.headers["syslog.format"] == "rfc5424");
    CHECK(e.headers.count("syslog.invalid") == 0);
    CHECK(e.headers["timestamp"] == ts);
    CHECK(e.headers["syslog.deviation"] == "timestamp_range");
    CHECK(e.headers["host"] == "h");
    CHECK(e.headers["app"] == "a");
    CHECK(e.headers["procid"] == "p");
    CHECK(e.headers["msgid"] == "m");
    CHECK(e.headers["sd.x.k"] == "v");
    CHECK(e.body == "msg");
    CHECK(e.ts == kNow);  // the receive time
  }
  // The edges of the range are used.
  CHECK(event("<13>1 1678-01-01T00:00:00Z h a p m - x").ts == utc(1678, 1, 1, 0, 0, 0));
  CHECK(event("<13>1 2261-12-31T23:59:59Z h a p m - x").ts == utc(2261, 12, 31, 23, 59, 59));
  // Not refused in strict mode: RFC 5424 allows any year.
  SyslogMessage m = parseSyslog("<13>1 9999-01-01T00:00:00Z h a p m - x", kNow, {}, true);
  CHECK(m.failure == SyslogFailure::None);
  CHECK(m.deviations == syslogDeviationBit(SyslogDeviation::TimestampRange));
  // RFC 3164 with a year that was sent: the timestamp is kept, the event time is the receive time.
  auto f = event("<13>Jan 15 1024 10:00:00: %LINK-3-UPDOWN: down");
  CHECK(f.headers["timestamp"] == "Jan 15 1024 10:00:00");
  CHECK(f.headers["syslog.deviation"] == "timestamp_range");
  CHECK(f.headers["app"] == "%LINK-3-UPDOWN");
  CHECK(f.ts == kNow);
  auto g = event("<13>3026-11-25T10:20:30Z host1 app: iso");
  CHECK(g.headers["host"] == "host1");
  CHECK(g.headers["syslog.deviation"] == "timestamp_range");
  CHECK(g.ts == kNow);
}

TEST_CASE("syslog 5424: what the RFC forbids is kept and marked, or refused in strict mode") {
  struct Case {
    std::string raw, deviation, strict_failure;
    int64_t ts;  // lenient event time
  };
  const int64_t t = utc(2026, 1, 2, 3, 4, 5);
  std::vector<Case> cases = {
      {"<13>1 2026-01-02T03:04:60Z h a p m - x", "leap_second", "timestamp",
       utc(2026, 1, 2, 3, 4, 59)},
      {"<13>1 2026-01-02T03:04:05.1234567Z h a p m - x", "fraction_digits", "timestamp",
       t + 123456700},
      {"<13>1 2026-01-02T03:04:05.123456789123Z h a p m - x", "fraction_digits", "timestamp",
       t + 123456789},
      {"<13>1 2026-01-02t03:04:05Z h a p m - x", "timestamp_case", "timestamp", t},
      {"<13>1 2026-01-02T03:04:05z h a p m - x", "timestamp_case", "timestamp", t},
      {"<13>2 2026-01-02T03:04:05Z h a p m - x", "version", "header", t},
      {"<13>1 2026-01-02T03:04:05Z h a p m [x k=\"a]b\"] x", "sd_bracket", "structured_data", t},
      {"<13>1 2026-01-02T03:04:05Z h a p m [x k=\"1\"][x k=\"2\"] x", "sd_repeated_id",
       "structured_data", t},
      {"<13>1 2026-01-02t03:04:60.1234567z h a p m - x",
       "timestamp_case,leap_second,fraction_digits", "timestamp",
       utc(2026, 1, 2, 3, 4, 59, 123456700)},
  };
  for (const auto& c : cases) {
    CAPTURE(c.raw);
    auto e = event(c.raw);
    CHECK(e.headers["syslog.format"] == "rfc5424");
    CHECK(e.headers.count("syslog.invalid") == 0);
    CHECK(e.headers["syslog.deviation"] == c.deviation);
    CHECK(e.headers["host"] == "h");
    CHECK(e.body == "x");
    CHECK(e.ts == c.ts);

    SyslogEventOptions strict;
    strict.strict = true;
    SyslogDeviations deviations = 0;
    strict.deviations = &deviations;
    auto s = event(c.raw, kNow, false, strict);
    CHECK(s.headers["syslog.format"] == "invalid");
    CHECK(s.headers["syslog.invalid"] == c.strict_failure);
    CHECK(s.headers["syslog.deviation"] == c.deviation);  // the reason
    CHECK(s.headers.count("host") == 0);
    CHECK(s.body == c.raw);
    CHECK(s.ts == kNow);
    CHECK(deviations != 0);
  }
  // VERSION shows what was sent.
  CHECK(event("<13>2 - h a p m - x").headers["syslog.version"] == "2");
  // A conforming message has no deviation, also in strict mode.
  SyslogEventOptions strict;
  strict.strict = true;
  SyslogDeviations deviations = 1;
  strict.deviations = &deviations;
  auto ok = event("<13>1 2026-01-02T03:04:05.123456Z h a p m [x k=\"a\\]b\"][y k=\"c\"] x", kNow,
                  false, strict);
  CHECK(ok.headers.count("syslog.deviation") == 0);
  CHECK(ok.headers.count("syslog.invalid") == 0);
  CHECK(ok.headers["sd.x.k"] == "a]b");
  CHECK(deviations == 0);
}

TEST_CASE("syslog 5424: a repeated SD-ID gets its own header names") {
  auto e = event(
      "<13>1 - h a p m [x k=\"1,2\"][y q=\"\"][x k=\"3\" k=\"4\" j=\"5\"][x][x k=\"6\"] body");
  CHECK(e.headers["sd.x.k"] == "1,2");
  CHECK(e.headers["sd.y.q"] == "");
  CHECK(e.headers["sd.x#2.k"] == "3");
  CHECK(e.headers["sd.x#2.k#2"] == "4");
  CHECK(e.headers["sd.x#2.j"] == "5");
  CHECK(e.headers.count("sd.x#3") == 1);
  CHECK(e.headers["sd.x#4.k"] == "6");
  CHECK(e.headers["syslog.deviation"] == "sd_repeated_id");
  CHECK(e.body == "body");
}

TEST_CASE("syslog 3164: a message without PRI is user.notice (13), as RFC 3164 says") {
  auto e = event("Nov 24 08:00:01 web1 sshd[4242]: Accepted publickey");
  CHECK(e.headers["syslog.format"] == "rfc3164");
  CHECK(e.headers["syslog.facility"] == "1");
  CHECK(e.headers["syslog.facility_name"] == "user");
  CHECK(e.headers["syslog.severity"] == "5");
  CHECK(e.headers["syslog.severity_name"] == "notice");
  CHECK(e.headers["syslog.deviation"] == "pri_missing");
  CHECK(e.headers["host"] == "web1");
  CHECK(e.headers["app"] == "sshd");
  CHECK(e.body == "Accepted publickey");
  CHECK(e.ts == utc(2026, 11, 24, 8, 0, 1));
  auto f = event("no pri at all");
  CHECK(f.headers["syslog.format"] == "rfc3164");
  CHECK(f.headers["syslog.facility"] == "1");
  CHECK(f.body == "no pri at all");
  // A PRI that is there but broken is still invalid.
  CHECK(event("<abc>hello").headers["syslog.invalid"] == "pri");
  // Strict mode refuses a message without PRI.
  SyslogEventOptions strict;
  strict.strict = true;
  auto s = event("no pri at all", kNow, false, strict);
  CHECK(s.headers["syslog.invalid"] == "pri");
  CHECK(s.headers["syslog.deviation"] == "pri_missing");
  CHECK(s.headers.count("syslog.facility") == 0);
  CHECK(s.body == "no pri at all");
}

TEST_CASE("syslog: deviation names and metric names") {
  CHECK(syslogDeviationMetricName(SyslogDeviation::LeapSecond) == "DeviationLeapSecondCount");
  CHECK(syslogDeviationMetricName(SyslogDeviation::SdRepeatedId) == "DeviationSdRepeatedIdCount");
  std::set<std::string> names;
  for (int k = 0; k < kSyslogDeviationKinds; ++k) {
    names.insert(syslogDeviationName(static_cast<SyslogDeviation>(k)));
  }
  CHECK(names.size() == static_cast<size_t>(kSyslogDeviationKinds));
  CHECK(names.count("unknown") == 0);
}

TEST_CASE("syslog: the parser never fails to produce an event (property)") {
  CHECK(rc::check([](const std::string& s) {
    Batch b;
    addSyslogEvent(b, s, false, kNow, {});
    RC_ASSERT(b.size() == 1u);
    auto fmt = b[0].header("syslog.format");
    RC_ASSERT(fmt.has_value());
    if (*fmt == "invalid") RC_ASSERT(b[0].body() == std::string_view(s));
  }));
}

TEST_CASE("syslog: strict refuses exactly the RFC deviations lenient accepts (every combination)") {
  // RFC 5424-shaped messages, each part conforming or deviating, and some noise: every
  // combination of the parts (483,840 messages).
  const std::vector<std::vector<std::string>> kParts = {
      {"<13>", "<165>", "", "<x>"},
      {"1 ", "2 ", "12 "},
      {"2026-01-02", "0522-01-02", "2026-02-30", "- "},
      {"T", "t"},
      {"03:04:05", "03:04:60", "3:04:05"},
      {"", ".123", ".123456", ".1234567", ".1234567890123"},
      {"Z ", "z ", "+01:00 ", " "},
      {"h a p m ", "- - - - ", "h a p"},
      {"-", "[x k=\"v\"]", "[x k=\"a]b\"]", "[x k=\"a\\]b\"]", "[x][x]", "[x k=\"1\" k=\"2\"]",
       "[y"},
      {"", " msg", " \xEF\xBB\xBFmsg", "x"}};
  std::vector<size_t> pick(kParts.size(), 0);
  size_t combinations = 0, deviating = 0;
  for (bool more = true; more; ++combinations) {
    std::string raw;
    for (size_t i = 0; i < kParts.size(); ++i) raw += kParts[i][pick[i]];
    // The next combination.
    more = false;
    for (size_t i = 0; i < kParts.size() && !more; ++i) {
      more = ++pick[i] < kParts[i].size();
      if (!more) pick[i] = 0;
    }
    SyslogMessage lenient = parseSyslog(raw, kNow);
    SyslogMessage strict = parseSyslog(raw, kNow, {}, true);
    const SyslogDeviations refused =
        lenient.deviations & ~syslogDeviationBit(SyslogDeviation::TimestampRange);
    if (lenient.failure == SyslogFailure::None && refused != 0u) ++deviating;
    CAPTURE(raw);
    if (strict.failure == SyslogFailure::None) {
      REQUIRE(lenient.failure == SyslogFailure::None);
      REQUIRE(lenient.deviations == strict.deviations);
      REQUIRE(refused == 0u);
    } else if (lenient.failure == SyslogFailure::None) {
      REQUIRE(refused != 0u);
      REQUIRE((strict.deviations & refused) != 0u);  // the reason is on the event
    }
    if (lenient.failure == SyslogFailure::None && refused == 0u) {
      REQUIRE(strict.failure == SyslogFailure::None);
    }
  }
  CHECK(combinations == 483840u);
  CHECK(deviating > 10000u);
}

// ---- framing ----

struct Frames : FrameSink {
  std::vector<std::string> frames;
  std::vector<bool> truncated;
  void onFrame(std::string_view f, bool t) override {
    frames.emplace_back(f);
    truncated.push_back(t);
  }
};

using Strings = std::vector<std::string>;

Strings frame(const std::vector<std::string>& chunks, size_t max = 1000) {
  SyslogFramer framer(max);
  Frames out;
  for (const auto& c : chunks) framer.feed(c, out);
  framer.finish(out);
  return out.frames;
}

TEST_CASE("syslog framing: LF, CRLF, NUL, blank lines, last line without terminator") {
  CHECK(frame({"<13>a\n<13>b\r\n<13>c\0<13>d"s}) == Strings{"<13>a", "<13>b", "<13>c", "<13>d"});
  CHECK(frame({"\n\n<13>a\r\n\r\n"}) == Strings{"<13>a"});
}

TEST_CASE("syslog framing: octet counting, mixed with LF, split anywhere") {
  std::string stream = "11 <13>1 hello5 <13>x\n<13>lf line\n3 abc";
  CHECK(frame({stream}) == Strings{"<13>1 hello", "<13>x", "<13>lf line", "abc"});
  // Every split point of the same stream gives the same frames.
  for (size_t i = 0; i <= stream.size(); ++i) {
    CAPTURE(i);
    CHECK(frame({stream.substr(0, i), stream.substr(i)}) == frame({stream}));
  }
  // Octet-counted frames may contain LF and NUL.
  CHECK(frame({"7 a\nb\0cde"s}) == Strings{"a\nb\0cde"s});
  // Digits not followed by a space are the start of a plain line.
  CHECK(frame({"123abc\n"}) == Strings{"123abc"});
  CHECK(frame({"123"}) == Strings{"123"});
}

TEST_CASE("syslog framing: oversized frames are cut and the rest skipped") {
  SyslogFramer framer(5);
  Frames out;
  framer.feed("<13>abcdefgh\n<13>x\n", out);
  framer.feed("12 <13>1234567", out);
  CHECK(framer.buffered() <= 5);
  framer.feed("8\n<1>ok\n", out);
  CHECK(out.frames == Strings{"<13>a", "<13>x", "<13>1", "<1>ok"});
  CHECK(out.truncated == std::vector<bool>{true, false, true, false});
  CHECK(framer.truncatedFrames() == 2);
  CHECK(framer.octetCountedFrames() == 1);
  // A short octet-counted frame at the end of the stream is marked.
  Frames end;
  SyslogFramer f2(100);
  f2.feed("10 abc", end);
  f2.finish(end);
  CHECK(end.frames == Strings{"abc"});
  CHECK(end.truncated == std::vector<bool>{true});
}

TEST_CASE("syslog framing: any chunking gives the frames of the whole stream (property)") {
  CHECK(rc::check([](const std::vector<std::string>& msgs, const std::vector<size_t>& cuts) {
    std::string stream;
    Strings expected;
    for (size_t i = 0; i < msgs.size(); ++i) {
      std::string m = "<13>" + msgs[i];
      if (i % 2 == 0) {
        stream += std::to_string(m.size()) + " " + m;
        expected.push_back(m);
      } else {
        for (char& ch : m) {
          if (ch == '\n' || ch == '\0') ch = '.';
        }
        while (!m.empty() && m.back() == '\r') m.pop_back();
        stream += m + "\n";
        expected.push_back(m);
      }
    }
    std::vector<std::string> chunks;
    size_t pos = 0;
    for (size_t c : cuts) {
      size_t n = stream.empty() ? 0 : c % (stream.size() - pos + 1);
      chunks.push_back(stream.substr(pos, n));
      pos += n;
    }
    chunks.push_back(stream.substr(pos));
    RC_ASSERT(frame(chunks, 1 << 20) == expected);
  }));
}

}  // namespace
}  // namespace sluice

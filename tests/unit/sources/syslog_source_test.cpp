// The syslog source on a real loop: UDP, TCP (LF and octet counting), TLS, Unix datagrams,
// limits, backpressure and stop. Listeners bind port 0; clients are plain sockets.

#include "sources/syslog/syslog_source.h"
#include "agent/config.h"
#include "agent/diagnostics.h"
#include "channels/memory/memory_channel.h"
#include "sinks/null/null_sink.h"
#include "source_fixture.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace sluice {
namespace {

using test::FakeSourceContext;
using test::stopAndWait;
using test::TestLoop;

SyslogConfig config(std::vector<std::string> listeners) {
  SyslogConfig c;
  c.listeners = std::move(listeners);
  c.batch_timeout = Millis(5);
  return c;
}

std::unique_ptr<SyslogSource> make(const SyslogConfig& c) {
  std::string error;
  auto s = SyslogSource::create(c, error);
  INFO(error);
  REQUIRE(s != nullptr);
  return s;
}

int tcpConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  return fd;
}

void sendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    REQUIRE(n > 0);
    off += static_cast<size_t>(n);
  }
}

void udpSend(int port, const std::string& data) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(sendto(fd, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof(a)) ==
          static_cast<ssize_t>(data.size()));
  close(fd);
}

// True when the peer closed: poll reports it and recv returns 0 (or an error).
bool peerClosed(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  char c;
  return recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

std::string tempDir() {
  char tmpl[] = "/tmp/sluice-syslog-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  return tmpl;
}

TEST_CASE("syslog source: listener URLs are validated") {
  std::string e;
  CHECK(parseSyslogListener("tcp://127.0.0.1:514", e)->port == 514);
  CHECK(parseSyslogListener("udp://[::1]:0", e)->host == "::1");
  CHECK(parseSyslogListener("unix:///run/x.sock", e)->path == "/run/x.sock");
  CHECK_FALSE(parseSyslogListener("http://1.2.3.4:1", e));
  CHECK(e.find("unknown scheme 'http'") != std::string::npos);
  CHECK_FALSE(parseSyslogListener("tcp://1.2.3.4", e));
  CHECK_FALSE(parseSyslogListener("tcp://1.2.3.4:70000", e));
  CHECK_FALSE(parseSyslogListener("tcp://example.com:514", e));
  CHECK_FALSE(parseSyslogListener("unix://relative", e));
  SyslogConfig c = config({"tls://127.0.0.1:0", "bogus"});
  CHECK(SyslogSource::create(c, e) == nullptr);
  CHECK(e.find("no scheme") != std::string::npos);
  CHECK(e.find("cert_file and key_file") != std::string::npos);
  c = config({"tls://127.0.0.1:0"});
  c.cert_file = "/nonexistent/cert.pem";
  c.key_file = "/nonexistent/key.pem";
  CHECK(SyslogSource::create(c, e) == nullptr);
  CHECK(e.find("cannot read '/nonexistent/cert.pem'") != std::string::npos);
}

// Loads a config whose one source is a syslog source with `source_body` (indented four spaces,
// starting on line 5); returns whether it loaded and the diagnostics.
std::pair<bool, std::string> loadSyslogConfig(const std::string& source_body) {
  Registry reg;
  registerMemoryChannel(reg);
  registerNullSink(reg);
  registerSyslogSource(reg);
  Diagnostics diag("test.yaml");
  std::string text = "sources:\n  s:\n    type: syslog\n    channels: [c]\n" + source_body +
                     "channels:\n  c: {type: memory}\nsinks:\n  n: {type: null, channel: c}\n";
  auto cfg = loadConfigText(text, "test.yaml", reg, diag,
                            [](const std::string&) { return std::optional<std::string>(); });
  return std::make_pair(cfg != std::nullopt, diag.format());
}

TEST_CASE("syslog source: bad listeners and TLS files fail at config load (sluice check)") {
  auto load = loadSyslogConfig;
  auto good = load("    listeners: [udp://127.0.0.1:0]\n");
  INFO(good.second);
  CHECK(good.first);
  auto bad = load("    listeners: ['tcp://example.com:514']\n");
  CHECK_FALSE(bad.first);
  CHECK(bad.second.find("test.yaml:5:") != std::string::npos);
  CHECK(bad.second.find("host must be an IP address") != std::string::npos);
  auto tls = load(
      "    listeners: [tls://127.0.0.1:0]\n    cert_file: /nonexistent/c.pem\n"
      "    key_file: /nonexistent/k.pem\n");
  CHECK_FALSE(tls.first);
  CHECK(tls.second.find("cannot read '/nonexistent/c.pem'") != std::string::npos);
}

TEST_CASE("syslog source: a FIFO in place of a TLS file is refused without blocking") {
  char tmpl[] = "/tmp/sluice-fifo-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::string fifo = std::string(tmpl) + "/server.pem";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  SyslogConfig c = config({"tls://127.0.0.1:0"});
  c.cert_file = fifo;
  c.key_file = fifo;
  std::string error;
  // Opening the FIFO would block this thread for ever (nothing writes to it).
  CHECK(SyslogSource::create(c, error) == nullptr);
  CHECK(error.find("is not a regular file") != std::string::npos);
  std::filesystem::remove_all(tmpl);
}

TEST_CASE("syslog source: an unknown rfc3164_timezone fails at config load, at its value") {
  for (const char* good : {"local", "UTC", "+05:30", "-0800", "Europe/Berlin"}) {
    auto ok = loadSyslogConfig(
        "    listeners: [udp://127.0.0.1:0]\n    rfc3164_timezone: " + std::string(good) + "\n");
    INFO(good, ok.second);
    CHECK(ok.first);
  }
  auto bad =
      loadSyslogConfig("    listeners: [udp://127.0.0.1:0]\n    rfc3164_timezone: Europe/Berln\n");
  CHECK_FALSE(bad.first);
  INFO(bad.second);
  CHECK(bad.second.find("test.yaml:6:23: error: sources.s.rfc3164_timezone: unknown time zone "
                        "'Europe/Berln'") != std::string::npos);
  for (const char* wrong : {"+25:00", "+5:30", "../../etc/passwd", "CEST"}) {
    auto r = loadSyslogConfig("    listeners: [udp://127.0.0.1:0]\n    rfc3164_timezone: '" +
                              std::string(wrong) + "'\n");
    INFO(wrong, r.second);
    CHECK_FALSE(r.first);
    CHECK(r.second.find("test.yaml:6:23: error: sources.s.rfc3164_timezone: ") !=
          std::string::npos);
  }
}

TEST_CASE("syslog source: UDP, TCP LF, TCP octet counting and a Unix socket, with headers") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  std::string dir = tempDir();
  SyslogConfig c =
      config({"udp://127.0.0.1:0", "tcp://127.0.0.1:0", "unix://" + dir + "/log.sock"});
  c.client_headers = true;
  c.raw_header = true;
  c.rfc3164_timezone = "-08:00";
  auto src = make(c);
  src->start(ctx);
  int udp_port = src->boundPort(0);
  int tcp_port = src->boundPort(1);
  REQUIRE(udp_port > 0);
  REQUIRE(tcp_port > 0);

  udpSend(udp_port, "<13>1 2026-11-25T10:00:00Z h app 1 m - over udp\n");
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 1; }));
  int fd = tcpConnect(tcp_port);
  sendAll(fd, "<14>Nov 25 10:00:00 host1 tag[5]: lf one\n23 <13>1 - - - - - - octet");
  sendAll(fd, "\r\n<13>crlf\r\n");
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 4; }));
  close(fd);
  REQUIRE(loop.runUntil([&] { return ctx.count("ConnectionClosedCount") == 1; }));

  int ufd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::string path = dir + "/log.sock";
  std::memcpy(un.sun_path, path.c_str(), path.size() + 1);
  std::string local = "<11>Nov 25 10:00:01 myd[1]: local";
  REQUIRE(sendto(ufd, local.data(), local.size(), 0, reinterpret_cast<sockaddr*>(&un),
                 sizeof(un)) == static_cast<ssize_t>(local.size()));
  close(ufd);
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 5; }));

  auto& e = ctx.events;
  CHECK(e[0].body == "over udp");
  CHECK(e[0].headers["client.ip"] == "127.0.0.1");
  CHECK(std::stoi(e[0].headers["client.port"]) > 0);
  CHECK(e[0].headers["syslog.raw"] == "<13>1 2026-11-25T10:00:00Z h app 1 m - over udp");
  CHECK(e[1].body == "lf one");
  CHECK(e[1].headers["host"] == "host1");
  CHECK(e[1].headers["procid"] == "5");
  CHECK(e[1].headers["client.ip"] == "127.0.0.1");
  // rfc3164_timezone -08:00: 10:00 local is 18:00 UTC (the year depends on today).
  CHECK(e[1].timestamp_ns / 1000000000 % 86400 == 18 * 3600);
  CHECK(e[2].body == "octet");
  CHECK(e[2].headers["syslog.format"] == "rfc5424");
  CHECK(e[3].body == "crlf");
  CHECK(e[4].body == "local");
  CHECK(e[4].headers["app"] == "myd");
  CHECK(e[4].headers["syslog.severity_name"] == "err");
  CHECK(e[4].headers.count("client.ip") == 0);
  CHECK(ctx.count("MessageCount") == 5);
  CHECK(ctx.count("ConnectionAcceptedCount") == 1);
  CHECK(ctx.count("BytesReceivedCount") > 100);

  CHECK(stopAndWait(loop, *src) == 1);
  CHECK_FALSE(std::filesystem::exists(path));  // the socket file is removed at stop
  std::filesystem::remove_all(dir);
}

TEST_CASE("syslog source: malformed and oversized messages are kept, marked and counted") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  SyslogConfig c = config({"tcp://127.0.0.1:0"});
  c.max_message_size = 64;
  auto src = make(c);
  src->start(ctx);
  int fd = tcpConnect(src->boundPort(0));
  sendAll(fd,
          "<bad> broken pri\n<13>1 - h a p m [bad x\n<13>" + std::string(100, 'x') + "\n<13>ok");
  close(fd);  // the last frame has no terminator: it is still a message
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 4; }));
  CHECK(ctx.events[0].headers["syslog.invalid"] == "pri");
  CHECK(ctx.events[0].body == "<bad> broken pri");
  CHECK(ctx.events[1].headers["syslog.invalid"] == "structured_data");
  CHECK(ctx.events[2].headers["syslog.incomplete"] == "true");
  CHECK(ctx.events[2].body.size() == 60);  // 64 bytes minus "<13>"
  CHECK(ctx.events[3].body == "ok");
  CHECK(ctx.count("ParseFailurePriCount") == 1);
  CHECK(ctx.count("ParseFailureStructuredDataCount") == 1);
  CHECK(ctx.count("IncompleteMessageCount") == 1);
  CHECK(stopAndWait(loop, *src) == 1);
}

TEST_CASE("syslog source: RFC deviations are counted; strict refuses them into syslog.invalid") {
  for (bool strict : {false, true}) {
    TestLoop loop;
    FakeSourceContext ctx(loop.get(), "syslog_test");
    SyslogConfig c = config({"tcp://127.0.0.1:0"});
    c.strict = strict;
    auto src = make(c);
    src->start(ctx);
    int fd = tcpConnect(src->boundPort(0));
    sendAll(fd, "<13>2 2026-11-25T10:00:60Z h a p m - leap\nno pri at all\n");
    close(fd);
    REQUIRE(loop.runUntil([&] { return ctx.events.size() == 2; }));
    CHECK(ctx.count("DeviationVersionCount") == 1);
    CHECK(ctx.count("DeviationLeapSecondCount") == 1);
    CHECK(ctx.count("DeviationPriMissingCount") == 1);
    CHECK(ctx.events[0].headers.count("syslog.invalid") == (strict ? 1u : 0u));
    CHECK(ctx.events[1].headers.count("syslog.invalid") == (strict ? 1u : 0u));
    CHECK(stopAndWait(loop, *src) == 1);
  }
}

TEST_CASE("syslog source: datagrams queued together are read in bulk, each whole and in order") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  SyslogConfig c = config({"udp://127.0.0.1:0"});
  c.client_headers = true;
  c.udp_receive_buffer = 1 << 20;
  auto src = make(c);
  src->start(ctx);
  // Given 48 datagrams of different sizes (under 1 KB, so all fit the receive buffer whatever
  // the host's rmem_max) waiting in the socket before the loop runs, so that one read returns
  // many of them, from two senders,
  int other = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(src->boundPort(0)));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::vector<std::string> sent;
  for (int i = 0; i < 48; ++i) {
    std::string m = "<13>dgram " + std::to_string(i) + " " +
                    std::string(static_cast<size_t>(i * 97 % 900), 'x');
    sent.push_back(m.substr(4));
    if (i % 2) {
      REQUIRE(sendto(other, m.data(), m.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)) ==
              static_cast<ssize_t>(m.size()));
    } else {
      udpSend(src->boundPort(0), m);
    }
  }
  sockaddr_in mine{};
  socklen_t len = sizeof(mine);
  getsockname(other, reinterpret_cast<sockaddr*>(&mine), &len);
  // then every one arrives whole, in order, with its own sender's port.
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 48; }));
  for (int i = 0; i < 48; ++i) {
    CHECK(ctx.events[static_cast<size_t>(i)].body == sent[static_cast<size_t>(i)]);
    if (i % 2) {
      CHECK(ctx.events[static_cast<size_t>(i)].headers["client.port"] ==
            std::to_string(ntohs(mine.sin_port)));
    } else {
      CHECK(ctx.events[static_cast<size_t>(i)].headers["client.port"] !=
            std::to_string(ntohs(mine.sin_port)));
    }
  }
  close(other);
  CHECK(stopAndWait(loop, *src) == 1);
}

TEST_CASE("syslog source: max_connections refuses, idle_timeout closes") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  SyslogConfig c = config({"tcp://127.0.0.1:0"});
  c.max_connections = 1;
  c.idle_timeout = Millis(50);
  auto src = make(c);
  src->start(ctx);
  int a = tcpConnect(src->boundPort(0));
  REQUIRE(loop.runUntil([&] { return src->openConnections() == 1; }));
  int b = tcpConnect(src->boundPort(0));
  REQUIRE(loop.runUntil([&] { return ctx.count("ConnectionRefusedCount") == 1; }));
  CHECK(loop.runUntil([&] { return peerClosed(b); }));
  CHECK(src->openConnections() == 1);
  // a stays silent: closed after idle_timeout.
  CHECK(loop.runUntil([&] { return ctx.count("ConnectionIdleTimeoutCount") == 1; }));
  CHECK(loop.runUntil([&] { return peerClosed(a); }));
  CHECK(src->openConnections() == 0);
  close(a);
  close(b);
  CHECK(stopAndWait(loop, *src) == 1);
}

TEST_CASE("syslog source: a full channel blocks TCP senders; resume delivers everything") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  SyslogConfig c = config({"tcp://127.0.0.1:0", "udp://127.0.0.1:0"});
  c.batch_size = 100;
  c.udp_receive_buffer = 1 << 20;
  auto src = make(c);
  src->start(ctx);
  ctx.refuse = true;
  int fd = tcpConnect(src->boundPort(0));
  fcntl(fd, F_SETFL, O_NONBLOCK);
  // Given a channel that refuses, when a sender writes as much as it can,
  // then it is stopped by TCP flow control: a write would block.
  std::string all;
  size_t sent = 0;
  int next = 0;
  bool blocked = false;
  std::string rest;  // the unsent part of the message the sender was blocked in
  // Up to ~80 MB: far more than the socket buffers of both ends hold.
  for (int round = 0; round < 600 && !blocked; ++round) {
    std::string chunk;
    for (int i = 0; i < 10000; ++i) chunk += "<13>msg " + std::to_string(next++) + "\n";
    size_t off = 0;
    while (off < chunk.size()) {
      ssize_t n = send(fd, chunk.data() + off, chunk.size() - off, MSG_NOSIGNAL);
      if (n < 0) {
        blocked = true;
        break;
      }
      off += static_cast<size_t>(n);
    }
    all += chunk.substr(0, off);
    if (blocked) rest = chunk.substr(off, chunk.find('\n', off) + 1 - off);
    sent += off;
    loop.runFor(1);
  }
  REQUIRE(blocked);
  CHECK(src->paused());
  // And the source reads nothing more while paused: the rest stays in the kernel's buffers.
  uint64_t read_when_paused = ctx.count("BytesReceivedCount");
  loop.runFor(200);
  CHECK(ctx.count("BytesReceivedCount") == read_when_paused);
  // Datagrams beyond one batch are dropped and counted while blocked.
  for (int i = 0; i < 150; ++i) udpSend(src->boundPort(1), "<13>udp " + std::to_string(i));
  CHECK(loop.runUntil([&] { return ctx.count("UdpDroppedCount") > 0; }));
  // The rest of what was written, then the end of the stream.
  ctx.refuse = false;
  src->resume();
  // The last partial line was cut by the would-block: finish it.
  if (!rest.empty()) {
    // Complete the half-sent message; blocking writes are fine now that reading resumed.
    fcntl(fd, F_SETFL, 0);
    std::atomic<bool> written{false};
    std::thread writer([&] {
      sendAll(fd, rest);
      written = true;
    });
    bool done = loop.runUntil([&] { return written.load(); }, 60000);
    writer.join();
    REQUIRE(done);
    all += rest;
  }
  close(fd);
  size_t expected_tcp = static_cast<size_t>(std::count(all.begin(), all.end(), '\n'));
  // Each of the 150 datagrams (the 1MiB receive buffer holds them all) is either taken or counted
  // as dropped.
  size_t udp_kept = 0;
  bool all_in = loop.runUntil(
      [&] {
        udp_kept = 150 - ctx.count("UdpDroppedCount");
        return ctx.events.size() == expected_tcp + udp_kept && !src->paused();
      },
      60000);
  INFO("events " << ctx.events.size() << " tcp " << expected_tcp << " udp kept " << udp_kept
                 << " paused " << src->paused() << " held " << src->heldEvents());
  CHECK(all_in);
  // Every TCP message, in order, nothing lost.
  size_t k = 0;
  for (const auto& e : ctx.events) {
    if (e.body.rfind("msg ", 0) == 0) {
      if (e.body != "msg " + std::to_string(k)) FAIL("event " << k << " is " << e.body);
      ++k;
    }
  }
  CHECK(k == expected_tcp);
  CHECK(stopAndWait(loop, *src) == 1);
}

// ---- TLS ----

struct Certs {
  std::string dir, ca, cert, key, client_cert, client_key;
};

Certs makeCerts() {
  Certs c;
  c.dir = tempDir();
  c.ca = c.dir + "/ca.pem";
  c.cert = c.dir + "/server.pem";
  c.key = c.dir + "/server.key";
  c.client_cert = c.dir + "/client.pem";
  c.client_key = c.dir + "/client.key";
  std::string d = c.dir;
  std::string cmd =
      "cd " + d +
      " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
      "-subj /CN=test-ca 2>/dev/null"
      " && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
      "-subj /CN=localhost 2>/dev/null"
      " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      "-out server.pem -days 2 2>/dev/null"
      " && openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr "
      "-subj /CN=client 2>/dev/null"
      " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      "-out client.pem -days 2 2>/dev/null";
  REQUIRE(std::system(cmd.c_str()) == 0);
  return c;
}

// A blocking TLS client on its own thread; returns whether the handshake succeeded.
// `tls12_ciphers`, when given, makes it a TLS 1.2 client offering only those suites.
bool tlsSend(int port, const Certs& certs, bool with_client_cert, const std::string& data,
             const char* tls12_ciphers = nullptr) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (tls12_ciphers != nullptr) {
    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_cipher_list(ctx, tls12_ciphers);
  }
  SSL_CTX_load_verify_locations(ctx, certs.ca.c_str(), nullptr);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (with_client_cert) {
    SSL_CTX_use_certificate_file(ctx, certs.client_cert.c_str(), SSL_FILETYPE_PEM);
    SSL_CTX_use_PrivateKey_file(ctx, certs.client_key.c_str(), SSL_FILETYPE_PEM);
  }
  int fd = tcpConnect(port);
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  SSL_set_tlsext_host_name(ssl, "localhost");
  bool ok = SSL_connect(ssl) == 1;
  if (ok) {
    ok =
        SSL_write(ssl, data.data(), static_cast<int>(data.size())) == static_cast<int>(data.size());
    // With TLS 1.3 a refused client certificate shows on the first read.
    SSL_shutdown(ssl);
    char buf[16];
    if (SSL_read(ssl, buf, sizeof(buf)) < 0 && with_client_cert == false) ok = false;
  }
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);
  return ok;
}

TEST_CASE("syslog source: TLS with client certificates; handshake failures are counted") {
  Certs certs = makeCerts();
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  SyslogConfig c = config({"tls://127.0.0.1:0"});
  c.cert_file = certs.cert;
  c.key_file = certs.key;
  c.ca_file = certs.ca;
  c.verify_client = true;
  auto src = make(c);
  src->start(ctx);
  int port = src->boundPort(0);

  // The clients run on threads; the loop runs until they are done (joining earlier would stop
  // the loop that serves them).
  std::atomic<bool> ok{false}, client_done{false};
  std::thread client([&] {
    ok = tlsSend(port, certs, true, "<13>1 - h a - - - over tls\n");
    client_done = true;
  });
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 1 && client_done.load(); }));
  client.join();
  CHECK(ok.load());
  CHECK(ctx.events[0].body == "over tls");

  // No client certificate: the handshake fails on the server side.
  std::atomic<bool> bad_done{false};
  std::thread bad([&] {
    tlsSend(port, certs, false, "<13>nope\n");
    bad_done = true;
  });
  CHECK(loop.runUntil([&] { return ctx.count("TlsHandshakeFailureCount") == 1; }));
  CHECK(loop.runUntil([&] { return bad_done.load() && src->openConnections() == 0; }));
  bad.join();
  // Plain text on a TLS port is a handshake failure too.
  int fd = tcpConnect(port);
  sendAll(fd, "<13>plain text\n");
  CHECK(loop.runUntil([&] { return ctx.count("TlsHandshakeFailureCount") == 2; }));
  close(fd);
  CHECK(ctx.events.size() == 1);

  // TLS 1.2: an AEAD suite is accepted, a CBC suite is not offered by default.
  std::atomic<bool> aead_ok{false}, cbc_ok{true}, aead_done{false}, cbc_done{false};
  std::thread aead([&] {
    aead_ok = tlsSend(port, certs, true, "<13>1 - h a - - - aead\n", "ECDHE-RSA-AES128-GCM-SHA256");
    aead_done = true;
  });
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 2 && aead_done.load(); }));
  aead.join();
  CHECK(aead_ok.load());
  std::thread cbc([&] {
    cbc_ok = tlsSend(port, certs, true, "<13>cbc\n", "ECDHE-RSA-AES128-SHA:AES128-SHA");
    cbc_done = true;
  });
  CHECK(loop.runUntil([&] { return ctx.count("TlsHandshakeFailureCount") == 3; }));
  REQUIRE(loop.runUntil([&] { return cbc_done.load(); }));
  cbc.join();
  CHECK_FALSE(cbc_ok.load());
  CHECK(ctx.events.size() == 2);
  CHECK(stopAndWait(loop, *src) == 1);
  std::filesystem::remove_all(certs.dir);
}

TEST_CASE("syslog source: reload reads the certificates again; a broken one is refused") {
  Certs first = makeCerts(), second = makeCerts();
  std::string dir = tempDir();
  auto copy = [&](const Certs& from) {
    std::filesystem::copy_file(from.cert, dir + "/server.pem",
                               std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(from.key, dir + "/server.key",
                               std::filesystem::copy_options::overwrite_existing);
  };
  copy(first);
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  SyslogConfig c = config({"tls://127.0.0.1:0"});
  c.cert_file = dir + "/server.pem";
  c.key_file = dir + "/server.key";
  auto src = make(c);
  src->start(ctx);
  int port = src->boundPort(0);
  // Each client trusts one CA only: the handshake says which certificate the server presents.
  auto trySend = [&](const Certs& trust, const std::string& body) {
    std::atomic<bool> ok{false}, done{false};
    std::thread client([&] {
      ok = tlsSend(port, trust, false, "<13>1 - h a - - - " + body + "\n");
      done = true;
    });
    loop.runUntil([&] { return done.load(); });
    client.join();
    return ok.load();
  };
  CHECK(trySend(first, "one"));
  CHECK_FALSE(trySend(second, "refused"));

  copy(second);  // the certificate was renewed on disk, the configuration is the same
  src->reload();
  CHECK(trySend(second, "two"));
  CHECK_FALSE(trySend(first, "refused"));

  // A broken file on disk: the source keeps serving the certificate it has.
  std::ofstream(dir + "/server.pem", std::ios::trunc) << "not a certificate";
  src->reload();
  CHECK(ctx.count("TlsReloadErrorCount") == 1);
  CHECK(trySend(second, "three"));
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 3; }));
  CHECK(ctx.events[0].body == "one");
  CHECK(ctx.events[1].body == "two");
  CHECK(ctx.events[2].body == "three");
  CHECK(stopAndWait(loop, *src) == 1);
  for (const auto& d : {first.dir, second.dir, dir}) std::filesystem::remove_all(d);
}

TEST_CASE("syslog source: stop keeps the partial last frame of open connections") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  auto src = make(config({"tcp://127.0.0.1:0"}));
  src->start(ctx);
  int fd = tcpConnect(src->boundPort(0));
  sendAll(fd, "<13>complete\n<13>partial");
  REQUIRE(loop.runUntil([&] { return ctx.events.size() == 1; }));
  loop.runFor(20);  // the partial frame has been read too
  CHECK(stopAndWait(loop, *src) == 1);
  REQUIRE(ctx.events.size() == 2);
  CHECK(ctx.events[1].body == "partial");
  close(fd);
}

// A socket bound to a free loopback port (listening, for TCP), holding it until closed.
int holdPort(int type, int& port) {
  int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  if (type == SOCK_STREAM) REQUIRE(listen(fd, 1) == 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

TEST_CASE("syslog source: a listener whose port is in use is reported and tried again") {
  // Given TCP and UDP ports held by other sockets.
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  int tcp_port = 0, udp_port = 0;
  int tcp_holder = holdPort(SOCK_STREAM, tcp_port);
  int udp_holder = holdPort(SOCK_DGRAM, udp_port);
  std::string tcp_url = "tcp://127.0.0.1:" + std::to_string(tcp_port);
  std::string udp_url = "udp://127.0.0.1:" + std::to_string(udp_port);
  auto src = make(config({tcp_url, udp_url}));

  // When the source starts, both listeners fail: each is a problem under its URL.
  src->start(ctx);
  REQUIRE(ctx.problems.size() == 2);
  CHECK(ctx.problems[tcp_url].find("address already in use") != std::string::npos);
  CHECK(ctx.problems.count(udp_url) == 1);
  CHECK(ctx.count("ListenerErrorCount") == 2);
  CHECK(src->boundPort(0) == 0);

  // Then, once the ports are free, the retries bind them and the problems are cleared.
  close(tcp_holder);
  close(udp_holder);
  bool bound = loop.runUntil([&] { return ctx.problems.empty(); });
  CHECK(bound);
  if (bound) {
    CHECK(src->boundPort(0) == tcp_port);
    CHECK(src->boundPort(1) == udp_port);
    int fd = tcpConnect(tcp_port);
    sendAll(fd, "<13>over tcp\n");
    udpSend(udp_port, "<13>over udp");
    CHECK(loop.runUntil([&] { return ctx.events.size() == 2; }));
    close(fd);
  }
  CHECK(stopAndWait(loop, *src) == 1);  // also when a check failed: no handle may stay open
}

TEST_CASE("syslog source: a client's accept error keeps the listener; a socket error loses it") {
  // Linux accept(2) reports the pending connection's network errors; only errors about the
  // listening socket itself close it.
  for (int status : {UV_EPROTO, UV_ENETDOWN, UV_EHOSTUNREACH, UV_ENONET, UV_EPERM, UV_ENOPROTOOPT,
                     UV_ENOTSUP, UV_ENETUNREACH, UV_ETIMEDOUT, UV_ECONNABORTED, UV_ENOBUFS,
                     UV_ENOMEM, UV_EMFILE, UV_ENFILE}) {
    CHECK_MESSAGE(!syslogAcceptErrorLosesListener(status), uv_err_name(status));
  }
  for (int status : {UV_EBADF, UV_ENOTSOCK, UV_EINVAL, UV_EFAULT}) {
    CHECK_MESSAGE(syslogAcceptErrorLosesListener(status), uv_err_name(status));
  }

  // Given a TCP listener.
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  auto src = make(config({"tcp://127.0.0.1:0"}));
  src->start(ctx);
  int port = src->boundPort(0);
  REQUIRE(port > 0);

  // When accept fails for clients (a protocol error, out of descriptors) many times over.
  for (int i = 0; i < 100; ++i) src->acceptErrorForTest(0, UV_EPROTO);
  src->acceptErrorForTest(0, UV_EMFILE);

  // Then they are counted, no problem is reported and the listener still accepts.
  CHECK(ctx.count("AcceptErrorCount") == 100);
  CHECK(ctx.count("ConnectionRefusedCount") == 1);
  CHECK(ctx.count("ListenerErrorCount") == 0);
  CHECK(ctx.problems.empty());
  CHECK(src->boundPort(0) == port);
  int fd = tcpConnect(port);
  sendAll(fd, "<13>still listening\n");
  CHECK(loop.runUntil([&] { return ctx.events.size() == 1; }));
  close(fd);

  // And an error about the listening socket itself loses the listener, reported under its URL.
  src->acceptErrorForTest(0, UV_EBADF);
  CHECK(ctx.count("ListenerErrorCount") == 1);
  CHECK(ctx.problems.count("tcp://127.0.0.1:0") == 1);
  CHECK(stopAndWait(loop, *src) == 1);
}

TEST_CASE("syslog source: stop while a listener waits for its retry") {
  TestLoop loop;
  FakeSourceContext ctx(loop.get(), "syslog_test");
  int port = 0;
  int holder = holdPort(SOCK_STREAM, port);
  auto src = make(config({"tcp://127.0.0.1:" + std::to_string(port)}));
  src->start(ctx);
  CHECK(ctx.problems.size() == 1);
  CHECK(stopAndWait(loop, *src, 50) == 1);  // the retry timer is closed with the rest
  close(holder);
}

}  // namespace
}  // namespace sluice

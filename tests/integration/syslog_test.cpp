// Integration tests of the syslog source with real senders: util-linux `logger` (UDP, TCP, octet
// counting, RFC 3164, RFC 5424, a Unix socket) and rsyslog forwarding over TCP with octet framing
// and over TLS. Results are checked field by field in the stdout sink's JSON output. Also:
// backpressure from a stalled sink reaches a TCP sender, and nothing is lost when it resumes.

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

using namespace sluice::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

extern char** environ;

namespace {

// Ports sluice logged: "listening on tcp://127.0.0.1:0 (port N)", in listener order.
std::vector<int> loggedPorts(const std::string& err) {
  static const std::regex re("listening on [a-z]+://[^ ]+ \\(port ([0-9]+)\\)");
  std::vector<int> out;
  for (std::sregex_iterator it(err.begin(), err.end(), re), end; it != end; ++it) {
    out.push_back(std::stoi((*it)[1]));
  }
  return out;
}

std::vector<json> events(const std::string& out) {
  std::vector<json> v;
  for (const auto& line : splitLines(out)) {
    if (!line.empty()) v.push_back(json::parse(line));
  }
  return v;
}

// The one event whose body contains `marker`; null when there is not exactly one.
json findEvent(const std::string& out, const std::string& marker) {
  json found;
  int n = 0;
  for (auto& e : events(out)) {
    if (e["body"].get<std::string>().find(marker) != std::string::npos) {
      found = e;
      ++n;
    }
  }
  return n == 1 ? found : json();
}

std::string header(const json& e, const std::string& key) {
  if (e.is_null() || !e["headers"].contains(key)) return "<absent>";
  return e["headers"][key].get<std::string>();
}

int run(const std::string& cmd) { return std::system(cmd.c_str()); }

int freePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::string agentConfig(const std::string& listeners, const std::string& extra = "",
                        const std::string& channel = "max_events: 10000") {
  return "agent:\n  name: it\n  drain_timeout: 10s\n"
         "sources:\n  sys:\n    type: syslog\n    listeners: " +
         listeners + "\n    batch_timeout: 10ms\n" + extra +
         "    channels: [mem]\n"
         "channels:\n  mem:\n    type: memory\n    " +
         channel +
         "\n"
         "sinks:\n  out:\n    type: stdout\n    format: json\n    channel: mem\n";
}

// Starts sluice and waits until it logged `n` bound ports.
std::vector<int> startedPorts(Process& agent, size_t n) {
  std::vector<int> ports;
  waitFor(
      [&] {
        ports = loggedPorts(agent.err());
        return ports.size() >= n;
      },
      20s);
  INFO(agent.err());
  REQUIRE(ports.size() == n);
  return ports;
}

bool canConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

bool haveRsyslog() { return run("command -v rsyslogd >/dev/null 2>&1") == 0; }

}  // namespace

TEST_CASE("syslog: util-linux logger over UDP, TCP, octet counting, RFC 3164 and a Unix socket") {
  TempDir dir;
  std::string sock = dir.file("log.sock");
  writeFile(dir.file("a.yaml"),
            agentConfig("[udp://127.0.0.1:0, tcp://127.0.0.1:0, 'unix://" + sock + "']",
                        "    client_headers: true\n"));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  auto ports = startedPorts(agent, 2);
  std::string udp = std::to_string(ports[0]);
  std::string tcp = std::to_string(ports[1]);
  REQUIRE(waitFor([&] { return std::filesystem::exists(sock); }, 10s));

  // RFC 5424 (logger's default for the network) over UDP, with every field set.
  REQUIRE(run("logger -n 127.0.0.1 -P " + udp +
              " -d --rfc5424 -p local3.warning -t myapp --id=4242 --msgid MSG7 "
              "--sd-id zoo@123 --sd-param tiger=\\\"hungry\\\" 'via udp 5424'") == 0);
  // TCP with non-transparent (LF) framing, and with RFC 6587 octet counting.
  REQUIRE(run("logger -n 127.0.0.1 -P " + tcp + " -T -p user.info -t tcpapp 'via tcp lf'") == 0);
  REQUIRE(run("logger -n 127.0.0.1 -P " + tcp +
              " -T --octet-count -p daemon.err -t octapp 'via tcp octet'") == 0);
  // RFC 3164 over TCP and UDP.
  REQUIRE(run("logger -n 127.0.0.1 -P " + tcp +
              " -T --rfc3164 -p mail.notice -t bsdapp 'via tcp 3164'") == 0);
  REQUIRE(run("logger -n 127.0.0.1 -P " + udp +
              " -d --rfc3164 -p auth.crit -t bsdudp --id=77 'via udp 3164'") == 0);
  // The Unix datagram socket, as a local program logs to /dev/log.
  REQUIRE(run("logger -u " + sock +
              " --socket-errors=on -p local7.debug -t localapp 'via unix socket'") == 0);

  bool all = waitFor([&] { return events(agent.out()).size() >= 6; }, 20s);
  INFO(agent.out());
  INFO(agent.err());
  REQUIRE(all);
  std::string out = agent.out();
  std::string host = [] {
    char h[256] = {};
    gethostname(h, sizeof(h) - 1);
    return std::string(h);
  }();

  json e = findEvent(out, "via udp 5424");
  CHECK(e["body"] == "via udp 5424");
  CHECK(header(e, "syslog.format") == "rfc5424");
  CHECK(header(e, "syslog.version") == "1");
  CHECK(header(e, "syslog.facility") == "19");
  CHECK(header(e, "syslog.facility_name") == "local3");
  CHECK(header(e, "syslog.severity") == "4");
  CHECK(header(e, "syslog.severity_name") == "warning");
  CHECK(header(e, "host") == host);
  CHECK(header(e, "app") == "myapp");
  CHECK(header(e, "procid") == "4242");
  CHECK(header(e, "msgid") == "MSG7");
  CHECK(header(e, "sd.zoo@123.tiger") == "hungry");
  CHECK(header(e, "sd.timeQuality.tzKnown") == "1");  // logger's own structured data
  CHECK(header(e, "timestamp") != "<absent>");
  CHECK(header(e, "client.ip") == "127.0.0.1");
  CHECK(header(e, "client.port") != "<absent>");
  CHECK(header(e, "syslog.invalid") == "<absent>");

  e = findEvent(out, "via tcp lf");
  CHECK(e["body"] == "via tcp lf");
  CHECK(header(e, "syslog.format") == "rfc5424");
  CHECK(header(e, "syslog.facility_name") == "user");
  CHECK(header(e, "syslog.severity_name") == "info");
  CHECK(header(e, "app") == "tcpapp");

  e = findEvent(out, "via tcp octet");
  CHECK(e["body"] == "via tcp octet");
  CHECK(header(e, "syslog.facility_name") == "daemon");
  CHECK(header(e, "syslog.severity_name") == "err");
  CHECK(header(e, "app") == "octapp");

  e = findEvent(out, "via tcp 3164");
  CHECK(e["body"] == "via tcp 3164");
  CHECK(header(e, "syslog.format") == "rfc3164");
  CHECK(header(e, "syslog.facility_name") == "mail");
  CHECK(header(e, "syslog.severity_name") == "notice");
  CHECK(header(e, "host") == host);
  CHECK(header(e, "app") == "bsdapp");

  e = findEvent(out, "via udp 3164");
  CHECK(e["body"] == "via udp 3164");
  CHECK(header(e, "syslog.format") == "rfc3164");
  CHECK(header(e, "syslog.facility_name") == "auth");
  CHECK(header(e, "syslog.severity_name") == "crit");
  CHECK(header(e, "app") == "bsdudp");
  CHECK(header(e, "procid") == "77");

  e = findEvent(out, "via unix socket");
  CHECK(e["body"] == "via unix socket");
  CHECK(header(e, "syslog.facility_name") == "local7");
  CHECK(header(e, "syslog.severity_name") == "debug");
  CHECK(header(e, "app") == "localapp");
  CHECK(header(e, "client.ip") == "<absent>");

  agent.signal(SIGTERM);
  CHECK(agent.wait(30s) == 0);
}

TEST_CASE("syslog: rsyslog forwards over TCP with octet framing and over TLS") {
  if (!haveRsyslog()) {
    MESSAGE("rsyslogd is not installed (scripts/install-deps.sh installs it): skipped");
    return;
  }
  TempDir dir;
  // Certificates: a CA, a server certificate for localhost, a client certificate.
  std::string d = dir.path();
  REQUIRE(run("cd " + d +
              " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
              "-subj /CN=test-ca 2>/dev/null"
              " && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
              "-subj /CN=localhost 2>/dev/null"
              " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
              "-out server.pem -days 2 2>/dev/null"
              " && openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr "
              "-subj /CN=client 2>/dev/null"
              " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
              "-out client.pem -days 2 2>/dev/null") == 0);
  writeFile(dir.file("a.yaml"), agentConfig("[tcp://127.0.0.1:0, tls://127.0.0.1:0]",
                                            "    cert_file: " + d + "/server.pem\n    key_file: " +
                                                d + "/server.key\n    ca_file: " + d +
                                                "/ca.pem\n    verify_client: true\n"));
  Process agent({sluiceBinary(), "run", "-c", dir.file("a.yaml")}, dir.path());
  auto ports = startedPorts(agent, 2);

  // rsyslog: input from a local imtcp, forwarded by omfwd to sluice; the message text picks
  // the route. No imuxsock: it must not take the host's /dev/log.
  int in_port = freePort();
  std::filesystem::create_directories(d + "/rs");
  writeFile(
      dir.file("rsyslog.conf"),
      "global(workDirectory=\"" + d +
          "/rs\"\n"
          "  DefaultNetstreamDriverCAFile=\"" +
          d +
          "/ca.pem\"\n"
          "  DefaultNetstreamDriverCertFile=\"" +
          d +
          "/client.pem\"\n"
          "  DefaultNetstreamDriverKeyFile=\"" +
          d +
          "/client.key\")\n"
          "module(load=\"imtcp\")\n"
          "input(type=\"imtcp\" port=\"" +
          std::to_string(in_port) +
          "\" address=\"127.0.0.1\")\n"
          "if $msg contains \"via-rsyslog-tcp\" then {\n"
          "  action(type=\"omfwd\" target=\"127.0.0.1\" port=\"" +
          std::to_string(ports[0]) +
          "\" protocol=\"tcp\" TCP_Framing=\"octet-counted\"\n"
          "         template=\"RSYSLOG_SyslogProtocol23Format\")\n"
          "}\n"
          "if $msg contains \"via-rsyslog-tls\" then {\n"
          "  action(type=\"omfwd\" target=\"127.0.0.1\" port=\"" +
          std::to_string(ports[1]) +
          "\" protocol=\"tcp\" StreamDriver=\"ossl\" StreamDriverMode=\"1\"\n"
          "         StreamDriverAuthMode=\"x509/name\" StreamDriverPermittedPeers=\"localhost\"\n"
          "         template=\"RSYSLOG_SyslogProtocol23Format\")\n"
          "}\n");
  Process rsyslog(
      {"/usr/sbin/rsyslogd", "-n", "-f", dir.file("rsyslog.conf"), "-i", dir.file("rsyslog.pid")},
      dir.path());
  // rsyslog is ready when its input port accepts connections.
  bool listening = waitFor([&] { return canConnect(in_port); }, 20s);
  INFO(rsyslog.err());
  REQUIRE(listening);
  std::string in = std::to_string(in_port);
  REQUIRE(run("logger -n 127.0.0.1 -P " + in +
              " -T --octet-count --rfc5424 -p local5.notice -t relayed --id=99 --msgid FWD "
              "--sd-id meta@32473 --sd-param 'k=\"a\\]b\"' 'hello via-rsyslog-tcp'") == 0);
  REQUIRE(run("logger -n 127.0.0.1 -P " + in +
              " -T --rfc5424 -p local6.alert -t secure 'hello via-rsyslog-tls'") == 0);

  bool both = waitFor(
      [&] {
        std::string out = agent.out();
        return out.find("via-rsyslog-tcp") != std::string::npos &&
               out.find("via-rsyslog-tls") != std::string::npos;
      },
      30s);
  INFO(agent.out());
  INFO(agent.err());
  INFO(rsyslog.err());
  INFO(rsyslog.out());
  REQUIRE(both);
  std::string out = agent.out();
  json e = findEvent(out, "via-rsyslog-tcp");
  CHECK(e["body"] == "hello via-rsyslog-tcp");
  CHECK(header(e, "syslog.format") == "rfc5424");
  CHECK(header(e, "syslog.facility_name") == "local5");
  CHECK(header(e, "syslog.severity_name") == "notice");
  CHECK(header(e, "app") == "relayed");
  CHECK(header(e, "procid") == "99");
  CHECK(header(e, "msgid") == "FWD");
  CHECK(header(e, "sd.meta@32473.k") == "a]b");
  CHECK(header(e, "syslog.invalid") == "<absent>");

  e = findEvent(out, "via-rsyslog-tls");
  CHECK(e["body"] == "hello via-rsyslog-tls");
  CHECK(header(e, "syslog.facility_name") == "local6");
  CHECK(header(e, "syslog.severity_name") == "alert");
  CHECK(header(e, "app") == "secure");
  CHECK(header(e, "syslog.invalid") == "<absent>");

  rsyslog.signal(SIGTERM);
  rsyslog.wait(20s);
  agent.signal(SIGTERM);
  CHECK(agent.wait(30s) == 0);
}

namespace {

// sluice with stdout on a pipe that the test reads only when it wants: a sink that is stalled
// until then.
class StalledAgent {
 public:
  StalledAgent(const std::string& config, const std::string& err_path) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    posix_spawn_file_actions_addclose(&actions, fds[1]);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    std::string bin = sluiceBinary();
    std::vector<std::string> argv{bin, "run", "-c", config};
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    REQUIRE(posix_spawn(&pid_, bin.c_str(), &actions, nullptr, args.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_fd_ = fds[0];
  }
  ~StalledAgent() {
    stopDraining();
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_fd_);
  }
  void startDraining() {
    reader_ = std::thread([this] {
      char buf[65536];
      for (;;) {
        ssize_t n = read(out_fd_, buf, sizeof(buf));
        if (n <= 0) break;
        std::lock_guard<std::mutex> lock(mu_);
        out_.append(buf, static_cast<size_t>(n));
      }
    });
  }
  void stopDraining() {
    if (reader_.joinable()) {
      kill(pid_, SIGTERM);
      reader_.join();
      int st = 0;
      waitpid(pid_, &st, 0);
      pid_ = -1;
    }
  }
  std::string out() {
    std::lock_guard<std::mutex> lock(mu_);
    return out_;
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::string out_;
};

}  // namespace

TEST_CASE("syslog: a stalled sink slows a TCP sender down; nothing is lost when it resumes") {
  TempDir dir;
  writeFile(dir.file("a.yaml"),
            agentConfig("[tcp://127.0.0.1:0]", "    batch_size: 50\n", "max_events: 100"));
  StalledAgent agent(dir.file("a.yaml"), dir.file("err"));
  std::vector<int> ports;
  REQUIRE(waitFor(
      [&] {
        ports = loggedPorts(readFile(dir.file("err")));
        return !ports.empty();
      },
      20s));

  // Given a sink that writes nothing (its stdout pipe is not read) and a tiny channel,
  // when a client sends as fast as it can on a non-blocking socket,
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int small = 16 * 1024;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(ports[0]));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  fcntl(fd, F_SETFL, O_NONBLOCK);
  const std::string pad(100, 'p');
  auto message = [&](int i) {
    return "<13>1 - h app - - - seq=" + std::to_string(i) + " " + pad + "\n";
  };
  int next = 0;
  std::string partial;  // the unsent rest of the message the sender was blocked in
  bool blocked = false;
  for (int i = 0; i < 2000000 && !blocked; ++i) {
    std::string m = message(next);
    ssize_t n = send(fd, m.data(), m.size(), MSG_NOSIGNAL);
    if (n < 0) {
      REQUIRE(errno == EAGAIN);
      // Give the agent 200ms to read more, if it would: a stalled pipeline will not.
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, 200);
      n = send(fd, m.data(), m.size(), MSG_NOSIGNAL);
      if (n < 0) {
        blocked = true;
        break;
      }
    }
    ++next;
    if (static_cast<size_t>(n) < m.size()) {
      partial = m.substr(static_cast<size_t>(n));
      blocked = true;
    }
  }
  // then the sender is blocked: the backpressure reached it through TCP.
  INFO("messages sent before blocking: " << next);
  REQUIRE(blocked);
  // And it stays held back: for two more seconds the sender gets no further than the kernel's
  // socket buffers let it (a few MiB at most); a source that kept reading while its channel is
  // full would take everything the sender can write (tens of MiB).
  std::string more = partial;  // the message the sender was blocked in comes first
  size_t extra = 0;
  for (auto until = std::chrono::steady_clock::now() + 2s;
       std::chrono::steady_clock::now() < until;) {
    if (more.empty()) more = message(next++);
    ssize_t n = send(fd, more.data(), more.size(), MSG_NOSIGNAL);
    if (n < 0) {
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, 50);
      continue;
    }
    extra += static_cast<size_t>(n);
    more.erase(0, static_cast<size_t>(n));
  }
  MESSAGE("bytes the blocked sender got out in two more seconds: " << extra);
  CHECK(extra < (16u << 20));
  partial = more;
  // When the sink resumes, the sender finishes and every message arrives exactly once, in order.
  agent.startDraining();
  fcntl(fd, F_SETFL, 0);
  std::string rest = partial;
  const int total = next + 1000;
  for (int i = next; i < total; ++i) rest += message(i);
  size_t off = 0;
  while (off < rest.size()) {
    ssize_t n = send(fd, rest.data() + off, rest.size() - off, MSG_NOSIGNAL);
    REQUIRE(n > 0);
    off += static_cast<size_t>(n);
  }
  close(fd);
  bool all = waitFor(
      [&] {
        std::string out = agent.out();
        return static_cast<int>(std::count(out.begin(), out.end(), '\n')) >= total;
      },
      120s);
  REQUIRE(all);
  agent.stopDraining();
  auto evs = events(agent.out());
  REQUIRE(static_cast<int>(evs.size()) == total);
  for (int i = 0; i < total; ++i) {
    std::string expected = "seq=" + std::to_string(i) + " " + pad;
    if (evs[static_cast<size_t>(i)]["body"] != expected) {
      FAIL("event " << i << " is " << evs[static_cast<size_t>(i)]["body"]);
    }
  }
}

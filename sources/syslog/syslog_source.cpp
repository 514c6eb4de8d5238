#include "sources/syslog/syslog_source.h"

#include <openssl/err.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace sluice {

namespace {

constexpr size_t kReadBytes = 64 * 1024;
constexpr size_t kDatagramBytes = 64 * 1024;
// UDP listeners read up to this many datagrams per system call (recvmmsg through libuv). The
// buffer is allocated without being touched: only the pages datagrams land in become resident.
constexpr size_t kDatagramsPerRead = 16;
constexpr int kBacklog = 128;
// Datagrams read from a Unix socket per poll callback: other handles get their turn.
constexpr int kUnixReadsPerWakeup = 64;
// A listener that cannot bind or was lost is tried again after this, doubling up to the maximum.
constexpr uint64_t kRetryFirstMs = 500;
constexpr uint64_t kRetryMaxMs = 30'000;

std::string opensslError() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

// "1.2.3.4" / "::1" and the port of a socket address.
void addressText(const struct sockaddr* addr, std::string& ip, std::string& port) {
  ip.clear();
  port.clear();
  if (addr == nullptr) return;
  char buf[INET6_ADDRSTRLEN] = {};
  if (addr->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const struct sockaddr_in*>(addr);
    uv_ip4_name(in, buf, sizeof(buf));
    ip = buf;
    port = std::to_string(ntohs(in->sin_port));
  } else if (addr->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const struct sockaddr_in6*>(addr);
    uv_ip6_name(in6, buf, sizeof(buf));
    ip = buf;
    port = std::to_string(ntohs(in6->sin6_port));
  }
}

bool socketAddress(const SyslogListenerAddress& a, struct sockaddr_storage& out) {
  std::memset(&out, 0, sizeof(out));
  std::string host = a.host == "localhost" ? "127.0.0.1" : a.host;
  if (uv_ip4_addr(host.c_str(), a.port, reinterpret_cast<struct sockaddr_in*>(&out)) == 0) {
    return true;
  }
  return uv_ip6_addr(host.c_str(), a.port, reinterpret_cast<struct sockaddr_in6*>(&out)) == 0;
}

}  // namespace

struct SyslogSource::Listener {
  SyslogSource* self = nullptr;
  SyslogListenerAddress addr;
  std::string url;
  uv_udp_t udp{};
  uv_tcp_t tcp{};
  uv_poll_t poll{};
  int unix_fd = -1;
  bool open = false;
  bool closing = false;  // its handle is closing: not to be opened again before it is closed
  bool failed = false;   // not listening: reported as a problem, tried again by the retry timer
  int bound_port = 0;
};

struct SyslogSource::Connection : private FrameSink {
  SyslogSource* self = nullptr;
  std::list<std::unique_ptr<Connection>>::iterator it;
  uv_tcp_t tcp{};
  uv_timer_t idle{};
  SyslogFramer framer;
  SSL* ssl = nullptr;
  BIO* rbio = nullptr;  // network -> OpenSSL
  BIO* wbio = nullptr;  // OpenSSL -> network
  bool handshake_done = false;
  bool reading = false;
  bool closing = false;
  int open_handles = 0;
  std::string ip, port;

  Connection(SyslogSource* s, size_t max_frame) : self(s), framer(max_frame) {}
  ~Connection() {
    if (ssl != nullptr) SSL_free(ssl);  // frees both BIOs
  }
  void feed(std::string_view data) { framer.feed(data, *this); }
  void finish() { framer.finish(*this); }
  void onFrame(std::string_view frame, bool truncated) override {
    self->addMessage(frame, truncated, ip, port);
  }
};

bool syslogAcceptErrorLosesListener(int status) {
  // Only errors about the listening socket itself. Linux accept(2) also reports the pending
  // connection's network errors (EPROTO, ENETDOWN, EHOSTUNREACH, EPERM, ETIMEDOUT, ...), and
  // libuv passes them on: one bad client must not close the listener.
  return status == UV_EBADF || status == UV_ENOTSOCK || status == UV_EINVAL || status == UV_EFAULT;
}

// ---- configuration ----

const OptionTable<SyslogConfig>& syslogOptionTable() {
  static const OptionTable<SyslogConfig> table = [] {
    OptionTable<SyslogConfig> t;
    t.list("listeners", &SyslogConfig::listeners, true,
           "where to listen: udp://host:port, tcp://host:port, tls://host:port, unix:///path "
           "(a Unix datagram socket)")
        .integer("batch_size", &SyslogConfig::batch_size, 1000, 1, 1000000,
                 "events per batch offered to the channels")
        .duration("batch_timeout", &SyslogConfig::batch_timeout, "100ms", Millis(1),
                  Millis(3600000), "a partial batch is offered after this long")
        .size("max_message_size", &SyslogConfig::max_message_size, "64KiB", 64, 64 << 20,
              "longer messages are cut to this size and get syslog.incomplete: true")
        .integer("max_connections", &SyslogConfig::max_connections, 1000, 1, 1000000,
                 "TCP/TLS connections open at once; more are closed as soon as accepted")
        .duration("idle_timeout", &SyslogConfig::idle_timeout, "0", Millis(0), Millis(86400000),
                  "close a TCP/TLS connection that sent nothing for this long; 0: never")
        .size("max_buffer", &SyslogConfig::max_buffer, "1MiB", 64, 64 << 20,
              "bytes one connection may hold for an unfinished message; a longer message is cut")
        .size("udp_receive_buffer", &SyslogConfig::udp_receive_buffer, "0", 0, 1 << 30,
              "SO_RCVBUF of UDP sockets (the kernel may double or cap it); 0: system default")
        .boolean("client_headers", &SyslogConfig::client_headers, false,
                 "add client.ip and client.port headers (the sender's address)")
        .boolean("raw_header", &SyslogConfig::raw_header, false,
                 "add a syslog.raw header holding the message exactly as received")
        .path("cert_file", &SyslogConfig::cert_file, "",
              "PEM certificate chain for tls:// listeners (read at start and on reload)")
        .path("key_file", &SyslogConfig::key_file, "", "PEM private key for tls:// listeners")
        .path("ca_file", &SyslogConfig::ca_file, "",
              "PEM CA certificates that client certificates are verified against")
        .boolean("verify_client", &SyslogConfig::verify_client, false,
                 "tls:// clients must present a certificate signed by ca_file")
        .choice("min_tls_version", &SyslogConfig::min_tls_version, {"1.2", "1.3"}, "1.2",
                "oldest TLS version accepted")
        .string("tls_ciphers", &SyslogConfig::tls_ciphers, kSyslogDefaultTlsCiphers,
                "OpenSSL cipher list for TLS 1.2 connections (TLS 1.3 suites are all AEAD); the "
                "default offers only forward-secret AEAD suites, no CBC")
        .boolean("strict", &SyslogConfig::strict, false,
                 "refuse what RFC 5424 forbids (and messages without PRI) into syslog.invalid "
                 "instead of keeping them marked in syslog.deviation")
        .string("rfc3164_timezone", &SyslogConfig::rfc3164_timezone, "local",
                "zone of RFC 3164 timestamps that carry none: local (the host's, from TZ or "
                "/etc/localtime), UTC, an offset like +05:30, or an IANA name like "
                "Europe/Berlin");
    return t;
  }();
  return table;
}

std::optional<SyslogListenerAddress> parseSyslogListener(const std::string& url,
                                                         std::string& error) {
  SyslogListenerAddress a;
  size_t sep = url.find("://");
  if (sep == std::string::npos) {
    error = "listener '" + url + "' has no scheme (udp://, tcp://, tls:// or unix://)";
    return std::nullopt;
  }
  std::string scheme = url.substr(0, sep);
  std::string rest = url.substr(sep + 3);
  if (scheme == "unix") {
    if (rest.empty() || rest[0] != '/') {
      error = "listener '" + url + "': unix:// needs an absolute path (unix:///run/x.sock)";
      return std::nullopt;
    }
    if (rest.size() >= sizeof(sockaddr_un{}.sun_path)) {
      error = "listener '" + url + "': the socket path is too long";
      return std::nullopt;
    }
    a.kind = SyslogListenerAddress::Kind::Unix;
    a.path = rest;
    return a;
  }
  if (scheme == "udp") {
    a.kind = SyslogListenerAddress::Kind::Udp;
  } else if (scheme == "tcp") {
    a.kind = SyslogListenerAddress::Kind::Tcp;
  } else if (scheme == "tls") {
    a.kind = SyslogListenerAddress::Kind::Tls;
  } else {
    error = "listener '" + url + "': unknown scheme '" + scheme +
            "' (use udp://, tcp://, tls:// or unix://)";
    return std::nullopt;
  }
  std::string host, port;
  if (!rest.empty() && rest[0] == '[') {
    size_t close = rest.find(']');
    if (close == std::string::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      error = "listener '" + url + "': expected [ipv6]:port";
      return std::nullopt;
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string::npos) {
      error = "listener '" + url + "': expected host:port";
      return std::nullopt;
    }
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) > 65535) {
    error = "listener '" + url + "': port must be a number from 0 to 65535";
    return std::nullopt;
  }
  a.host = host;
  a.port = std::stoi(port);
  struct sockaddr_storage ss;
  if (host.empty() || !socketAddress(a, ss)) {
    error = "listener '" + url + "': host must be an IP address or localhost, got '" + host + "'";
    return std::nullopt;
  }
  return a;
}

// The server TLS context for `config` (certificate chain, key, optional CA for client
// certificates, minimum version); null with the reason in `error`.
static SSL_CTX* buildTlsContext(const SyslogConfig& config, std::string& error) {
  if (config.cert_file.empty() || config.key_file.empty()) {
    error = "tls:// listeners need cert_file and key_file";
    return nullptr;
  }
  if (config.verify_client && config.ca_file.empty()) {
    error = "verify_client needs ca_file";
    return nullptr;
  }
  // Checked without opening them: OpenSSL's open of a FIFO put in a file's place would block
  // the loop (a reload re-reads them there).
  for (const std::string* file : {&config.cert_file, &config.key_file, &config.ca_file}) {
    if (file->empty()) continue;
    if (auto why = checkReadableFile(*file)) {
      error = *why;
      return nullptr;
    }
  }
  ERR_clear_error();
  SSL_CTX* tls = SSL_CTX_new(TLS_server_method());
  std::string what;
  if (tls == nullptr) {
    what = "cannot create a TLS context";
  } else if (SSL_CTX_set_min_proto_version(
                 tls, config.min_tls_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION) != 1) {
    what = "cannot set min_tls_version";
  } else if (SSL_CTX_set_cipher_list(tls, config.tls_ciphers.c_str()) != 1) {
    what = "tls_ciphers '" + config.tls_ciphers + "' names no usable cipher";
  } else if (SSL_CTX_use_certificate_chain_file(tls, config.cert_file.c_str()) != 1) {
    what = "cannot load cert_file '" + config.cert_file + "'";
  } else if (SSL_CTX_use_PrivateKey_file(tls, config.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    what = "cannot load key_file '" + config.key_file + "'";
  } else if (SSL_CTX_check_private_key(tls) != 1) {
    what = "key_file '" + config.key_file + "' does not match cert_file";
  } else if (!config.ca_file.empty() &&
             SSL_CTX_load_verify_locations(tls, config.ca_file.c_str(), nullptr) != 1) {
    what = "cannot load ca_file '" + config.ca_file + "'";
  }
  if (!what.empty()) {
    error = what + ": " + opensslError();
    if (tls != nullptr) SSL_CTX_free(tls);
    return nullptr;
  }
  if (config.verify_client) {
    SSL_CTX_set_verify(tls, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  SSL_CTX_set_mode(tls, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return tls;
}

std::unique_ptr<SyslogSource> SyslogSource::create(SyslogConfig config, ConfigErrors& errors) {
  std::vector<SyslogListenerAddress> addresses;
  bool need_tls = false;
  for (const auto& url : config.listeners) {
    std::string e;
    auto a = parseSyslogListener(url, e);
    if (!a) {
      errors.emplace_back("listeners", e);
      continue;
    }
    need_tls = need_tls || a->kind == SyslogListenerAddress::Kind::Tls;
    addresses.push_back(*a);
  }
  if (config.listeners.empty()) errors.emplace_back("listeners", "at least one is needed");
  std::string what;
  auto zone = SyslogTimeZone::resolve(config.rfc3164_timezone, what);
  if (!zone) errors.emplace_back("rfc3164_timezone", what);
  SSL_CTX* tls = nullptr;
  if (need_tls) {
    tls = buildTlsContext(config, what);
    if (tls == nullptr)
      errors.emplace_back(config.cert_file.empty() ? "listeners" : "cert_file", what);
  }
  if (!errors.empty()) {
    if (tls != nullptr) SSL_CTX_free(tls);
    return nullptr;
  }
  return std::unique_ptr<SyslogSource>(
      new SyslogSource(std::move(config), std::move(addresses), tls, std::move(*zone)));
}

std::unique_ptr<SyslogSource> SyslogSource::create(SyslogConfig config, std::string& error) {
  ConfigErrors errors;
  auto source = create(std::move(config), errors);
  error.clear();
  for (const auto& [key, e] : errors) error += (error.empty() ? "" : "; ") + key + ": " + e;
  return source;
}

SyslogSource::SyslogSource(SyslogConfig config, std::vector<SyslogListenerAddress> addresses,
                           SSL_CTX* tls_ctx, SyslogTimeZone rfc3164_zone)
    : config_(std::move(config)),
      addresses_(std::move(addresses)),
      tls_ctx_(tls_ctx),
      rfc3164_zone_(std::move(rfc3164_zone)) {}

SyslogSource::~SyslogSource() {
  if (open_handles_ > 0) {
    spdlog::critical("syslog source destroyed with {} open handles: stop() did not finish",
                     open_handles_);
    std::abort();
  }
  if (ctx_ != nullptr) ctx_->metrics().clearGauges(this);
  if (tls_ctx_ != nullptr) SSL_CTX_free(tls_ctx_);
}

// ---- lifecycle ----

void SyslogSource::start(SourceContext& ctx) {
  ctx_ = &ctx;
  loop_ = ctx.loop();
  started_ = true;
  MetricSet& m = ctx.metrics();
  counters_.messages = &m.counter("MessageCount");
  counters_.bytes = &m.counter("BytesReceivedCount");
  counters_.incomplete = &m.counter("IncompleteMessageCount");
  counters_.failures[0] = nullptr;
  for (int k = 1; k < kSyslogFailureKinds; ++k) {
    std::string name = syslogFailureName(static_cast<SyslogFailure>(k));
    // "structured_data" -> "StructuredData"
    std::string camel;
    bool upper = true;
    for (char ch : name) {
      if (ch == '_') {
        upper = true;
        continue;
      }
      camel += upper ? static_cast<char>(ch - 'a' + 'A') : ch;
      upper = false;
    }
    counters_.failures[k] = &m.counter("ParseFailure" + camel + "Count");
  }
  for (int k = 0; k < kSyslogDeviationKinds; ++k) {
    counters_.deviations[k] =
        &m.counter(syslogDeviationMetricName(static_cast<SyslogDeviation>(k)));
  }
  counters_.accepted = &m.counter("ConnectionAcceptedCount");
  counters_.refused = &m.counter("ConnectionRefusedCount");
  counters_.accept_errors = &m.counter("AcceptErrorCount");
  counters_.closed = &m.counter("ConnectionClosedCount");
  counters_.idle_closed = &m.counter("ConnectionIdleTimeoutCount");
  counters_.tls_failures = &m.counter("TlsHandshakeFailureCount");
  counters_.udp_dropped = &m.counter("UdpDroppedCount");
  counters_.dropped = &m.counter("DroppedEventCount");
  counters_.listener_errors = &m.counter("ListenerErrorCount");
  counters_.tls_reload_errors = &m.counter("TlsReloadErrorCount");
  m.gauge(
      "ConnectionOpenCount", [this] { return static_cast<double>(connections_.size()); }, this);

  datagram_buf_.resize(kDatagramBytes + kReadBytes);
  uv_timer_init(loop_, &batch_timer_);
  batch_timer_.data = this;
  ++open_handles_;
  uv_timer_init(loop_, &retry_timer_);
  retry_timer_.data = this;
  ++open_handles_;
  for (const auto& a : addresses_) {
    auto l = std::make_unique<Listener>();
    l->self = this;
    l->addr = a;
    listeners_.push_back(std::move(l));
  }
  for (auto& l : listeners_) openListener(*l);
}

std::string SyslogSource::listenerUrl(const SyslogListenerAddress& a) {
  switch (a.kind) {
    case SyslogListenerAddress::Kind::Unix:
      return "unix://" + a.path;
    case SyslogListenerAddress::Kind::Udp:
      return "udp://" + a.host + ":" + std::to_string(a.port);
    case SyslogListenerAddress::Kind::Tcp:
      return "tcp://" + a.host + ":" + std::to_string(a.port);
    case SyslogListenerAddress::Kind::Tls:
      return "tls://" + a.host + ":" + std::to_string(a.port);
  }
  return {};
}

void SyslogSource::listenerFailed(Listener& l, const std::string& what, int rc) {
  counters_.listener_errors->inc();
  std::string text = what + (rc < 0 ? std::string(": ") + uv_strerror(rc) : std::string());
  // Logged when it starts failing; further failed attempts only count.
  if (!l.failed) {
    spdlog::error("syslog source '{}': {}; trying again, every {} s at most", ctx_->name(), text,
                  kRetryMaxMs / 1000);
  }
  l.failed = true;
  l.bound_port = 0;
  ctx_->reportProblem(listenerUrl(l.addr), text);
  scheduleRetry();
}

void SyslogSource::loseListener(Listener& l, const std::string& what, int rc) {
  if (!l.open || stopping_) return;
  l.open = false;
  l.closing = true;
  switch (l.addr.kind) {
    case SyslogListenerAddress::Kind::Udp:
      closeHandle(reinterpret_cast<uv_handle_t*>(&l.udp));
      break;
    case SyslogListenerAddress::Kind::Tcp:
    case SyslogListenerAddress::Kind::Tls:
      closeHandle(reinterpret_cast<uv_handle_t*>(&l.tcp));
      break;
    case SyslogListenerAddress::Kind::Unix:
      uv_poll_stop(&l.poll);
      closeHandle(reinterpret_cast<uv_handle_t*>(&l.poll));
      break;
  }
  listenerFailed(l, what, rc);
}

void SyslogSource::scheduleRetry() {
  if (stopping_ || uv_is_active(reinterpret_cast<uv_handle_t*>(&retry_timer_))) return;
  uv_timer_start(
      &retry_timer_, [](uv_timer_t* t) { static_cast<SyslogSource*>(t->data)->retryListeners(); },
      retry_ms_, 0);
}

void SyslogSource::retryListeners() {
  if (stopping_) return;
  // The next round's delay, set before the attempts: a listener failing again below schedules
  // the retry with it (500 ms, 1 s, 2 s, ... up to 30 s).
  retry_ms_ = std::min(retry_ms_ * 2, kRetryMaxMs);
  bool waiting = false;
  for (auto& l : listeners_) {
    if (!l->failed) continue;
    if (l->closing) {
      waiting = true;  // its old handle is still closing: next round
      continue;
    }
    openListener(*l);
    waiting = waiting || l->failed;
  }
  if (!waiting) {
    retry_ms_ = kRetryFirstMs;
    return;
  }
  scheduleRetry();
}

void SyslogSource::openListener(Listener& l) {
  const auto& a = l.addr;
  const std::string name = ctx_->name();
  auto fail = [&](const std::string& what, int rc) { listenerFailed(l, what, rc); };
  if (a.kind == SyslogListenerAddress::Kind::Unix) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      fail("cannot create a Unix datagram socket", -errno);
      return;
    }
    struct sockaddr_un un {};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, a.path.c_str(), a.path.size() + 1);
    struct stat st {};
    // A socket left behind by a previous run would make bind fail.
    if (lstat(a.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(a.path.c_str());
    if (bind(fd, reinterpret_cast<struct sockaddr*>(&un), sizeof(un)) != 0) {
      int err = -errno;
      ::close(fd);
      fail("cannot bind unix://" + a.path, err);
      return;
    }
    chmod(a.path.c_str(), 0666);  // every local program may log, as with /dev/log
    if (config_.udp_receive_buffer > 0) {
      int v = static_cast<int>(config_.udp_receive_buffer);
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
    }
    l.unix_fd = fd;
    uv_poll_init(loop_, &l.poll, fd);
    l.poll.data = &l;
    l.open = true;
    ++open_handles_;
    uv_poll_start(&l.poll, UV_READABLE, [](uv_poll_t* h, int status, int) {
      auto* lis = static_cast<Listener*>(h->data);
      if (status < 0) {
        lis->self->loseListener(*lis, "lost unix://" + lis->addr.path, status);
        return;
      }
      SyslogSource* self = lis->self;
      for (int i = 0; i < kUnixReadsPerWakeup && lis->open; ++i) {
        ssize_t n = recv(lis->unix_fd, self->datagram_buf_.data(), kDatagramBytes, MSG_TRUNC);
        if (n < 0) break;  // EAGAIN: drained
        size_t len = static_cast<size_t>(n);
        bool cut = len > kDatagramBytes;
        self->counters_.bytes->inc(len);
        std::string_view data(self->datagram_buf_.data(), cut ? kDatagramBytes : len);
        self->onDatagram(data, nullptr, cut);
      }
    });
    listenerUp(l);
    return;
  }

  struct sockaddr_storage ss;
  socketAddress(a, ss);
  const auto* sa = reinterpret_cast<const struct sockaddr*>(&ss);
  std::string url = listenerUrl(a);
  if (a.kind == SyslogListenerAddress::Kind::Udp) {
    int rc = uv_udp_init_ex(loop_, &l.udp, AF_UNSPEC | UV_UDP_RECVMMSG);
    if (rc != 0) {
      fail("cannot listen on " + url, rc);
      return;
    }
    if (!udp_buf_) udp_buf_.reset(new char[kDatagramBytes * kDatagramsPerRead]);
    l.udp.data = &l;
    l.open = true;
    ++open_handles_;
    rc = uv_udp_bind(&l.udp, sa, 0);
    if (rc == 0 && config_.udp_receive_buffer > 0) {
      int v = static_cast<int>(config_.udp_receive_buffer);
      uv_recv_buffer_size(reinterpret_cast<uv_handle_t*>(&l.udp), &v);
    }
    if (rc == 0) {
      rc = uv_udp_recv_start(
          &l.udp,
          [](uv_handle_t* h, size_t, uv_buf_t* buf) {
            auto* self = static_cast<Listener*>(h->data)->self;
            // Room for several datagrams: libuv then reads them with one recvmmsg and calls
            // back once per datagram (UV_UDP_MMSG_CHUNK), then once with no address. Those
            // callbacks stop early if receiving is stopped in between, and the datagrams
            // already read would be lost: never call uv_udp_recv_stop from onDatagram (a full
            // channel drops and counts instead).
            *buf = uv_buf_init(self->udp_buf_.get(),
                               static_cast<unsigned>(kDatagramBytes * kDatagramsPerRead));
          },
          [](uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const struct sockaddr* addr,
             unsigned flags) {
            auto* lis = static_cast<Listener*>(h->data);
            if (nread < 0) {
              spdlog::warn("syslog source '{}': UDP receive: {}", lis->self->ctx_->name(),
                           uv_strerror(static_cast<int>(nread)));
              return;
            }
            if (addr == nullptr) return;  // nothing more for now
            size_t len = static_cast<size_t>(nread);
            lis->self->counters_.bytes->inc(len);
            std::string_view data(buf->base, len);
            lis->self->onDatagram(data, addr, (flags & UV_UDP_PARTIAL) != 0);
          });
    }
    if (rc != 0) {
      closeHandle(reinterpret_cast<uv_handle_t*>(&l.udp));
      l.open = false;
      l.closing = true;
      fail("cannot listen on " + url, rc);
      return;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_udp_getsockname(&l.udp, reinterpret_cast<struct sockaddr*>(&bound), &len);
    std::string ip, port;
    addressText(reinterpret_cast<struct sockaddr*>(&bound), ip, port);
    l.bound_port = std::atoi(port.c_str());
  } else {
    uv_tcp_init(loop_, &l.tcp);
    l.tcp.data = &l;
    l.open = true;
    ++open_handles_;
    int rc = uv_tcp_bind(&l.tcp, sa, 0);
    if (rc == 0) {
      rc = uv_listen(reinterpret_cast<uv_stream_t*>(&l.tcp), kBacklog,
                     [](uv_stream_t* server, int status) {
                       auto* lis = static_cast<Listener*>(server->data);
                       if (status < 0) {
                         lis->self->onAcceptError(*lis, status);
                         return;
                       }
                       lis->self->onAccept(*lis);
                     });
    }
    if (rc != 0) {
      closeHandle(reinterpret_cast<uv_handle_t*>(&l.tcp));
      l.open = false;
      l.closing = true;
      fail("cannot listen on " + url, rc);
      return;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&l.tcp, reinterpret_cast<struct sockaddr*>(&bound), &len);
    std::string ip, port;
    addressText(reinterpret_cast<struct sockaddr*>(&bound), ip, port);
    l.bound_port = std::atoi(port.c_str());
  }
  listenerUp(l);
}

void SyslogSource::listenerUp(Listener& l) {
  std::string url = listenerUrl(l.addr);
  std::string port = l.addr.kind == SyslogListenerAddress::Kind::Unix
                         ? ""
                         : fmt::format(" (port {})", l.bound_port);
  if (l.failed) {
    l.failed = false;
    ctx_->clearProblem(url);
    spdlog::info("syslog source '{}': listening again on {}{}", ctx_->name(), url, port);
  } else {
    spdlog::info("syslog source '{}': listening on {}{}", ctx_->name(), url, port);
  }
}

void SyslogSource::reload() {
  if (tls_ctx_ == nullptr) return;
  std::string error;
  SSL_CTX* fresh = buildTlsContext(config_, error);
  if (fresh == nullptr) {
    counters_.tls_reload_errors->inc();
    spdlog::error("syslog source '{}': reload: keeping the current certificates: {}",
                  ctx_ ? ctx_->name() : std::string(), error);
    return;
  }
  // Open connections keep the context they were made with (OpenSSL counts the references).
  SSL_CTX_free(tls_ctx_);
  tls_ctx_ = fresh;
  spdlog::info("syslog source '{}': reload: certificates read again from {}",
               ctx_ ? ctx_->name() : std::string(), config_.cert_file);
}

int SyslogSource::boundPort(size_t i) const {
  return i < listeners_.size() ? listeners_[i]->bound_port : 0;
}

// ---- datagrams ----

void SyslogSource::onDatagram(std::string_view data, const struct sockaddr* addr, bool truncated) {
  // A datagram is one message; a trailing LF/NUL (some senders add one) is not part of it.
  while (!data.empty() && (data.back() == '\n' || data.back() == '\0' || data.back() == '\r')) {
    data.remove_suffix(1);
  }
  if (data.empty()) return;
  if (blocked_ && current_.size() >= config_.batch_size) {
    counters_.udp_dropped->inc();
    return;
  }
  std::string ip, port;
  if (config_.client_headers && addr != nullptr) addressText(addr, ip, port);
  addMessage(data, truncated, ip, port);
  afterAdd();
}

// ---- streams ----

void SyslogSource::onAcceptError(Listener& l, int status) {
  if (syslogAcceptErrorLosesListener(status)) {
    loseListener(l, "lost " + listenerUrl(l.addr), status);
    return;
  }
  // Out of descriptors: libuv accepts and closes the connection, so it was refused.
  bool refused = status == UV_EMFILE || status == UV_ENFILE;
  (refused ? counters_.refused : counters_.accept_errors)->inc();
  uint64_t now = uv_now(loop_);
  if (!accept_log_.allow(now)) return;
  uint64_t left_out = accept_log_.takeSuppressed();
  spdlog::warn("syslog source '{}': {} on {}: {}{}", ctx_->name(),
               refused ? "refused a connection" : "accept failed", listenerUrl(l.addr),
               uv_strerror(status),
               left_out > 0 ? fmt::format(" ({} similar lines left out)", left_out) : "");
}

void SyslogSource::acceptErrorForTest(size_t i, int status) {
  if (i < listeners_.size()) onAcceptError(*listeners_[i], status);
}

void SyslogSource::onAccept(Listener& l) {
  auto conn = std::make_unique<Connection>(
      this, static_cast<size_t>(std::min(config_.max_message_size, config_.max_buffer)));
  Connection& c = *conn;
  uv_tcp_init(loop_, &c.tcp);
  c.tcp.data = &c;
  uv_timer_init(loop_, &c.idle);
  c.idle.data = &c;
  c.open_handles = 2;
  open_handles_ += 2;
  connections_.push_back(std::move(conn));
  c.it = std::prev(connections_.end());
  if (uv_accept(reinterpret_cast<uv_stream_t*>(&l.tcp), reinterpret_cast<uv_stream_t*>(&c.tcp)) !=
      0) {
    closeConnection(c);
    return;
  }
  if (connections_.size() > config_.max_connections) {
    counters_.refused->inc();
    spdlog::warn("syslog source '{}': refusing a connection: max_connections ({}) reached",
                 ctx_->name(), config_.max_connections);
    closeConnection(c);
    return;
  }
  counters_.accepted->inc();
  struct sockaddr_storage peer;
  int len = sizeof(peer);
  if (uv_tcp_getpeername(&c.tcp, reinterpret_cast<struct sockaddr*>(&peer), &len) == 0) {
    addressText(reinterpret_cast<struct sockaddr*>(&peer), c.ip, c.port);
  }
  if (l.addr.kind == SyslogListenerAddress::Kind::Tls) {
    c.ssl = SSL_new(tls_ctx_);
    c.rbio = BIO_new(BIO_s_mem());
    c.wbio = BIO_new(BIO_s_mem());
    SSL_set_bio(c.ssl, c.rbio, c.wbio);
    SSL_set_accept_state(c.ssl);
  }
  uv_tcp_nodelay(&c.tcp, 1);
  if (!blocked_) startReading(c);
  if (config_.idle_timeout.count() > 0) {
    uint64_t ms = static_cast<uint64_t>(config_.idle_timeout.count());
    uv_timer_start(
        &c.idle,
        [](uv_timer_t* t) {
          auto* conn = static_cast<Connection*>(t->data);
          SyslogSource* self = conn->self;
          if (self->blocked_) return;  // paused by us, not idle: the repeat fires again later
          self->counters_.idle_closed->inc();
          spdlog::info("syslog source '{}': closing {}:{}: idle for {}", self->ctx_->name(),
                       conn->ip, conn->port, formatDuration(self->config_.idle_timeout));
          self->closeConnection(*conn);
        },
        ms, ms);
  }
}

void SyslogSource::startReading(Connection& c) {
  if (c.reading || c.closing) return;
  int rc = uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c.tcp),
      [](uv_handle_t* h, size_t, uv_buf_t* buf) {
        auto* self = static_cast<Connection*>(h->data)->self;
        *buf = uv_buf_init(self->datagram_buf_.data() + kDatagramBytes, kReadBytes);
      },
      [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
        auto* conn = static_cast<Connection*>(s->data);
        SyslogSource* self = conn->self;
        if (nread > 0) {
          self->counters_.bytes->inc(static_cast<uint64_t>(nread));
          if (self->config_.idle_timeout.count() > 0) uv_timer_again(&conn->idle);
          self->onConnectionData(*conn, std::string_view(buf->base, static_cast<size_t>(nread)));
        } else if (nread < 0) {
          if (nread != UV_EOF && nread != UV_ECONNRESET) {
            spdlog::warn("syslog source '{}': reading from {}:{}: {}", self->ctx_->name(), conn->ip,
                         conn->port, uv_strerror(static_cast<int>(nread)));
          }
          self->closeConnection(*conn);
        }
      });
  c.reading = rc == 0;
  if (rc != 0) closeConnection(c);
}

void SyslogSource::onConnectionData(Connection& c, std::string_view data) {
  if (c.ssl == nullptr) {
    onPlaintext(c, data);
    return;
  }
  if (!tlsFeed(c, data)) closeConnection(c);
}

void SyslogSource::onPlaintext(Connection& c, std::string_view data) {
  c.feed(data);
  afterAdd();
}

bool SyslogSource::tlsFeed(Connection& c, std::string_view data) {
  while (!data.empty()) {
    int n = BIO_write(c.rbio, data.data(), static_cast<int>(data.size()));
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  if (!c.handshake_done) {
    ERR_clear_error();
    int rc = SSL_do_handshake(c.ssl);
    if (rc != 1) {
      int err = SSL_get_error(c.ssl, rc);
      tlsFlush(c);  // an alert, or the next handshake flight
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return true;
      counters_.tls_failures->inc();
      spdlog::warn("syslog source '{}': TLS handshake with {}:{} failed: {}", ctx_->name(), c.ip,
                   c.port, opensslError());
      return false;
    }
    c.handshake_done = true;
  }
  // Decrypt everything available; the plaintext goes to the framer.
  char plain[16 * 1024];
  for (;;) {
    ERR_clear_error();
    int n = SSL_read(c.ssl, plain, sizeof(plain));
    if (n > 0) {
      c.feed(std::string_view(plain, static_cast<size_t>(n)));
      continue;
    }
    int err = SSL_get_error(c.ssl, n);
    tlsFlush(c);
    afterAdd();
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return true;
    if (err != SSL_ERROR_ZERO_RETURN) {
      spdlog::warn("syslog source '{}': TLS error from {}:{}: {}", ctx_->name(), c.ip, c.port,
                   opensslError());
    }
    return false;  // close_notify or an error: the connection ends
  }
}

void SyslogSource::tlsFlush(Connection& c) {
  struct WriteReq {
    uv_write_t req;
    std::string data;
  };
  size_t pending = BIO_ctrl_pending(c.wbio);
  if (pending == 0 || c.closing) return;
  auto* w = new WriteReq();
  w->data.resize(pending);
  int n = BIO_read(c.wbio, w->data.data(), static_cast<int>(pending));
  if (n <= 0) {
    delete w;
    return;
  }
  w->data.resize(static_cast<size_t>(n));
  uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  w->req.data = w;
  int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&c.tcp), &buf, 1,
                    [](uv_write_t* req, int) { delete static_cast<WriteReq*>(req->data); });
  if (rc != 0) delete w;
}

void SyslogSource::closeConnection(Connection& c) {
  if (c.closing) return;
  c.closing = true;
  c.finish();  // a last message without its terminator is still a message
  afterAdd();
  c.reading = false;
  counters_.closed->inc();
  uv_close(reinterpret_cast<uv_handle_t*>(&c.tcp), [](uv_handle_t* h) {
    auto* conn = static_cast<Connection*>(h->data);
    --conn->open_handles;
    conn->self->onHandleClosed();
  });
  uv_close(reinterpret_cast<uv_handle_t*>(&c.idle), [](uv_handle_t* h) {
    auto* conn = static_cast<Connection*>(h->data);
    --conn->open_handles;
    conn->self->onHandleClosed();
  });
  closing_.push_back(std::move(*c.it));
  connections_.erase(c.it);
}

// ---- batching ----

void SyslogSource::addMessage(std::string_view frame, bool truncated, const std::string& ip,
                              const std::string& port) {
  // A trailing LF (rsyslog's RSYSLOG_SyslogProtocol23Format ends with one, and octet counting
  // includes it), CR or NUL is framing, not message.
  while (!frame.empty() && (frame.back() == '\n' || frame.back() == '\r' || frame.back() == '\0')) {
    frame.remove_suffix(1);
  }
  if (frame.size() > config_.max_message_size) {
    frame = frame.substr(0, static_cast<size_t>(config_.max_message_size));
    truncated = true;
  }
  if (current_.empty() && !blocked_) {
    uv_timer_start(
        &batch_timer_, [](uv_timer_t* t) { static_cast<SyslogSource*>(t->data)->offerCurrent(); },
        static_cast<uint64_t>(config_.batch_timeout.count()), 0);
  }
  SyslogEventOptions options;
  options.raw_header = config_.raw_header;
  options.rfc3164_zone = &rfc3164_zone_;
  options.strict = config_.strict;
  SyslogDeviations deviations = 0;
  options.deviations = &deviations;
  if (config_.client_headers) {
    options.client_ip = ip;
    options.client_port = port;
  }
  SyslogFailure f = addSyslogEvent(current_, frame, truncated, nowNs(), options);
  counters_.messages->inc();
  if (truncated) counters_.incomplete->inc();
  if (f != SyslogFailure::None) counters_.failures[static_cast<int>(f)]->inc();
  for (int k = 0; deviations != 0 && k < kSyslogDeviationKinds; ++k) {
    if (deviations & (1u << k)) counters_.deviations[k]->inc();
  }
}

void SyslogSource::afterAdd() {
  if (!blocked_ && current_.size() >= config_.batch_size) offerCurrent();
}

void SyslogSource::offerCurrent() {
  if (current_.empty() || blocked_ || stopping_) return;
  uv_timer_stop(&batch_timer_);
  if (ctx_->offer(current_) == OfferResult::Accepted) {
    current_.clear();
    return;
  }
  pending_ = std::move(current_);
  current_ = Batch();
  blocked_ = true;
  pauseAll();
}

void SyslogSource::pauseAll() {
  for (auto& c : connections_) {
    if (c->reading) {
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
      c->reading = false;
    }
  }
}

void SyslogSource::resumeAll() {
  for (auto& c : connections_) startReading(*c);
}

void SyslogSource::resume() {
  if (!started_ || stopping_ || !blocked_) return;
  if (ctx_->offer(pending_) == OfferResult::Full) return;
  pending_.clear();
  blocked_ = false;
  // What arrived while blocked (the rest of chunks already read, datagrams) goes next.
  if (current_.size() >= config_.batch_size) {
    offerCurrent();
    if (blocked_) return;
  } else if (!current_.empty()) {
    uv_timer_start(
        &batch_timer_, [](uv_timer_t* t) { static_cast<SyslogSource*>(t->data)->offerCurrent(); },
        static_cast<uint64_t>(config_.batch_timeout.count()), 0);
  }
  resumeAll();
}

// ---- stop ----

void SyslogSource::stop(std::function<void()> done) {
  if (stopping_) {
    spdlog::error("syslog source: stop() called twice; ignored");
    return;
  }
  if (!started_) {
    stopping_ = true;
    done();
    return;
  }
  done_ = std::move(done);
  closeHandle(reinterpret_cast<uv_handle_t*>(&retry_timer_));
  for (auto& l : listeners_) {
    if (!l->open) continue;
    l->open = false;
    switch (l->addr.kind) {
      case SyslogListenerAddress::Kind::Udp:
        closeHandle(reinterpret_cast<uv_handle_t*>(&l->udp));
        break;
      case SyslogListenerAddress::Kind::Tcp:
      case SyslogListenerAddress::Kind::Tls:
        closeHandle(reinterpret_cast<uv_handle_t*>(&l->tcp));
        break;
      case SyslogListenerAddress::Kind::Unix:
        uv_poll_stop(&l->poll);
        closeHandle(reinterpret_cast<uv_handle_t*>(&l->poll));
        break;
    }
  }
  // Closing connections emits their partial frames into current_ (not offered: blocked_ or
  // stopping_ is checked below).
  stopping_ = true;
  while (!connections_.empty()) closeConnection(*connections_.front());
  uint64_t dropped = 0;
  for (Batch* b : {&pending_, &current_}) {
    if (b->empty()) continue;
    if (dropped == 0 && ctx_->offer(*b) == OfferResult::Accepted) {
      b->clear();
      continue;
    }
    dropped += b->size();
    b->clear();
  }
  blocked_ = false;
  if (dropped > 0) {
    counters_.dropped->inc(dropped);
    spdlog::error("syslog source '{}': dropping {} events at stop: the channels refused them",
                  ctx_->name(), dropped);
  }
  closeHandle(reinterpret_cast<uv_handle_t*>(&batch_timer_));
}

void SyslogSource::closeHandle(uv_handle_t* handle) {
  if (uv_is_closing(handle)) return;
  uv_close(handle, &SyslogSource::closeCallback);
}

void SyslogSource::closeCallback(uv_handle_t* handle) {
  SyslogSource* self = nullptr;
  if (handle->type == UV_TIMER) {
    self = static_cast<SyslogSource*>(handle->data);
  } else {
    auto* l = static_cast<Listener*>(handle->data);
    self = l->self;
    l->closing = false;
    if (l->unix_fd >= 0) {
      ::close(l->unix_fd);
      l->unix_fd = -1;
      unlink(l->addr.path.c_str());
    }
  }
  self->onHandleClosed();
}

void SyslogSource::onHandleClosed() {
  --open_handles_;
  // Connections whose both handles are closed can go.
  for (size_t i = 0; i < closing_.size();) {
    if (closing_[i]->open_handles == 0) {
      closing_[i] = std::move(closing_.back());
      closing_.pop_back();
    } else {
      ++i;
    }
  }
  if (stopping_ && open_handles_ == 0 && done_) {
    auto done = std::move(done_);
    done_ = nullptr;
    done();  // may destroy this source
  }
}

void registerSyslogSource(Registry& registry) {
  registry.addSource<SyslogConfig>(
      "syslog", "Receives syslog (RFC 5424 / RFC 3164) over UDP, TCP, TLS and a Unix socket",
      syslogOptionTable(),
      [](const SyslogConfig& config, const BuildContext& b) -> SourcePtr {
        std::string error;
        auto source = SyslogSource::create(config, error);
        if (!source) spdlog::error("source {}: {}", b.name, error);
        return source;
      },
      // `sluice check` and reloads see bad listener URLs, TLS files and time zones too: the
      // same checks as the factory, without binding anything.
      [](const SyslogConfig& config) {
        ConfigErrors errors;
        SyslogSource::create(config, errors);
        return errors;
      });
}

}  // namespace sluice

#pragma once
// The `syslog` source: receives syslog over UDP, TCP, TLS (RFC 5425) and a Unix datagram
// socket, parses RFC 5424 / RFC 3164 (syslog_parser.h) and offers batches of events.
//
// Everything runs on the loop thread. TCP and TLS connections are split into messages by a
// SyslogFramer each (LF / CRLF / NUL terminated or RFC 6587 octet counting, per frame). TLS uses
// OpenSSL with memory BIOs over the libuv TCP handle: bytes read go into the read BIO, SSL_read
// gives the plaintext, and whatever OpenSSL wants to send (handshake, alerts, tickets) is taken
// from the write BIO and written with uv_write. Certificates are read when the source is built,
// so a reload that builds a new source re-reads them.
//
// Batching and backpressure: messages go into the current batch, offered when it holds
// batch_size events or batch_timeout after its first event. When the context refuses a batch
// (OfferResult::Full) it is kept as the one pending batch and every TCP/TLS connection stops
// reading (uv_read_stop) so senders block on their full TCP windows; the remainder of chunks
// already read still goes into the current batch. UDP and Unix datagrams keep being received:
// they fill the current batch up to batch_size and are counted as dropped after that (a datagram
// sender cannot be slowed). resume() offers the pending batch and, once accepted, reads again.
//
// Limits: max_connections (further connections are accepted and closed at once, counted as
// refused), idle_timeout (a connection silent that long is closed; not while paused by
// backpressure), max_message_size (longer messages are cut and marked incomplete), max_buffer
// (bytes one connection may hold for an unfinished frame: frames are also cut at this size).
//
// Listeners: one that cannot bind or listen (its port in use, say), or whose socket fails later,
// is reported to the context as a problem (SourceContext::reportProblem, keyed by its URL:
// /health names it, and the agent fails its start over it), logged once, counted in
// ListenerErrorCount and tried again after 0.5 s, 1 s, 2 s, ... up to 30 s; once it listens the
// problem is cleared. Only an accept error about the listening socket itself (EBADF, ENOTSOCK,
// EINVAL, EFAULT) loses the listener; a client's network error (EPROTO, ETIMEDOUT, ...) is
// counted in AcceptErrorCount, running out of descriptors (EMFILE, ENFILE) in
// ConnectionRefusedCount, both logged at most about once a second, and the listener stays.
//
// stop() closes the listeners and connections (a partial last frame of each connection is
// kept), offers what is held once more (counting what is refused as dropped), closes every
// handle and then calls done.

#include <openssl/ssl.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/event.h"
#include "agent/log_limiter.h"
#include "agent/options.h"
#include "agent/registry.h"
#include "agent/source.h"
#include "sources/syslog/syslog_framing.h"
#include "sources/syslog/syslog_parser.h"

namespace sluice {

// TLS 1.2 suites offered by default: forward secrecy and AEAD only (no CBC, whose padding
// oracles keep coming back).
inline constexpr const char* kSyslogDefaultTlsCiphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

struct SyslogConfig {
  std::vector<std::string> listeners;
  uint64_t batch_size = 1000;
  Millis batch_timeout{100};
  uint64_t max_message_size = 64 * 1024;
  uint64_t max_connections = 1000;
  Millis idle_timeout{0};
  uint64_t max_buffer = 1024 * 1024;
  uint64_t udp_receive_buffer = 0;
  bool client_headers = false;
  bool raw_header = false;
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  bool verify_client = false;
  std::string min_tls_version = "1.2";
  std::string tls_ciphers = kSyslogDefaultTlsCiphers;
  bool strict = false;
  std::string rfc3164_timezone = "local";
  bool operator==(const SyslogConfig&) const = default;
};

const OptionTable<SyslogConfig>& syslogOptionTable();

struct SyslogListenerAddress {
  enum class Kind { Udp, Tcp, Tls, Unix };
  Kind kind = Kind::Udp;
  std::string host;  // udp/tcp/tls; IPv6 in brackets in the URL, without them here
  int port = 0;
  std::string path;  // unix
};
// Parses udp://host:port, tcp://host:port, tls://host:port, unix:///path.
// True when an accept(2) error (a UV_E* code) is about the listening socket itself, which is
// then closed and opened again; any other error concerns one connection only.
bool syslogAcceptErrorLosesListener(int status);

std::optional<SyslogListenerAddress> parseSyslogListener(const std::string& url,
                                                         std::string& error);

class SyslogSource final : public Source {
 public:
  // Validates the listeners, resolves rfc3164_timezone and loads the TLS material; on failure
  // returns null and adds every problem found to `errors` under its option key.
  static std::unique_ptr<SyslogSource> create(SyslogConfig config, ConfigErrors& errors);
  // The same with the problems as one message ("key: problem; ...").
  static std::unique_ptr<SyslogSource> create(SyslogConfig config, std::string& error);
  ~SyslogSource() override;
  SyslogSource(const SyslogSource&) = delete;
  SyslogSource& operator=(const SyslogSource&) = delete;

  void start(SourceContext& ctx) override;
  void resume() override;
  void stop(std::function<void()> done) override;
  // SIGHUP with this source unchanged: reads the certificate, key and CA files again; new TLS
  // connections use them, open ones keep theirs. On an error the current ones stay (logged,
  // TlsReloadErrorCount).
  void reload() override;

  // The bound port of listener i (after start; useful with port 0), or 0.
  int boundPort(size_t i) const;
  size_t openConnections() const { return connections_.size(); }
  // Events held and not yet accepted (pending + current batch).
  size_t heldEvents() const { return pending_.size() + current_.size(); }
  bool paused() const { return blocked_; }
  // What the accept callback of listener i does with `status` (a UV_E* code); for tests, which
  // cannot make accept(2) fail with a client's network error.
  void acceptErrorForTest(size_t i, int status);

 private:
  struct Connection;
  struct Listener;
  struct Counters {
    Counter* messages = nullptr;
    Counter* bytes = nullptr;
    Counter* incomplete = nullptr;
    Counter* failures[kSyslogFailureKinds] = {};
    Counter* deviations[kSyslogDeviationKinds] = {};
    Counter* accepted = nullptr;
    Counter* refused = nullptr;
    Counter* accept_errors = nullptr;
    Counter* closed = nullptr;
    Counter* idle_closed = nullptr;
    Counter* tls_failures = nullptr;
    Counter* udp_dropped = nullptr;
    Counter* dropped = nullptr;
    Counter* listener_errors = nullptr;
    Counter* tls_reload_errors = nullptr;
  };

  SyslogSource(SyslogConfig config, std::vector<SyslogListenerAddress> addresses, SSL_CTX* tls_ctx,
               SyslogTimeZone rfc3164_zone);

  void openListener(Listener& l);
  void listenerUp(Listener& l);
  // A listener that could not bind or listen, or was lost: counted, logged once, reported to the
  // context as a problem keyed by its URL, and tried again by the retry timer.
  void listenerFailed(Listener& l, const std::string& what, int rc);
  void loseListener(Listener& l, const std::string& what, int rc);
  void scheduleRetry();
  void retryListeners();
  static std::string listenerUrl(const SyslogListenerAddress& a);
  void onAccept(Listener& l);
  // accept(2) failed: only an error about the listening socket loses the listener; a client's
  // network error (AcceptErrorCount) or running out of descriptors (ConnectionRefusedCount) is
  // counted and logged at a limited rate, and the listener stays.
  void onAcceptError(Listener& l, int status);
  // One UDP or Unix datagram; `truncated` when it did not fit the receive buffer.
  void onDatagram(std::string_view data, const struct sockaddr* addr, bool truncated);
  void onConnectionData(Connection& c, std::string_view data);
  void onPlaintext(Connection& c, std::string_view data);
  bool tlsFeed(Connection& c, std::string_view data);
  void tlsFlush(Connection& c);
  void closeConnection(Connection& c);
  void startReading(Connection& c);
  // Adds one message; `client` gives the client headers.
  void addMessage(std::string_view frame, bool truncated, const std::string& ip,
                  const std::string& port);
  void afterAdd();
  void offerCurrent();
  void pauseAll();
  void resumeAll();
  void closeHandle(uv_handle_t* handle);
  void onHandleClosed();

  static void closeCallback(uv_handle_t* handle);

  SyslogConfig config_;
  std::vector<SyslogListenerAddress> addresses_;
  SSL_CTX* tls_ctx_ = nullptr;
  SyslogTimeZone rfc3164_zone_;  // resolved once, when the source is built
  SourceContext* ctx_ = nullptr;
  uv_loop_t* loop_ = nullptr;
  Counters counters_;

  std::vector<std::unique_ptr<Listener>> listeners_;
  std::list<std::unique_ptr<Connection>> connections_;
  std::vector<std::unique_ptr<Connection>> closing_;  // waiting for their handles to close

  Batch current_;
  Batch pending_;  // refused by the context; offered again on resume()
  bool blocked_ = false;
  uv_timer_t batch_timer_{};
  uv_timer_t retry_timer_{};         // opens failed listeners again
  uint64_t retry_ms_ = 500;          // the next retry's delay: doubles per failed round
  LogLimiter accept_log_{1.0, 5.0};  // accept errors: 5 lines at once, then one a second
  std::vector<char> datagram_buf_;
  std::unique_ptr<char[]> udp_buf_;  // recvmmsg target of the UDP listeners, when there are any

  int open_handles_ = 0;
  bool started_ = false;
  bool stopping_ = false;
  std::function<void()> done_;
};

void registerSyslogSource(Registry& registry);

}  // namespace sluice

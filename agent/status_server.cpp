#include "agent/status_server.h"

#include <http_parser.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <exception>

namespace sluice {

namespace {

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  bool allow_header = false;  // 405 must say what is allowed
};

const char* reasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Unknown";
  }
}

Response errorResponse(int status) {
  Response r;
  r.status = status;
  r.body = std::string(reasonPhrase(status)) + "\n";
  r.allow_header = status == 405;
  return r;
}

std::string serialize(const Response& r, bool head_only) {
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + reasonPhrase(r.status) + "\r\n";
  out += "Content-Type: " + r.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  if (r.allow_header) out += "Allow: GET, HEAD\r\n";
  out += "Cache-Control: no-store\r\n";
  out += "Connection: close\r\n\r\n";
  if (!head_only) out += r.body;
  return out;
}

// The path of a request target: origin-form ("/metrics?x=1") or absolute-form
// ("http://host/metrics"); empty when http-parser does not accept it.
std::string pathOf(const std::string& url) {
  http_parser_url parsed;
  http_parser_url_init(&parsed);
  if (http_parser_parse_url(url.data(), url.size(), 0, &parsed) != 0) return {};
  if (!(parsed.field_set & (1 << UF_PATH))) return "/";
  return url.substr(parsed.field_data[UF_PATH].off, parsed.field_data[UF_PATH].len);
}

}  // namespace

// One accepted socket. Owns a TCP handle and a timer; deleted by the server once both are
// closed.
struct StatusServer::Connection {
  enum class Phase { kReadingHead, kWriting, kLingering, kClosing };

  StatusServer* server;
  uv_tcp_t tcp{};
  uv_timer_t timer{};
  http_parser parser{};
  Phase phase = Phase::kReadingHead;
  int open_handles = 0;
  size_t head_bytes = 0;
  size_t drained_bytes = 0;
  bool peer_done = false;  // EOF or error seen while the response was being written
  std::string url;
  std::string response;
  uv_write_t write_req{};
  uv_shutdown_t shutdown_req{};
  std::array<char, 8192> read_buf{};

  explicit Connection(StatusServer* s) : server(s) {}

  static const http_parser_settings& settings() {
    static const http_parser_settings kSettings = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_url = [](http_parser* p, const char* at, size_t len) {
        static_cast<Connection*>(p->data)->url.append(at, len);
        return 0;
      };
      // Stop at the end of the head: the response depends on nothing after it.
      s.on_headers_complete = [](http_parser* p) {
        http_parser_pause(p, 1);
        return 0;
      };
      return s;
    }();
    return kSettings;
  }

  void start() {
    http_parser_init(&parser, HTTP_REQUEST);
    parser.data = this;
    uv_timer_start(&timer, onTimer, static_cast<uint64_t>(server->limits_.head_timeout.count()), 0);
    int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp), onAlloc, onRead);
    if (rc != 0) {
      spdlog::debug("status: read start failed: {}", uv_strerror(rc));
      close();
    }
  }

  static void onAlloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
    auto* self = static_cast<Connection*>(handle->data);
    *buf = uv_buf_init(self->read_buf.data(), static_cast<unsigned>(self->read_buf.size()));
  }

  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* self = static_cast<Connection*>(stream->data);
    if (nread == 0) return;  // EAGAIN
    if (nread < 0) {
      // EOF or error: before the head is complete there is nobody to answer; after the
      // response it is the peer's FIN we were lingering for.
      if (self->phase == Phase::kWriting) {
        self->peer_done = true;
      } else {
        self->close();
      }
      return;
    }
    auto n = static_cast<size_t>(nread);
    switch (self->phase) {
      case Phase::kReadingHead:
        self->parse(buf->base, n);
        break;
      case Phase::kWriting:
      case Phase::kLingering:
        // Discard what follows the head (a body, pipelined requests, the rest of an oversized
        // head), but not for ever.
        self->drained_bytes += n;
        if (self->drained_bytes > 4 * self->server->limits_.max_head_bytes &&
            self->phase == Phase::kLingering) {
          self->close();
        }
        break;
      case Phase::kClosing:
        break;
    }
  }

  void parse(const char* data, size_t n) {
    size_t parsed = http_parser_execute(&parser, &settings(), data, n);
    auto err = HTTP_PARSER_ERRNO(&parser);
    const size_t limit = server->limits_.max_head_bytes;
    if (err == HPE_PAUSED) {
      head_bytes += parsed;
      if (head_bytes > limit) return respond(errorResponse(431), false);
      return route();
    }
    if (err == HPE_HEADER_OVERFLOW) return respond(errorResponse(431), false);
    if (err != HPE_OK) {
      spdlog::debug("status: malformed request: {}", http_errno_description(err));
      return respond(errorResponse(400), false);
    }
    head_bytes += n;
    if (head_bytes > limit) respond(errorResponse(431), false);
  }

  void route() {
    auto method = static_cast<http_method>(parser.method);
    bool head_only = method == HTTP_HEAD;
    if (method != HTTP_GET && method != HTTP_HEAD) return respond(errorResponse(405), false);
    std::string path = pathOf(url);
    if (path.empty()) return respond(errorResponse(400), false);
    // The renderers are the component's code, not ours: a throw (nlohmann rejects invalid
    // UTF-8 in a name, say) must not unwind through libuv.
    Response r;
    try {
      if (path == "/metrics") {
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r.body = server->registry_.renderPrometheus();
      } else if (path == "/metrics.json") {
        r.content_type = "application/json";
        r.body = server->registry_.renderJson();
      } else if (path == "/health") {
        r.content_type = "application/json";
        r.status = server->healthy_() ? 200 : 503;
        r.body = server->render_health_();
      } else {
        r = errorResponse(404);
      }
    } catch (const std::exception& e) {
      spdlog::error("status: rendering {} failed: {}", path, e.what());
      r = errorResponse(500);
    } catch (...) {
      spdlog::error("status: rendering {} failed", path);
      r = errorResponse(500);
    }
    respond(r, head_only);
  }

  void respond(const Response& r, bool head_only) {
    phase = Phase::kWriting;
    response = serialize(r, head_only);
    uv_buf_t buf = uv_buf_init(response.data(), static_cast<unsigned>(response.size()));
    write_req.data = this;
    int rc = uv_write(&write_req, reinterpret_cast<uv_stream_t*>(&tcp), &buf, 1, onWritten);
    if (rc != 0) {
      spdlog::debug("status: write failed: {}", uv_strerror(rc));
      close();
    }
  }

  static void onWritten(uv_write_t* req, int status) {
    auto* self = static_cast<Connection*>(req->data);
    if (self->phase == Phase::kClosing) return;  // cancelled by close()
    if (status < 0 || self->peer_done) return self->close();
    self->phase = Phase::kLingering;
    self->shutdown_req.data = self;
    if (uv_shutdown(&self->shutdown_req, reinterpret_cast<uv_stream_t*>(&self->tcp),
                    [](uv_shutdown_t*, int) {}) != 0) {
      return self->close();
    }
    uv_timer_start(&self->timer, onTimer,
                   static_cast<uint64_t>(self->server->limits_.linger.count()), 0);
  }

  static void onTimer(uv_timer_t* timer) {
    auto* self = static_cast<Connection*>(timer->data);
    if (self->phase == Phase::kReadingHead) spdlog::debug("status: request head timed out");
    self->close();
  }

  void close() {
    if (phase == Phase::kClosing) return;
    phase = Phase::kClosing;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp), onClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer), onClosed);
  }

  static void onClosed(uv_handle_t* handle) {
    auto* self = static_cast<Connection*>(handle->data);
    if (--self->open_handles == 0) self->server->connectionClosed(self);
  }
};

StatusServer::StatusServer(uv_loop_t* loop, MetricsRegistry& registry, RenderHealthFn render_health,
                           HealthyFn healthy)
    : loop_(loop),
      registry_(registry),
      render_health_(std::move(render_health)),
      healthy_(std::move(healthy)) {}

StatusServer::~StatusServer() {
  // Handles point at this object: destroying it before close() finished is a use-after-free
  // waiting to happen, so refuse loudly.
  bool busy =
      (listener_state_ != ListenerState::kNone && listener_state_ != ListenerState::kClosed) ||
      !connections_.empty() || rejecting_ != 0;
  if (busy) {
    spdlog::critical("status: StatusServer destroyed before close() completed");
    std::abort();
  }
}

std::string StatusServer::parseAddress(const std::string& address, sockaddr_storage& out) {
  std::string host, port_text;
  if (!address.empty() && address.front() == '[') {
    auto end = address.find(']');
    if (end == std::string::npos || end + 1 >= address.size() || address[end + 1] != ':') {
      return "status address '" + address + "': expected [v6addr]:port";
    }
    host = address.substr(1, end - 1);
    port_text = address.substr(end + 2);
  } else {
    auto colon = address.rfind(':');
    if (colon == std::string::npos) {
      return "status address '" + address + "': expected host:port or :port";
    }
    host = address.substr(0, colon);
    port_text = address.substr(colon + 1);
    if (host.find(':') != std::string::npos) {
      return "status address '" + address + "': put an IPv6 address in brackets, [::1]:port";
    }
    if (host.empty() || host == "localhost") host = "127.0.0.1";
  }
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return "status address '" + address + "': bad port '" + port_text + "'";
  }
  int port = std::atoi(port_text.c_str());
  if (port > 65535) return "status address '" + address + "': port out of range";
  out = {};
  bool bracketed = address.front() == '[';
  int rc = bracketed ? uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&out))
                     : uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&out));
  if (rc == 0) return {};
  return "status address '" + address + "': host must be a numeric IP address or localhost";
}

std::string StatusServer::listen(const std::string& address) {
  if (listener_state_ != ListenerState::kNone) return "status server: listen() called twice";
  if (closing_) return "status server: closing";
  sockaddr_storage addr;
  if (auto err = parseAddress(address, addr); !err.empty()) return err;

  auto* tcp = new uv_tcp_t;
  int rc = uv_tcp_init(loop_, tcp);
  if (rc != 0) {
    delete tcp;
    return std::string("status server: ") + uv_strerror(rc);
  }
  rc = uv_tcp_bind(tcp, reinterpret_cast<const sockaddr*>(&addr), 0);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(tcp), 128, onConnection);
  if (rc != 0) {
    // The handle owns itself from here on, so the server may be destroyed right away.
    uv_close(reinterpret_cast<uv_handle_t*>(tcp),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    return "status server: cannot listen on " + address + ": " + uv_strerror(rc);
  }
  tcp->data = this;
  listener_ = tcp;
  listener_state_ = ListenerState::kOpen;
  spdlog::info("status server listening on {} (port {})", address, port());
  return {};
}

int StatusServer::port() const {
  if (listener_state_ != ListenerState::kOpen) return 0;
  sockaddr_storage addr;
  int len = sizeof(addr);
  if (uv_tcp_getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return 0;
}

void StatusServer::onConnection(uv_stream_t* listener, int status) {
  auto* self = static_cast<StatusServer*>(listener->data);
  if (status < 0) {
    spdlog::warn("status server: accept failed: {}", uv_strerror(status));
    return;
  }
  if (self->closing_) return;

  if (self->connections_.size() >= self->limits_.max_connections) {
    // Accept and drop: leaving it in the backlog would only make the client wait.
    auto* tcp = new uv_tcp_t;
    uv_tcp_init(self->loop_, tcp);
    tcp->data = self;
    ++self->rejecting_;
    uv_accept(listener, reinterpret_cast<uv_stream_t*>(tcp));
    uv_close(reinterpret_cast<uv_handle_t*>(tcp), onRejectedClosed);
    spdlog::debug("status server: connection limit reached, dropping a connection");
    return;
  }

  auto* conn = new Connection(self);
  uv_tcp_init(self->loop_, &conn->tcp);
  uv_timer_init(self->loop_, &conn->timer);
  conn->tcp.data = conn;
  conn->timer.data = conn;
  conn->open_handles = 2;
  self->connections_.insert(conn);
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&conn->tcp)) != 0) {
    conn->close();
    return;
  }
  conn->start();
}

void StatusServer::onRejectedClosed(uv_handle_t* handle) {
  auto* self = static_cast<StatusServer*>(handle->data);
  delete reinterpret_cast<uv_tcp_t*>(handle);
  --self->rejecting_;
  self->maybeFinishClose();
}

void StatusServer::onListenerClosed(uv_handle_t* handle) {
  auto* self = static_cast<StatusServer*>(handle->data);
  delete reinterpret_cast<uv_tcp_t*>(handle);
  self->listener_ = nullptr;
  self->listener_state_ = ListenerState::kClosed;
  self->maybeFinishClose();
}

void StatusServer::connectionClosed(Connection* conn) {
  connections_.erase(conn);
  delete conn;
  maybeFinishClose();
}

void StatusServer::close(std::function<void()> done) {
  if (closing_) {
    spdlog::warn("status server: close() called twice");
    return;
  }
  closing_ = true;
  close_done_ = std::move(done);
  if (listener_state_ == ListenerState::kOpen) {
    listener_state_ = ListenerState::kClosing;
    uv_close(reinterpret_cast<uv_handle_t*>(listener_), onListenerClosed);
  }
  // close() only schedules; connections leave the set from their close callbacks.
  for (auto* conn : connections_) conn->close();
  maybeFinishClose();
}

void StatusServer::maybeFinishClose() {
  if (!closing_ || !close_done_) return;
  if (listener_state_ == ListenerState::kOpen || listener_state_ == ListenerState::kClosing) return;
  if (!connections_.empty() || rejecting_ != 0) return;
  auto done = std::move(close_done_);
  close_done_ = nullptr;
  done();
}

}  // namespace sluice

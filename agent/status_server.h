#pragma once
// The status server: a tiny HTTP/1.1 server on the agent's loop that answers
//
//   GET|HEAD /metrics       200 Prometheus text (MetricsRegistry::renderPrometheus)
//   GET|HEAD /metrics.json  200 JSON with Flume-style names (MetricsRegistry::renderJson)
//   GET|HEAD /health        200 when healthy(), 503 otherwise; body from renderHealth()
//   anything else           404; a method other than GET/HEAD is 405
//
// One request per connection: every response carries Content-Length and `Connection: close`.
// After the response is written the server half-closes (FIN) and discards whatever the peer
// still sends until it closes too, for at most a short linger time; closing a socket with unread
// bytes would make the kernel send RST, and the peer could lose the response (lingering close,
// as nginx does).
//
// Limits keep a confused or hostile local client from hurting the agent: a request head above
// max_head_bytes is answered 431, more than max_connections open connections means new ones are
// accepted and closed at once, and a connection whose request head is not complete within
// head_timeout is closed (a deadline, not an idle timer, so trickling bytes does not extend it).
// Requests are parsed by http-parser; malformed ones get 400.
//
// Threading and ownership: every method and every callback runs on the loop thread. The
// renderers and health functions run on the loop thread too and must not block. The server owns
// its handles; call close() and let the loop run until `done` fires before destroying it.

#include <uv.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <unordered_set>

#include "agent/metrics.h"

namespace sluice {

class StatusServer {
 public:
  using RenderHealthFn = std::function<std::string()>;
  using HealthyFn = std::function<bool()>;

  struct Limits {
    size_t max_head_bytes = 16 * 1024;
    size_t max_connections = 64;
    std::chrono::milliseconds head_timeout{10000};
    // How long to wait for the peer's FIN after the response before closing anyway.
    std::chrono::milliseconds linger{1000};
  };

  StatusServer(uv_loop_t* loop, MetricsRegistry& registry, RenderHealthFn render_health,
               HealthyFn healthy);
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  // Call before listen(); tests shrink the limits.
  void setLimits(const Limits& limits) { limits_ = limits; }

  // Binds and listens on "host:port", ":port" (127.0.0.1) or "[v6addr]:port". The host must be
  // a numeric address or "localhost" (no DNS on the loop). Port 0 picks a free port (see
  // port()). Returns an error text, empty on success.
  std::string listen(const std::string& address);

  // The bound port, or 0 when not listening.
  int port() const;

  // Stops listening and closes every connection; `done` runs on the loop once every handle the
  // server owns is closed. Safe to call when listen() was never called or failed.
  void close(std::function<void()> done);

  size_t connectionCount() const { return connections_.size(); }

  // Parses a listen address; exposed for tests. Returns an error text, empty on success.
  static std::string parseAddress(const std::string& address, sockaddr_storage& out);

 private:
  struct Connection;
  enum class ListenerState { kNone, kOpen, kClosing, kClosed };

  static void onConnection(uv_stream_t* listener, int status);
  static void onListenerClosed(uv_handle_t* handle);
  static void onRejectedClosed(uv_handle_t* handle);

  void connectionClosed(Connection* conn);
  void maybeFinishClose();

  uv_loop_t* loop_;
  MetricsRegistry& registry_;
  RenderHealthFn render_health_;
  HealthyFn healthy_;
  Limits limits_;

  uv_tcp_t* listener_ = nullptr;  // heap: a failed listen() must not tie the handle to us
  ListenerState listener_state_ = ListenerState::kNone;
  std::unordered_set<Connection*> connections_;
  size_t rejecting_ = 0;  // over-limit sockets accepted and being closed
  bool closing_ = false;
  std::function<void()> close_done_;
};

}  // namespace sluice

// The status server on a real loop: the loop runs in the test thread, the HTTP client (libcurl
// easy, or raw sockets for garbage and limits) on a std::thread. When the client is done it wakes
// the loop with a uv_async_t, which closes the server; uv_run returns once every handle is gone.
#include "agent/status_server.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

using sluice::MetricsRegistry;
using sluice::StatusServer;

namespace {

struct HttpResult {
  long status = 0;
  std::string content_type;
  std::string headers;
  std::string body;
  std::string error;  // curl's, empty on success
};

size_t appendTo(char* data, size_t size, size_t nmemb, void* user) {
  static_cast<std::string*>(user)->append(data, size * nmemb);
  return size * nmemb;
}

HttpResult fetch(int port, const std::string& path, const std::string& method = "GET") {
  HttpResult r;
  CURL* curl = curl_easy_init();
  std::string url = "http://127.0.0.1:" + std::to_string(port) + path;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, appendTo);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, appendTo);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &r.headers);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);  // a guard against a hang, not a wait
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_PROXY, "");  // never go through a proxy from the environment
  if (method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  }
  CURLcode rc = curl_easy_perform(curl);
  if (rc != CURLE_OK) r.error = curl_easy_strerror(rc);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
  char* ct = nullptr;
  curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ct);
  if (ct) r.content_type = ct;
  curl_easy_cleanup(curl);
  return r;
}

// A blocking client socket with a receive timeout as a guard, so a broken server fails the test
// instead of hanging it.
int connectRaw(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  return fd;
}

bool sendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads until EOF; returns what arrived. `eof` tells whether the peer closed (vs timeout/error).
std::string readAll(int fd, bool* eof = nullptr) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (eof) *eof = n == 0 || (n < 0 && errno == ECONNRESET);
    return out;
  }
}

std::string rawExchange(int port, const std::string& request) {
  int fd = connectRaw(port);
  sendAll(fd, request);
  bool eof = false;
  std::string response = readAll(fd, &eof);
  CHECK(eof);
  ::close(fd);
  return response;
}

int statusOf(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0 || response.size() < 12) return 0;
  return std::stoi(response.substr(9, 3));
}

// Owns a loop and a server; run() drives the loop while `client` runs on a thread, then closes
// the server and checks that close() completed.
struct Harness {
  uv_loop_t loop{};
  MetricsRegistry registry;
  std::atomic<bool> healthy{true};
  std::unique_ptr<StatusServer> server;
  bool closed = false;
  size_t connections_at_close = 0;

  explicit Harness(const StatusServer::Limits& limits = {}) {
    REQUIRE(uv_loop_init(&loop) == 0);
    server = std::make_unique<StatusServer>(
        &loop, registry,
        [this] { return std::string(healthy ? "{\"status\":\"ok\"}" : "{\"status\":\"down\"}"); },
        [this] { return healthy.load(); });
    server->setLimits(limits);
    REQUIRE(server->listen(":0") == "");
    REQUIRE(server->port() > 0);
  }

  ~Harness() {
    server.reset();
    CHECK(uv_loop_close(&loop) == 0);
  }

  // `client` runs on a thread and calls `finish` when the server should close; anything it does
  // after finish() (e.g. waiting for EOF on a socket) overlaps the close.
  void run(const std::function<void(int port, const std::function<void()>& finish)>& client) {
    uv_async_t async;
    async.data = this;
    uv_async_init(&loop, &async, [](uv_async_t* a) {
      auto* self = static_cast<Harness*>(a->data);
      self->connections_at_close = self->server->connectionCount();
      self->server->close([self] { self->closed = true; });
      uv_close(reinterpret_cast<uv_handle_t*>(a), nullptr);
    });
    int port = server->port();
    std::thread thread([&] { client(port, [&] { uv_async_send(&async); }); });
    uv_run(&loop, UV_RUN_DEFAULT);
    thread.join();
    CHECK(closed);
    CHECK(server->connectionCount() == 0);
  }
};

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
  ~CurlGlobal() { curl_global_cleanup(); }
};

}  // namespace

TEST_CASE("status server: parseAddress") {
  sockaddr_storage addr;
  CHECK(StatusServer::parseAddress(":24220", addr) == "");
  CHECK(addr.ss_family == AF_INET);
  CHECK(ntohl(reinterpret_cast<sockaddr_in*>(&addr)->sin_addr.s_addr) == INADDR_LOOPBACK);
  CHECK(ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port) == 24220);
  CHECK(StatusServer::parseAddress("0.0.0.0:80", addr) == "");
  CHECK(StatusServer::parseAddress("localhost:1", addr) == "");
  CHECK(StatusServer::parseAddress("[::1]:0", addr) == "");
  CHECK(addr.ss_family == AF_INET6);
  CHECK(StatusServer::parseAddress("24220", addr) != "");
  CHECK(StatusServer::parseAddress("127.0.0.1:", addr) != "");
  CHECK(StatusServer::parseAddress("127.0.0.1:http", addr) != "");
  CHECK(StatusServer::parseAddress("127.0.0.1:65536", addr) != "");
  CHECK(StatusServer::parseAddress("::1:80", addr) != "");
  CHECK(StatusServer::parseAddress("[::1]80", addr) != "");
  CHECK(StatusServer::parseAddress("example.com:80", addr) != "");
  CHECK(StatusServer::parseAddress("[127.0.0.1]:80", addr) != "");
}

TEST_CASE("status server: routes, content types and counters") {
  CurlGlobal curl;
  Harness h;
  auto& received = h.registry.set("SOURCE", "x")->counter("EventReceivedCount");
  received.inc(3);

  HttpResult metrics1, metrics2, json, head, query, health_ok, health_down, missing, post, del;
  h.run([&](int port, const std::function<void()>& finish) {
    metrics1 = fetch(port, "/metrics");
    received.inc(4);  // counters are atomics; bumping from another thread is allowed
    metrics2 = fetch(port, "/metrics");
    json = fetch(port, "/metrics.json");
    head = fetch(port, "/metrics", "HEAD");
    query = fetch(port, "/metrics.json?pretty=1&x");
    health_ok = fetch(port, "/health");
    h.healthy = false;
    health_down = fetch(port, "/health");
    missing = fetch(port, "/nope");
    post = fetch(port, "/metrics", "POST");
    del = fetch(port, "/health", "DELETE");
    finish();
  });

  CHECK(metrics1.error == "");
  CHECK(metrics1.status == 200);
  CHECK(metrics1.content_type == "text/plain; version=0.0.4; charset=utf-8");
  CHECK(metrics1.body.find("# TYPE sluice_source_event_received_total counter") !=
        std::string::npos);
  CHECK(metrics1.body.find("sluice_source_event_received_total{name=\"x\"} 3\n") !=
        std::string::npos);
  CHECK(metrics2.body.find("sluice_source_event_received_total{name=\"x\"} 7\n") !=
        std::string::npos);
  CHECK(metrics1.headers.find("Connection: close\r\n") != std::string::npos);
  CHECK(metrics1.headers.find("Content-Length: " + std::to_string(metrics1.body.size())) !=
        std::string::npos);

  CHECK(json.status == 200);
  CHECK(json.content_type == "application/json");
  auto doc = nlohmann::json::parse(json.body, nullptr, false);
  REQUIRE_FALSE(doc.is_discarded());
  CHECK(doc["SOURCE.x"]["EventReceivedCount"] == 7);

  CHECK(head.error == "");
  CHECK(head.status == 200);
  CHECK(head.body.empty());
  CHECK(head.headers.find("Content-Length: " + std::to_string(metrics2.body.size())) !=
        std::string::npos);

  CHECK(query.status == 200);
  CHECK(nlohmann::json::parse(query.body)["SOURCE.x"]["EventReceivedCount"] == 7);

  CHECK(health_ok.status == 200);
  CHECK(health_ok.content_type == "application/json");
  CHECK(health_ok.body == "{\"status\":\"ok\"}");
  CHECK(health_down.status == 503);
  CHECK(health_down.body == "{\"status\":\"down\"}");

  CHECK(missing.status == 404);
  CHECK(post.status == 405);
  CHECK(post.headers.find("Allow: GET, HEAD\r\n") != std::string::npos);
  CHECK(del.status == 405);
}

TEST_CASE("status server: malformed and oversized requests") {
  Harness h;
  std::string garbage, bad_length, bad_version, binary, oversized, oversized_one_line, trickled,
      body_ignored;
  h.run([&](int port, const std::function<void()>& finish) {
    garbage = rawExchange(port, "GARBAGE\r\n\r\n");
    bad_length = rawExchange(port, "GET /metrics HTTP/1.1\r\nContent-Length: abc\r\n\r\n");
    bad_version = rawExchange(port, "GET /metrics HTTP/9x\r\n\r\n");
    binary = rawExchange(port, std::string("\x00\x01\xff\xfe\r\n\r\n", 8));
    // A head above 16 KiB that never ends, and one whose request line alone is too long.
    std::string big = "GET /metrics HTTP/1.1\r\n";
    while (big.size() < 20 * 1024) big += "X-Filler: " + std::string(100, 'a') + "\r\n";
    oversized = rawExchange(port, big);
    oversized_one_line = rawExchange(port, "GET /" + std::string(17 * 1024, 'a') + " HTTP/1.1\r\n");
    // A head that arrives a byte at a time still parses.
    {
      int fd = connectRaw(port);
      for (char c : std::string("GET /health HTTP/1.0\r\nHost: x\r\n\r\n")) {
        sendAll(fd, std::string(1, c));
      }
      trickled = readAll(fd);
      ::close(fd);
    }
    // A request with a body: answered, and the body drained without a reset.
    body_ignored = rawExchange(
        port, "GET /metrics HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'b'));
    finish();
  });
  CHECK(statusOf(garbage) == 400);
  CHECK(statusOf(bad_length) == 400);
  CHECK(statusOf(bad_version) == 400);
  CHECK(statusOf(binary) == 400);
  CHECK(statusOf(oversized) == 431);
  CHECK(statusOf(oversized_one_line) == 431);
  CHECK(statusOf(trickled) == 200);
  CHECK(statusOf(body_ignored) == 200);
  CHECK(garbage.find("Connection: close\r\n") != std::string::npos);
}

TEST_CASE("status server: an idle client blocks nobody, and close() closes it") {
  CurlGlobal curl;
  Harness h;
  HttpResult during_idle;
  bool idle_saw_eof = false;
  std::string idle_got;
  h.run([&](int port, const std::function<void()>& finish) {
    int idle = connectRaw(port);  // connects and sends nothing
    during_idle = fetch(port, "/health");
    finish();
    // The server closes the idle connection while closing itself.
    idle_got = readAll(idle, &idle_saw_eof);
    ::close(idle);
  });
  CHECK(during_idle.status == 200);
  CHECK(h.connections_at_close >= 1);
  CHECK(idle_saw_eof);
  CHECK(idle_got.empty());
}

TEST_CASE("status server: the head deadline closes a silent client") {
  StatusServer::Limits limits;
  limits.head_timeout = std::chrono::milliseconds(50);
  Harness h(limits);
  bool eof = false;
  std::string got;
  h.run([&](int port, const std::function<void()>& finish) {
    int fd = connectRaw(port);
    got = readAll(fd, &eof);  // returns when the server gives up on us (5 s guard otherwise)
    ::close(fd);
    finish();
  });
  CHECK(eof);
  CHECK(got.empty());
}

TEST_CASE("status server: connections over the limit are dropped at once") {
  StatusServer::Limits limits;
  limits.max_connections = 2;
  Harness h(limits);
  bool third_eof = false;
  std::string third_got, after;
  h.run([&](int port, const std::function<void()>& finish) {
    int a = connectRaw(port);
    int b = connectRaw(port);
    int c = connectRaw(port);
    third_got = readAll(c, &third_eof);  // the 5 s receive guard would fail this
    ::close(c);
    // The connections within the limit still work.
    sendAll(b, "GET /health HTTP/1.1\r\n\r\n");
    after = readAll(b);
    ::close(a);
    ::close(b);
    finish();
  });
  CHECK(third_eof);
  CHECK(third_got.empty());
  CHECK(statusOf(after) == 200);
}

TEST_CASE("status server: listen errors") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  MetricsRegistry registry;
  auto health = [] { return std::string("{}"); };
  auto healthy = [] { return true; };
  {
    StatusServer first(&loop, registry, health, healthy);
    REQUIRE(first.listen("127.0.0.1:0") == "");
    CHECK(first.listen("127.0.0.1:0") != "");  // twice
    std::string taken = "127.0.0.1:" + std::to_string(first.port());
    {
      StatusServer second(&loop, registry, health, healthy);
      CHECK(second.listen(taken) != "");
      CHECK(second.port() == 0);
      CHECK(second.listen("nonsense") != "");
      // A failed listen leaves nothing behind: the server may go without close().
    }
    StatusServer v6(&loop, registry, health, healthy);
    std::string err = v6.listen("[::1]:0");
    if (err.empty()) {
      CHECK(v6.port() > 0);
    } else {
      MESSAGE("no IPv6 loopback here: " << err);
    }
    bool done_first = false, done_v6 = false;
    first.close([&] { done_first = true; });
    v6.close([&] { done_v6 = true; });
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(done_first);
    CHECK(done_v6);
  }
  {
    // close() without listen() completes at once.
    StatusServer never(&loop, registry, health, healthy);
    bool done = false;
    never.close([&] { done = true; });
    CHECK(done);
  }
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("status server: random garbage never crashes it") {
  StatusServer::Limits limits;
  limits.head_timeout = std::chrono::milliseconds(200);  // incomplete heads end quickly
  Harness h(limits);
  std::vector<std::string> responses;
  h.run([&](int port, const std::function<void()>& finish) {
    uint64_t state = 0x9e3779b97f4a7c15ULL;  // fixed seed: the same inputs every run
    auto next = [&state] {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      return state;
    };
    const std::string prefixes[] = {"", "GET ", "GET /metrics HTTP/1.1\r\n", "HEAD /health "};
    for (int i = 0; i < 60; ++i) {
      std::string payload = prefixes[i % 4];
      size_t len = 1 + next() % 3000;
      for (size_t j = 0; j < len; ++j) payload += static_cast<char>(next() & 0xff);
      if (i % 3 == 0) payload += "\r\n\r\n";
      responses.push_back(rawExchange(port, payload));
    }
    // And it still answers afterwards.
    responses.push_back(rawExchange(port, "GET /health HTTP/1.1\r\n\r\n"));
    finish();
  });
  REQUIRE(responses.size() == 61);
  for (size_t i = 0; i + 1 < responses.size(); ++i) {
    const auto& r = responses[i];
    INFO(r.substr(0, 40));
    CHECK((r.empty() || statusOf(r) == 400 || statusOf(r) == 404 || statusOf(r) == 405 ||
           statusOf(r) == 431));
  }
  CHECK(statusOf(responses.back()) == 200);
}

// SystemdNotifier against a real notify socket: a unix datagram socket in a temp dir that
// NOTIFY_SOCKET points at, read back as systemd would.
#include "agent/notify.h"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

using sluice::SystemdNotifier;
using Millis = std::chrono::milliseconds;

namespace {

// Sets (or unsets, with nullopt) an environment variable for the scope, then restores it.
class EnvGuard {
 public:
  EnvGuard(std::string name, const std::optional<std::string>& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = old;
    if (value) {
      setenv(name_.c_str(), value->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ~EnvGuard() {
    if (old_) {
      setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// The systemd side: a bound datagram socket in a fresh temp dir.
class NotifySocket {
 public:
  NotifySocket() {
    char tmpl[] = "/tmp/sluice-notify-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/notify";
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    REQUIRE(path_.size() < sizeof(addr.sun_path));
    std::copy(path_.begin(), path_.end(), addr.sun_path);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  ~NotifySocket() {
    ::close(fd_);
    std::filesystem::remove_all(dir_);
  }

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }

  // sd_notify has sent by the time it returns, so a datagram is either queued or absent.
  std::optional<std::string> receive() {
    char buf[4096];
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n < 0) return std::nullopt;
    return std::string(buf, static_cast<size_t>(n));
  }

 private:
  std::string dir_, path_;
  int fd_ = -1;
};

}  // namespace

TEST_CASE("notify: messages reach NOTIFY_SOCKET") {
  NotifySocket sock;
  EnvGuard env("NOTIFY_SOCKET", sock.path());
  SystemdNotifier notifier;
  CHECK(SystemdNotifier::enabled());

  CHECK(notifier.ready());
  CHECK(sock.receive() == "READY=1");

  CHECK(notifier.reloading());
  auto reload = sock.receive();
  REQUIRE(reload);
  CHECK(reload->rfind("RELOADING=1\nMONOTONIC_USEC=", 0) == 0);
  // The timestamp is CLOCK_MONOTONIC in microseconds, as systemd compares it.
  auto usec = std::stoull(reload->substr(reload->find('=', 12) + 1));
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  auto now_usec = static_cast<unsigned long long>(now.tv_sec) * 1000000ULL +
                  static_cast<unsigned long long>(now.tv_nsec) / 1000ULL;
  CHECK(usec <= now_usec);
  CHECK(now_usec - usec < 60ULL * 1000000ULL);

  CHECK(notifier.stopping());
  CHECK(sock.receive() == "STOPPING=1");

  CHECK(notifier.status("draining\n3 batches"));
  CHECK(sock.receive() == "STATUS=draining 3 batches");

  CHECK_FALSE(sock.receive().has_value());
}

TEST_CASE("notify: everything is a no-op without NOTIFY_SOCKET") {
  NotifySocket sock;
  EnvGuard env("NOTIFY_SOCKET", std::nullopt);
  EnvGuard usec("WATCHDOG_USEC", "100000");
  EnvGuard pid("WATCHDOG_PID", std::to_string(getpid()));
  SystemdNotifier notifier;
  CHECK_FALSE(SystemdNotifier::enabled());
  CHECK_FALSE(notifier.ready());
  CHECK_FALSE(notifier.reloading());
  CHECK_FALSE(notifier.stopping());
  CHECK_FALSE(notifier.status("x"));
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  CHECK_FALSE(notifier.startWatchdog(&loop));
  CHECK_FALSE(notifier.startWatchdog(&loop, Millis(100)));
  CHECK_FALSE(notifier.watchdogRunning());
  CHECK_FALSE(sock.receive().has_value());
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("notify: the watchdog stays off unless systemd asks for it for this process") {
  NotifySocket sock;
  EnvGuard env("NOTIFY_SOCKET", sock.path());
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  SystemdNotifier notifier;
  {
    EnvGuard usec("WATCHDOG_USEC", std::nullopt);
    CHECK_FALSE(notifier.startWatchdog(&loop));
  }
  {
    EnvGuard usec("WATCHDOG_USEC", "100000");
    EnvGuard pid("WATCHDOG_PID", std::to_string(getpid() + 1));  // meant for another process
    CHECK_FALSE(notifier.startWatchdog(&loop));
  }
  CHECK_FALSE(notifier.watchdogRunning());
  {
    // The override needs no WATCHDOG_USEC, only a notify socket.
    EnvGuard usec("WATCHDOG_USEC", std::nullopt);
    CHECK(notifier.startWatchdog(&loop, Millis(60)));
    CHECK(notifier.watchdogPeriod() == Millis(30));
    CHECK_FALSE(notifier.startWatchdog(&loop, Millis(60)));  // already running
    notifier.stopWatchdog();
    CHECK_FALSE(notifier.watchdogRunning());
  }
  uv_run(&loop, UV_RUN_DEFAULT);  // frees the closed timer
  CHECK(uv_loop_close(&loop) == 0);
}

namespace {
struct WatchdogProbe {
  NotifySocket* sock = nullptr;
  uv_poll_t poll{};
  uv_timer_t deadline{};
  uint64_t start_ms = 0;
  std::vector<std::pair<std::string, uint64_t>> pings;  // message, ms since start
  bool timed_out = false;

  void finish() {
    uv_close(reinterpret_cast<uv_handle_t*>(&poll), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&deadline), nullptr);
  }
};
}  // namespace

TEST_CASE("notify: the watchdog pings WATCHDOG=1 at half the interval on a real loop") {
  NotifySocket sock;
  EnvGuard env("NOTIFY_SOCKET", sock.path());
  EnvGuard usec("WATCHDOG_USEC", "400000");  // 400 ms: pings every 200 ms
  EnvGuard pid("WATCHDOG_PID", std::to_string(getpid()));

  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  SystemdNotifier notifier;
  REQUIRE(notifier.startWatchdog(&loop));
  CHECK(notifier.watchdogPeriod() == Millis(200));
  // The timer must not keep the loop alive (checked before running, so a regression fails here
  // instead of hanging below).
  REQUIRE_FALSE(uv_loop_alive(&loop));

  // Given a poll on the notify socket and a generous deadline (a guard, not a measurement),
  WatchdogProbe probe;
  probe.sock = &sock;
  probe.start_ms = uv_now(&loop);
  probe.poll.data = &probe;
  probe.deadline.data = &probe;
  REQUIRE(uv_poll_init(&loop, &probe.poll, sock.fd()) == 0);
  uv_poll_start(&probe.poll, UV_READABLE, [](uv_poll_t* p, int, int) {
    auto* self = static_cast<WatchdogProbe*>(p->data);
    uv_update_time(p->loop);
    while (auto msg = self->sock->receive()) {
      self->pings.emplace_back(*msg, uv_now(p->loop) - self->start_ms);
    }
    if (self->pings.size() >= 2) self->finish();
  });
  uv_timer_init(&loop, &probe.deadline);
  uv_timer_start(
      &probe.deadline,
      [](uv_timer_t* t) {
        auto* self = static_cast<WatchdogProbe*>(t->data);
        self->timed_out = true;
        self->finish();
      },
      5000, 0);

  // when the loop runs until two pings arrived, it returns although the watchdog timer is
  // still active: the timer is unref'd.
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_FALSE(probe.timed_out);
  CHECK(notifier.watchdogRunning());
  REQUIRE(probe.pings.size() >= 2);
  CHECK(probe.pings[0].first == "WATCHDOG=1");
  CHECK(probe.pings[1].first == "WATCHDOG=1");
  // The first ping comes from the timer at half the interval, not at start-up, and arrives
  // within the interval; the next one follows a period later.
  CHECK(probe.pings[0].second >= 200);
  CHECK(probe.pings[0].second < 400);
  CHECK(probe.pings[1].second >= 400);

  notifier.stopWatchdog();
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0);
}

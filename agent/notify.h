#pragma once
// systemd integration (sd_notify protocol) for a Type=notify service.
//
//   ready()      READY=1, once start-up is done, and again after each reload completed
//   reloading()  RELOADING=1 + MONOTONIC_USEC (systemd 253+ wants the timestamp to match the
//                reload with its READY=1; 252 ignores it), when SIGHUP handling starts
//   stopping()   STOPPING=1, when SIGTERM handling (the drain) starts
//   status(t)    STATUS=t, a one-line human status shown by `systemctl status`
//
// The watchdog pings WATCHDOG=1 from a libuv timer at half the interval. The timer sits on the
// agent's loop, so a stuck loop stops the pings and systemd restarts the service: exactly the
// failure the watchdog is for. The timer is unref'd: it never keeps the loop alive by itself.
//
// Everything is a no-op when NOTIFY_SOCKET is unset (not started by systemd, or in tests). All
// methods run on the loop thread. Call stopWatchdog() before the loop's last run.

#include <uv.h>

#include <chrono>
#include <string>

namespace sluice {

class SystemdNotifier {
 public:
  using Millis = std::chrono::milliseconds;

  SystemdNotifier() = default;
  ~SystemdNotifier();
  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;

  // Each returns true when a message was sent, false when there is no NOTIFY_SOCKET or sending
  // failed (logged; never fatal: the agent works without systemd).
  bool ready();
  bool reloading();
  bool stopping();
  bool status(const std::string& text);

  // Starts pinging when systemd asked for a watchdog (WATCHDOG_USEC, and WATCHDOG_PID is us),
  // or when `interval_override` is non-zero and NOTIFY_SOCKET is set; the override replaces
  // systemd's interval. Returns true when the watchdog runs.
  bool startWatchdog(uv_loop_t* loop, Millis interval_override = Millis(0));
  // Closes the timer; the handle frees itself when the loop runs its close callbacks.
  void stopWatchdog();
  bool watchdogRunning() const { return timer_ != nullptr; }
  // The ping period (half the watchdog interval), zero when not running.
  Millis watchdogPeriod() const { return period_; }

  // True when NOTIFY_SOCKET is set.
  static bool enabled();

 private:
  bool send(const std::string& message);

  uv_timer_t* timer_ = nullptr;
  Millis period_{0};
};

}  // namespace sluice

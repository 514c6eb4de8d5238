#include "agent/notify.h"

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace sluice {

SystemdNotifier::~SystemdNotifier() { stopWatchdog(); }

bool SystemdNotifier::enabled() {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  return socket != nullptr && socket[0] != '\0';
}

bool SystemdNotifier::send(const std::string& message) {
  if (!enabled()) return false;
  // unset_environment=0: later calls (the watchdog, a reload) need NOTIFY_SOCKET again.
  int rc = sd_notify(0, message.c_str());
  if (rc < 0) {
    spdlog::warn("sd_notify({}) failed: {}", message.substr(0, message.find('=')),
                 std::strerror(-rc));
    return false;
  }
  return rc > 0;
}

bool SystemdNotifier::ready() { return send("READY=1"); }

bool SystemdNotifier::reloading() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  auto usec = static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
              static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL;
  return send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

bool SystemdNotifier::stopping() { return send("STOPPING=1"); }

bool SystemdNotifier::status(const std::string& text) {
  // One assignment per line in the protocol: a newline in the text would start a new one.
  std::string line = text;
  std::replace(line.begin(), line.end(), '\n', ' ');
  return send("STATUS=" + line);
}

bool SystemdNotifier::startWatchdog(uv_loop_t* loop, Millis interval_override) {
  if (timer_ != nullptr || !enabled()) return false;
  Millis interval{0};
  if (interval_override.count() > 0) {
    interval = interval_override;
  } else {
    uint64_t usec = 0;
    // Checks WATCHDOG_PID against getpid(), so a child that inherited the variables stays quiet.
    int rc = sd_watchdog_enabled(0, &usec);
    if (rc < 0) spdlog::warn("sd_watchdog_enabled failed: {}", std::strerror(-rc));
    if (rc <= 0) return false;
    interval = std::chrono::duration_cast<Millis>(std::chrono::microseconds(usec));
  }
  period_ = std::max(Millis(1), interval / 2);

  timer_ = new uv_timer_t;
  uv_timer_init(loop, timer_);
  timer_->data = this;
  auto period = static_cast<uint64_t>(period_.count());
  uv_timer_start(
      timer_, [](uv_timer_t* t) { static_cast<SystemdNotifier*>(t->data)->send("WATCHDOG=1"); },
      period, period);
  uv_unref(reinterpret_cast<uv_handle_t*>(timer_));
  spdlog::info("systemd watchdog: pinging every {} ms", period_.count());
  return true;
}

void SystemdNotifier::stopWatchdog() {
  if (timer_ == nullptr) return;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  timer_ = nullptr;
  period_ = Millis(0);
}

}  // namespace sluice

#pragma once
// The running agent: one libuv loop that owns every source, channel, sink group, the status
// server, signals and the systemd notifier.
//
// Lifecycle
//   start:   channels, then sink groups (consumers exist before data arrives), then sources.
//   SIGHUP:  re-read the file. An invalid file is refused with every error logged and nothing
//            changes. A valid one is applied component by component: what did not change keeps
//            running untouched; a channel whose bounds changed is reconfigured in place; a
//            channel that is removed or replaced is retired, and its old sink groups keep
//            draining it until it is empty, so buffered events are never dropped by a reload.
//   SIGTERM/SIGINT: stop the sources (each offers what it has read), let the sink groups drain
//            the channels until every cursor is caught up or agent.drain_timeout passes, stop
//            the sink groups (waiting for deliveries in flight), exit 0. A second signal exits
//            at once.
//
// Health (/health, health.h): 503 while starting, while a reload waits for old instances to
// stop, while draining, and while any component has a problem; 200 otherwise. A source that
// reports a problem during the first start (a syslog listener whose port is in use) fails the
// start: the agent logs why and exits 1, as for a status port in use. After that, the source
// keeps trying and /health names it until it works.

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/config.h"
#include "agent/health.h"
#include "agent/metrics.h"
#include "agent/registry.h"
#include "agent/sink_group.h"

namespace sluice {

class SourceRunner;
class StatusServer;
class SystemdNotifier;

class Agent {
 public:
  Agent(const Registry& registry, std::string config_path);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Runs until stopped by a signal; returns the process exit code.
  int run(Config config);

 private:
  struct ChannelEntry {
    ChannelSpec spec;
    ChannelPtr channel;
  };
  // One named sink group or source across reloads. At most one instance runs; a replacement
  // waits in `pending` until every older instance of the name has stopped, so two instances
  // never read one cursor or bind one port at the same time.
  template <class T>
  struct Slot {
    std::unique_ptr<T> running;
    std::unique_ptr<T> pending;
    int stopping = 0;    // older instances still stopping
    bool wanted = true;  // false once the name left the configuration
  };
  struct GroupEntry : Slot<SinkGroup> {
    GroupSpec spec;
    std::vector<SinkSpec> sinks;
    ChannelPtr channel;
  };
  struct SourceEntry : Slot<SourceRunner> {
    SourceSpec spec;
  };
  struct Retiring {
    ChannelPtr channel;
    std::string name;
    std::vector<std::unique_ptr<SinkGroup>> groups;
  };

  bool apply(const Config& config);
  ChannelPtr makeChannel(const ChannelSpec& spec, const Config& config);
  std::unique_ptr<SinkGroup> makeGroup(const GroupSpec& spec, const Config& config,
                                       const ChannelPtr& channel);
  std::unique_ptr<SourceRunner> makeSource(const SourceSpec& spec, const Config& config);
  // Puts `fresh` in the slot: the running instance (if any) is stopped first.
  template <class Entry, class T>
  void replace(std::map<std::string, Entry>& slots, const std::string& name,
               std::unique_ptr<T> fresh);
  // Stops and forgets the instances of a name that left the configuration.
  template <class Entry>
  void retire(std::map<std::string, Entry>& slots, const std::string& name);
  // Starts the pending instance once nothing older of its name is still stopping.
  void promoteGroup(const std::string& name);
  void promoteSource(const std::string& name);
  std::vector<ChannelPtr> channelsFor(const SourceSpec& spec) const;
  void stopGroup(std::unique_ptr<SinkGroup> group, std::function<void()> then);
  void stopSource(std::unique_ptr<SourceRunner> runner, std::function<void()> then);
  // Stops a component (it calls back when done), then deletes it from the loop and runs `then`.
  template <class T>
  void stopThenDelete(std::unique_ptr<T> component, std::function<void()> then);

  void reload();
  // `drain` false: the start failed; nothing is waited for.
  void beginShutdown(bool drain = true);
  // After the first start of every component: a source that reported a problem fails the start.
  void checkStarted();
  // Each tick: sink group progress and channel free space (logged when they change).
  void watchHealth();
  std::vector<HealthProblem> healthProblems() const;
  // What a drain that timed out leaves behind, per channel: kept on disk or lost.
  std::string undeliveredReport() const;
  void checkDrained();
  // `cancel`: the drain timed out; sinks are asked to answer their deliveries now.
  void finishShutdown(bool cancel);
  void checkRetiring();
  void later(std::function<void()> fn);
  uint64_t pendingEvents() const;
  std::string healthJson() const;
  void startStatus();

  static void onSignal(uv_signal_t* handle, int signum);

  const Registry& registry_;
  std::string config_path_;
  uv_loop_t loop_{};
  Config config_;
  MetricsRegistry metrics_;
  std::map<std::string, ChannelEntry> channels_;
  std::map<std::string, GroupEntry> groups_;
  std::map<std::string, SourceEntry> sources_;
  std::vector<Retiring> retiring_;

  uv_signal_t sigterm_{}, sigint_{}, sighup_{};
  uv_timer_t tick_{};  // drain and retirement checks
  uv_timer_t deferred_timer_{};
  uv_timer_t hard_stop_{};  // bounds the wait for deliveries in flight after the drain
  std::vector<std::function<void()>> deferred_;
  std::unique_ptr<StatusServer> status_;
  std::unique_ptr<SystemdNotifier> notifier_;

  bool starting_ = true;  // until every component of the first configuration started
  std::vector<std::string> start_failures_;  // the first start failed: what failed (exiting)
  bool stopping_ = false;                    // SIGTERM received: sources stopped, draining
  bool finishing_ = false;                   // drain over: sink groups stopping, nothing new starts
  uint64_t drain_deadline_ms_ = 0;
  size_t pending_stops_ = 0;
  int exit_code_ = 0;
  uint64_t started_ms_ = 0;
  StallWatches stalls_;                    // every sink group instance, retiring ones too
  std::map<std::string, bool> low_space_;  // by channel: below min_free_bytes (logged once)
};

}  // namespace sluice

#include "agent/agent.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "agent/notify.h"
#include "agent/source_runner.h"
#include "agent/status_server.h"

namespace sluice {

namespace {
// How long deliveries in flight may still take once the drain is over.
constexpr Millis kHardStopGrace{10'000};

// "20.0 MiB", "1000.0 TiB": free space and thresholds in log lines and health reasons.
std::string humanBytes(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  size_t u = 0;
  while (v >= 1024 && u + 1 < std::size(units)) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, units[u]);
}
}  // namespace

Agent::Agent(const Registry& registry, std::string config_path)
    : registry_(registry), config_path_(std::move(config_path)) {
  uv_loop_init(&loop_);
  uv_timer_init(&loop_, &tick_);
  uv_timer_init(&loop_, &deferred_timer_);
  uv_timer_init(&loop_, &hard_stop_);
  hard_stop_.data = this;
  tick_.data = this;
  deferred_timer_.data = this;
  for (auto* sig : {&sigterm_, &sigint_, &sighup_}) {
    uv_signal_init(&loop_, sig);
    sig->data = this;
  }
  notifier_ = std::make_unique<SystemdNotifier>();
}

Agent::~Agent() {
  sources_.clear();
  groups_.clear();
  retiring_.clear();
  channels_.clear();
  status_.reset();
  notifier_.reset();
  uv_walk(
      &loop_,
      [](uv_handle_t* h, void*) {
        if (!uv_is_closing(h)) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

void Agent::later(std::function<void()> fn) {
  deferred_.push_back(std::move(fn));
  uv_timer_start(
      &deferred_timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Agent*>(t->data);
        auto fns = std::move(self->deferred_);
        self->deferred_.clear();
        for (auto& f : fns) f();
      },
      0, 0);
}

// Factories get the settings of the configuration being built; BuildContext::agent is only
// valid during the call, so components copy what they need.
ChannelPtr Agent::makeChannel(const ChannelSpec& spec, const Config& config) {
  BuildContext ctx{spec.name, &loop_, &config.agent, metrics_.set("CHANNEL", spec.name)};
  return spec.type->make_channel(spec.config, ctx);
}

std::unique_ptr<SinkGroup> Agent::makeGroup(const GroupSpec& spec, const Config& config,
                                            const ChannelPtr& channel) {
  std::vector<SinkGroup::Member> members;
  for (const auto& name : spec.common.sinks) {
    const SinkSpec* s = config.sink(name);
    BuildContext ctx{s->name, &loop_, &config.agent, metrics_.set("SINK", s->name)};
    SinkPtr sink = s->type->make_sink(s->config, ctx);
    if (!sink) return nullptr;
    members.push_back({*s, std::move(sink), ctx.metrics});
  }
  // A lone sink's group reports nothing of its own: its sink's metrics say it all.
  MetricSetPtr group_metrics = spec.implicit ? nullptr : metrics_.set("SINKGROUP", spec.name);
  auto group =
      std::make_unique<SinkGroup>(&loop_, spec, channel, std::move(members), group_metrics);
  stalls_.forget(group.get());
  return group;
}

std::unique_ptr<SourceRunner> Agent::makeSource(const SourceSpec& spec, const Config& config) {
  auto metrics = metrics_.set("SOURCE", spec.name);
  BuildContext ctx{spec.name, &loop_, &config.agent, metrics};
  SourcePtr source = spec.type->make_source(spec.config, ctx);
  if (!source) return nullptr;
  std::vector<InterceptorPtr> interceptors;
  for (const auto& is : spec.interceptors) {
    BuildContext ictx{spec.name, &loop_, &config.agent, metrics};
    auto i = is.type->make_interceptor(is.config, ictx);
    if (!i) return nullptr;
    interceptors.push_back(std::move(i));
  }
  auto runner = std::make_unique<SourceRunner>(&loop_, spec, std::move(source), metrics,
                                               std::move(interceptors));
  runner->setStopWait(config.agent.drain_timeout);  // a stop waits for its last put
  return runner;
}

std::vector<ChannelPtr> Agent::channelsFor(const SourceSpec& spec) const {
  std::vector<ChannelPtr> out;
  for (const auto& name : spec.common.channels) out.push_back(channels_.at(name).channel);
  return out;
}

template <class T>
void Agent::stopThenDelete(std::unique_ptr<T> component, std::function<void()> then) {
  auto* raw = component.release();
  ++pending_stops_;
  raw->stop([this, raw, then = std::move(then)] {
    // `done` may run inside the component's own call stack: destroy it from the loop instead.
    later([this, raw, then] {
      delete raw;
      --pending_stops_;
      if (then) then();
    });
  });
}

void Agent::stopGroup(std::unique_ptr<SinkGroup> group, std::function<void()> then) {
  stopThenDelete(std::move(group), std::move(then));
}

void Agent::stopSource(std::unique_ptr<SourceRunner> runner, std::function<void()> then) {
  stopThenDelete(std::move(runner), std::move(then));
}

template <class Entry, class T>
void Agent::replace(std::map<std::string, Entry>& slots, const std::string& name,
                    std::unique_ptr<T> fresh) {
  auto& entry = slots[name];
  entry.wanted = true;
  entry.pending = std::move(fresh);  // a pending one never started: dropping it is safe
  auto promote = [this, &slots, name] {
    if constexpr (std::is_same_v<Entry, GroupEntry>) {
      promoteGroup(name);
    } else {
      promoteSource(name);
    }
  };
  if (entry.running) {
    ++entry.stopping;
    stopThenDelete(std::move(entry.running), [this, &slots, name, promote] {
      auto it = slots.find(name);
      if (it == slots.end()) return;
      --it->second.stopping;
      promote();
    });
  } else if (entry.stopping == 0) {
    later(promote);
  }
}

template <class Entry>
void Agent::retire(std::map<std::string, Entry>& slots, const std::string& name) {
  auto it = slots.find(name);
  if (it == slots.end()) return;
  auto& entry = it->second;
  entry.wanted = false;
  entry.pending.reset();
  if (!entry.running) {
    if (entry.stopping == 0) slots.erase(it);
    return;
  }
  ++entry.stopping;
  ChannelPtr channel;
  if constexpr (std::is_same_v<Entry, GroupEntry>) channel = entry.channel;
  stopThenDelete(std::move(entry.running), [this, &slots, name, channel] {
    auto it = slots.find(name);
    if (it == slots.end()) return;
    if (--it->second.stopping > 0 || it->second.wanted) return;
    // Gone for good: a sink group's cursor goes with it, so it holds no data back.
    if (channel) channel->dropCursor(name);
    slots.erase(it);
  });
}

void Agent::promoteGroup(const std::string& name) {
  auto it = groups_.find(name);
  if (it == groups_.end() || finishing_) return;
  auto& entry = it->second;
  if (entry.stopping > 0 || !entry.pending || entry.running) return;
  entry.running = std::move(entry.pending);
  entry.running->start();
}

void Agent::promoteSource(const std::string& name) {
  auto it = sources_.find(name);
  if (it == sources_.end() || stopping_) return;
  auto& entry = it->second;
  if (entry.stopping > 0 || !entry.pending || entry.running) return;
  entry.running = std::move(entry.pending);
  entry.running->setChannels(channelsFor(entry.running->spec()));
  entry.running->start();
}

bool Agent::apply(const Config& cfg) {
  // Phase 1: build everything new, touching nothing that runs. A failure leaves all as it was.
  std::map<std::string, ChannelEntry> next_channels;
  std::vector<std::string> replaced_channels;
  std::vector<std::string> reconfigured_channels;
  for (const auto& spec : cfg.channels) {
    auto old = channels_.find(spec.name);
    if (old != channels_.end() && old->second.spec == spec) {
      next_channels[spec.name] = old->second;
      continue;
    }
    if (old != channels_.end() && old->second.spec.type == spec.type &&
        spec.type->reconfigure_channel) {
      reconfigured_channels.push_back(spec.name);
      next_channels[spec.name] = {spec, old->second.channel};
      continue;
    }
    auto channel = makeChannel(spec, cfg);
    if (!channel) {
      spdlog::error("channel {}: could not be created", spec.name);
      return false;
    }
    if (old != channels_.end()) replaced_channels.push_back(spec.name);
    next_channels[spec.name] = {spec, channel};
  }
  for (const auto& [name, entry] : channels_) {
    if (!next_channels.count(name)) replaced_channels.push_back(name);
  }

  struct GroupPlan {
    GroupSpec spec;
    std::vector<SinkSpec> sinks;
    ChannelPtr channel;
    std::unique_ptr<SinkGroup> fresh;  // null: keep what runs
  };
  std::vector<GroupPlan> group_plans;
  for (const auto& g : cfg.groups) {
    GroupPlan plan{g, {}, nullptr, nullptr};
    for (const auto& s : g.common.sinks) plan.sinks.push_back(*cfg.sink(s));
    plan.channel = next_channels.at(plan.sinks.front().common.channel).channel;
    auto old = groups_.find(g.name);
    bool same = old != groups_.end() && old->second.wanted && old->second.spec == g &&
                old->second.sinks == plan.sinks && old->second.channel == plan.channel;
    if (!same) {
      plan.fresh = makeGroup(g, cfg, plan.channel);
      if (!plan.fresh) {
        spdlog::error("sink group {}: a sink could not be created", g.name);
        return false;
      }
    }
    group_plans.push_back(std::move(plan));
  }

  std::map<std::string, std::unique_ptr<SourceRunner>> fresh_sources;
  for (const auto& s : cfg.sources) {
    auto old = sources_.find(s.name);
    if (old != sources_.end() && old->second.wanted && old->second.spec == s) continue;
    auto runner = makeSource(s, cfg);
    if (!runner) {
      spdlog::error("source {}: could not be created", s.name);
      return false;
    }
    fresh_sources[s.name] = std::move(runner);
  }

  // Phase 2: switch over.
  config_ = cfg;
  for (const auto& name : reconfigured_channels) {
    const auto& entry = next_channels.at(name);
    if (entry.spec.type->reconfigure_channel(*entry.channel, entry.spec.config)) {
      spdlog::info("channel {}: reconfigured in place", name);
    } else {
      spdlog::error(
          "channel {}: the new settings could not be applied in place; it keeps its "
          "old ones until restart",
          name);
    }
  }
  // Retire replaced channels together with the groups draining them: they keep draining what
  // the channel holds; nothing new is put into it. Their replacements start at once: they read
  // another channel, so they share no cursor with the retiring ones.
  for (const auto& name : replaced_channels) {
    Retiring r{channels_.at(name).channel, name, {}};
    for (auto& [group_name, entry] : groups_) {
      if (entry.channel != r.channel) continue;
      if (entry.running) r.groups.push_back(std::move(entry.running));
      entry.pending.reset();
    }
    spdlog::info("channel {}: retired; draining {} events held before the reload", name,
                 r.channel->stats().events);
    retiring_.push_back(std::move(r));
  }
  channels_ = std::move(next_channels);

  std::vector<std::string> wanted_groups;
  for (auto& plan : group_plans) {
    wanted_groups.push_back(plan.spec.name);
    if (!plan.fresh) continue;
    replace(groups_, plan.spec.name, std::move(plan.fresh));
    auto& entry = groups_.at(plan.spec.name);
    entry.spec = plan.spec;
    entry.sinks = plan.sinks;
    entry.channel = plan.channel;
  }
  std::vector<std::string> gone;
  for (auto& [name, entry] : groups_) {
    if (std::find(wanted_groups.begin(), wanted_groups.end(), name) == wanted_groups.end()) {
      gone.push_back(name);
    }
  }
  for (const auto& name : gone) retire(groups_, name);

  gone.clear();
  for (auto& [name, entry] : sources_) {
    if (!cfg.sources.empty() && std::any_of(cfg.sources.begin(), cfg.sources.end(),
                                            [&](const SourceSpec& s) { return s.name == name; })) {
      continue;
    }
    gone.push_back(name);
  }
  for (const auto& name : gone) retire(sources_, name);
  for (auto& [name, runner] : fresh_sources) {
    replace(sources_, name, std::move(runner));
    sources_.at(name).spec = *std::find_if(cfg.sources.begin(), cfg.sources.end(),
                                           [&](const SourceSpec& s) { return s.name == name; });
  }
  for (auto& [name, entry] : sources_) {
    if (!entry.running) continue;
    entry.running->setChannels(channelsFor(entry.running->spec()));
    entry.running->poke();
    // Unchanged and kept running: it re-reads its files (certificates).
    if (!fresh_sources.count(name)) entry.running->reloadSource();
  }

  std::vector<std::pair<std::string, std::string>> keep;
  for (const auto& s : cfg.sources) keep.push_back({"SOURCE", s.name});
  for (const auto& c : cfg.channels) keep.push_back({"CHANNEL", c.name});
  for (const auto& s : cfg.sinks) keep.push_back({"SINK", s.name});
  for (const auto& g : cfg.groups) {
    if (!g.implicit) keep.push_back({"SINKGROUP", g.name});
  }
  keep.push_back({"AGENT", "reload"});
  for (const auto& r : retiring_) {
    keep.push_back({"CHANNEL", r.name});
    for (const auto& g : r.groups) {
      for (const auto& m : g->members()) keep.push_back({"SINK", m->m.spec.name});
    }
  }
  metrics_.retainOnly(keep);
  return true;
}

void Agent::reload() {
  if (stopping_) return;
  notifier_->reloading();
  spdlog::info("reloading {}", config_path_);
  Diagnostics diag(config_path_);
  auto cfg = loadConfigFile(config_path_, registry_, diag, processEnv());
  for (const auto& line : [&] {
         std::vector<std::string> lines;
         std::string all = diag.format(), cur;
         for (char c : all) {
           if (c == '\n') {
             lines.push_back(cur);
             cur.clear();
           } else {
             cur += c;
           }
         }
         return lines;
       }()) {
    if (cfg) {
      spdlog::warn("{}", line);
    } else {
      spdlog::error("{}", line);
    }
  }
  std::string old_status = config_.agent.status;
  if (!cfg) {
    spdlog::error("reload refused: the new configuration has errors; the running one is kept");
    metrics_.set("AGENT", "reload").get()->counter("ReloadFailedCount").inc();
  } else if (!apply(*cfg)) {
    spdlog::error("reload refused: a component could not be created; the running one is kept");
    metrics_.set("AGENT", "reload").get()->counter("ReloadFailedCount").inc();
  } else {
    if (cfg->agent.status != old_status || (!status_ && !cfg->agent.status.empty())) {
      startStatus();
    }
    metrics_.set("AGENT", "reload").get()->counter("ReloadSuccessCount").inc();
    spdlog::info("configuration reloaded");
  }
  notifier_->ready();
}

void Agent::checkRetiring() {
  for (auto& r : retiring_) {
    if (r.groups.empty()) continue;
    bool drained = true;
    for (const auto& g : r.groups) drained = drained && g->lag() == 0;
    if (!drained) continue;
    spdlog::info("channel {}: retired channel drained", r.name);
    for (auto& g : r.groups) stopGroup(std::move(g), nullptr);
    r.groups.clear();
  }
  retiring_.erase(std::remove_if(retiring_.begin(), retiring_.end(),
                                 [](const Retiring& r) { return r.groups.empty(); }),
                  retiring_.end());
}

uint64_t Agent::pendingEvents() const {
  uint64_t n = 0;
  for (const auto& [name, g] : groups_) {
    // A replacement waiting for its predecessor to stop still owes its cursor's lag.
    if (g.running) {
      n += g.running->lag();
    } else if (g.wanted && g.channel) {
      n += g.channel->cursor(name).lag();
    }
  }
  for (const auto& r : retiring_) {
    for (const auto& g : r.groups) n += g->lag();
  }
  return n;
}

void Agent::beginShutdown(bool drain) {
  stopping_ = true;
  notifier_->stopping();
  drain_deadline_ms_ = uv_now(&loop_);
  if (drain) {
    drain_deadline_ms_ += static_cast<uint64_t>(config_.agent.drain_timeout.count());
    spdlog::info("stopping: sources first, then draining channels (at most {})",
                 formatDuration(config_.agent.drain_timeout));
  }
  for (auto& [name, entry] : sources_) {
    entry.pending.reset();
    if (entry.running) stopSource(std::move(entry.running), nullptr);
  }
  checkDrained();
}

void Agent::checkDrained() {
  // Sources stop first so what they had read is in the channels before the drain is judged.
  bool sources_stopped = pending_stops_ == 0;
  uint64_t pending = pendingEvents();
  bool timed_out = uv_now(&loop_) >= drain_deadline_ms_;
  if (!sources_stopped && !timed_out) return;
  if (pending > 0 && !timed_out) return;
  if (pending > 0 && starting_) {
    spdlog::info("{} events wait in the channels: {}", pending, undeliveredReport());
  } else if (pending > 0) {
    spdlog::error("drain timeout: {} events were not delivered: {}", pending, undeliveredReport());
  }
  finishShutdown(pending > 0);
}

void Agent::finishShutdown(bool cancel) {
  finishing_ = true;
  uv_timer_stop(&tick_);
  uv_signal_stop(&sighup_);
  // Deliveries in flight get a bounded time to answer; a destination that never answers must
  // not keep the process from exiting (systemd would SIGKILL it, mid-write).
  uv_timer_start(
      &hard_stop_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Agent*>(t->data);
        spdlog::error(
            "{} sink groups still had deliveries unanswered {} after the drain; "
            "exiting without them",
            self->pending_stops_, formatDuration(kHardStopGrace));
        spdlog::default_logger()->flush();
        _exit(1);
      },
      static_cast<uint64_t>(kHardStopGrace.count()), 0);
  uv_unref(reinterpret_cast<uv_handle_t*>(&hard_stop_));
  std::vector<std::unique_ptr<SinkGroup>> all;
  for (auto& [name, g] : groups_) {
    g.pending.reset();
    if (g.running) all.push_back(std::move(g.running));
  }
  for (auto& r : retiring_) {
    for (auto& g : r.groups) all.push_back(std::move(g));
  }
  retiring_.clear();
  auto remaining = std::make_shared<size_t>(all.size() + 1);
  auto finish = [this, remaining] {
    if (--*remaining != 0) return;
    notifier_->stopWatchdog();
    auto close_rest = [this] {
      uv_signal_stop(&sigterm_);
      uv_signal_stop(&sigint_);
      uv_timer_stop(&hard_stop_);
      spdlog::info("stopped");
    };
    if (status_) {
      status_->close(close_rest);
    } else {
      close_rest();
    }
  };
  std::vector<SinkGroup*> stopping;
  for (auto& g : all) stopping.push_back(g.get());
  for (auto& g : all) stopGroup(std::move(g), finish);
  // Past the deadline, sinks that can abandon their deliveries do (rolled back, kept by a file
  // channel) instead of running into the hard stop. The groups are stopping (they take nothing
  // more) and are deleted from a later loop turn, so they are still here.
  if (cancel) {
    for (auto* g : stopping) g->cancel();
  }
  finish();
}

void Agent::onSignal(uv_signal_t* handle, int signum) {
  auto* self = static_cast<Agent*>(handle->data);
  if (signum == SIGHUP) {
    self->reload();
    return;
  }
  if (self->stopping_) {
    spdlog::warn("second stop signal: exiting now without draining");
    spdlog::default_logger()->flush();
    _exit(1);
  }
  spdlog::info("received {}", signum == SIGTERM ? "SIGTERM" : "SIGINT");
  self->beginShutdown();
}

std::string Agent::undeliveredReport() const {
  // Per channel instance, the events some consumer has not delivered: the largest lag among its
  // groups. By instance, not by name: a channel replaced by a reload (retiring) and its
  // successor of the same name are different queues. Counted as pendingEvents() counts, so no
  // cursor is made for a group that is going away.
  struct Owed {
    const Channel* channel;
    std::string name;
    std::string location;
    bool retired;
    uint64_t n;
  };
  std::vector<Owed> owed;
  // `fallback`: the channel's name when the configuration no longer has this instance.
  auto note = [&](const std::string& fallback, const ChannelPtr& channel, uint64_t lag) {
    auto it = std::find_if(owed.begin(), owed.end(),
                           [&](const Owed& o) { return o.channel == channel.get(); });
    if (it == owed.end()) {
      auto c = std::find_if(channels_.begin(), channels_.end(),
                            [&](const auto& e) { return e.second.channel == channel; });
      bool retired = c == channels_.end();
      owed.push_back(
          {channel.get(), retired ? fallback : c->first, channel->stats().location, retired, 0});
      it = std::prev(owed.end());
    }
    it->n = std::max(it->n, lag);
  };
  for (const auto& [name, g] : groups_) {
    if (g.running && !g.sinks.empty()) {
      note(g.sinks.front().common.channel, g.running->channel(), g.running->lag());
    } else if (g.wanted && g.channel && !g.sinks.empty()) {
      note(g.sinks.front().common.channel, g.channel, g.channel->cursor(name).lag());
    }
  }
  for (const auto& r : retiring_) {
    for (const auto& g : r.groups) note(r.name, r.channel, g->lag());
  }
  std::string out;
  for (const auto& o : owed) {
    if (o.n == 0) continue;
    std::string which = fmt::format("{}channel '{}'", o.retired ? "retired " : "", o.name);
    if (!out.empty()) out += "; ";
    if (o.location.empty()) {
      out += fmt::format("{} in memory {} are lost", o.n, which);
    } else {
      out += fmt::format("{} stay in file {} ({}) and are sent after the next start", o.n, which,
                         o.location);
    }
  }
  return out;
}

void Agent::watchHealth() {
  uint64_t now = uv_now(&loop_);
  auto stall_after = static_cast<uint64_t>(config_.agent.stall_after.count());
  // Every instance on its own, by its own last commit: the sinks' delivery counters are shared
  // by the instances of one name (a retiring group draining the old channel beside its
  // successor) and would let one's deliveries hide the other's stall.
  std::vector<GroupProgress> progress;
  auto watch = [&](const SinkGroup& g, const std::string& channel, bool retiring) {
    progress.push_back({&g, g.name(), g.spec().implicit ? "sink" : "sink_group", channel, retiring,
                        g.lag(), g.lastCommitMs()});
  };
  for (const auto& [name, g] : groups_) {
    if (g.running) watch(*g.running, g.sinks.front().common.channel, false);
  }
  for (const auto& r : retiring_) {
    for (const auto& g : r.groups) watch(*g, r.name, true);
  }
  stalls_.update(now, progress);
  for (auto& [instance, st] : stalls_.entries()) {
    const auto& g = st.group;
    if (st.waited_ms >= stall_after && !st.logged) {
      st.logged = true;
      spdlog::error("sink group {}{}: {} events wait and nothing was delivered for {}", g.name,
                    g.retiring ? " (draining retired channel " + g.channel + ")" : "", g.lag,
                    formatDuration(Millis(st.waited_ms / 1000 * 1000)));
    } else if (st.waited_ms == 0 && st.logged) {
      st.logged = false;
      spdlog::info("sink group {}{}: delivering again", g.name,
                   g.retiring ? " (draining retired channel " + g.channel + ")" : "");
    }
  }
  for (auto it = low_space_.begin(); it != low_space_.end();) {
    it = channels_.count(it->first) ? std::next(it) : low_space_.erase(it);
  }
  for (const auto& [name, entry] : channels_) {
    auto st = entry.channel->stats();
    // The channel's own judgement: it also refuses while free space minus what waits to be
    // written and the put's size would go below min_free_bytes.
    bool low = st.refusing_for_space;
    bool& was = low_space_[name];
    if (low && !was) {
      spdlog::error(
          "channel {}: {} free on the volume of {}, below min_free_bytes ({}): it accepts no "
          "events until space is freed or min_free_bytes is lowered",
          name, humanBytes(st.free_bytes), st.location, humanBytes(st.min_free_bytes));
    } else if (!low && was) {
      spdlog::info("channel {}: free space is above min_free_bytes again ({} free)", name,
                   humanBytes(st.free_bytes));
    }
    was = low;
  }
}

std::vector<HealthProblem> Agent::healthProblems() const {
  std::vector<HealthProblem> out;
  const std::string agent = "agent";
  if (!start_failures_.empty()) {
    for (const auto& f : start_failures_)
      out.push_back({agent, config_.agent.name, "start failed: " + f});
  } else if (starting_) {
    out.push_back({agent, config_.agent.name, "starting"});
  } else if (stopping_) {
    out.push_back({agent, config_.agent.name, "draining"});
  } else {
    std::vector<std::string> waiting;
    for (const auto& [name, g] : groups_) {
      if (g.wanted && g.pending && !g.running) waiting.push_back("sink group " + name);
    }
    for (const auto& [name, src] : sources_) {
      if (src.wanted && src.pending && !src.running) waiting.push_back("source " + name);
    }
    if (!waiting.empty()) {
      std::string list;
      for (const auto& w : waiting) list += (list.empty() ? "" : ", ") + w;
      out.push_back({agent, config_.agent.name,
                     "reloading: waiting for the old instances of " + list + " to stop"});
    }
  }
  for (const auto& [name, src] : sources_) {
    if (!src.running) continue;
    for (const auto& [key, text] : src.running->problems()) out.push_back({"source", name, text});
  }
  auto stall_after = static_cast<uint64_t>(config_.agent.stall_after.count());
  for (const auto& [instance, st] : stalls_.entries()) {
    if (st.waited_ms < stall_after) continue;
    const auto& g = st.group;
    out.push_back(
        {g.component, g.name,
         fmt::format("{} events wait{} and nothing was delivered for {} s", g.lag,
                     g.retiring ? " in retired channel " + g.channel : "", st.waited_ms / 1000)});
  }
  for (const auto& [name, low] : low_space_) {
    auto c = channels_.find(name);
    if (!low || c == channels_.end()) continue;
    auto st = c->second.channel->stats();
    out.push_back(
        {"channel", name,
         fmt::format("{} free in {}, below min_free_bytes ({}): it accepts no events",
                     humanBytes(st.free_bytes), st.location, humanBytes(st.min_free_bytes))});
  }
  return out;
}

std::string Agent::healthJson() const {
  auto problems = healthProblems();
  nlohmann::ordered_json j;
  j["status"] = !start_failures_.empty() ? "failing"
                : starting_              ? "starting"
                : stopping_              ? "draining"
                : problems.empty()       ? "ok"
                                         : "failing";
  j["agent"] = config_.agent.name;
  j["version"] = SLUICE_VERSION;
  j["uptime_seconds"] = (uv_now(const_cast<uv_loop_t*>(&loop_)) - started_ms_) / 1000;
  auto& channels = j["channels"] = nlohmann::ordered_json::object();
  for (const auto& [name, entry] : channels_) {
    auto st = entry.channel->stats();
    channels[name] = {{"events", st.events}, {"bytes", st.bytes}};
  }
  auto& groups = j["sink_groups"] = nlohmann::ordered_json::object();
  for (const auto& [name, g] : groups_) {
    if (g.running) {
      groups[name] = {{"lag", g.running->lag()}, {"in_flight", g.running->inFlight()}};
    }
  }
  auto& list = j["problems"] = nlohmann::ordered_json::array();
  for (const auto& p : problems) {
    list.push_back({{"component", p.component}, {"name", p.name}, {"reason", p.reason}});
  }
  return j.dump(2) + "\n";
}

void Agent::checkStarted() {
  if (stopping_) return;
  std::vector<std::string> failed;
  for (const auto& [name, entry] : sources_) {
    if (!entry.running) continue;
    for (const auto& [key, text] : entry.running->problems()) {
      failed.push_back("source " + name + ": " + text);
    }
  }
  if (!failed.empty()) {
    for (const auto& f : failed) spdlog::error("start failed: {}", f);
    spdlog::error("start failed: {} could not start; exiting",
                  failed.size() == 1 ? "a source" : "sources");
    exit_code_ = 1;
    start_failures_ = failed;
    beginShutdown(false);
    return;
  }
  starting_ = false;
  watchHealth();
  notifier_->ready();
  spdlog::info("sluice {} started: {} sources, {} channels, {} sink groups", SLUICE_VERSION,
               config_.sources.size(), config_.channels.size(), config_.groups.size());
}

void Agent::startStatus() {
  auto retire = [this](std::unique_ptr<StatusServer> server) {
    // A server is destroyed only once its handles are closed, from the loop.
    auto* raw = server.release();
    raw->close([this, raw] { later([raw] { delete raw; }); });
  };
  if (status_) retire(std::move(status_));
  if (config_.agent.status.empty()) return;
  status_ = std::make_unique<StatusServer>(
      &loop_, metrics_, [this] { return healthJson(); },
      [this] { return healthProblems().empty(); });
  auto err = status_->listen(config_.agent.status);
  if (!err.empty()) {
    spdlog::error("status server on {}: {}", config_.agent.status, err);
    retire(std::move(status_));
    return;
  }
}

int Agent::run(Config config) {
  started_ms_ = uv_now(&loop_);
  config_ = config;
  if (!apply(config)) return 1;
  startStatus();
  if (!config_.agent.status.empty() && !status_) return 1;
  uv_signal_start(&sigterm_, &Agent::onSignal, SIGTERM);
  uv_signal_start(&sigint_, &Agent::onSignal, SIGINT);
  uv_signal_start(&sighup_, &Agent::onSignal, SIGHUP);
  uv_timer_start(
      &tick_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Agent*>(t->data);
        self->watchHealth();
        if (self->stopping_) {
          self->checkDrained();
        } else {
          self->checkRetiring();
        }
      },
      50, 50);
  notifier_->startWatchdog(&loop_, config_.agent.watchdog_interval);
  // The components start from the loop (deferred by apply); this runs after them.
  later([this] { checkStarted(); });
  uv_run(&loop_, UV_RUN_DEFAULT);
  return exit_code_;
}

}  // namespace sluice

#pragma once
// CursorLedger: the position bookkeeping of one consumer of a channel, shared by the channels'
// cursors. It knows nothing about how events are stored; it only tracks which event positions
// [begin, end) are
//
// - outstanding: handed out by a take that is neither committed nor rolled back (one record per
//   take, nearly always a single range, so the common take allocates nothing here);
// - rolled back: handed out again first by the next take, in position order (kept sorted,
//   disjoint and merged with their neighbours);
// - never handed out: [next, tail), where the channel says what the tail is;
// - committed: everything else below the low-water mark.
//
// The low-water mark is the smallest position not committed: min(next, first rolled-back range,
// first range of every outstanding take). It is recomputed only when the owner asks
// (recomputeLowWater), because each channel decides when freeing or persisting is worth it.
//
// Each range carries a `Loc`, an opaque hint the channel uses to find the range's first event
// again (the file channel stores the record's location; the memory channel needs none and uses
// NoLoc). The ledger copies it around and hands it back with the low-water mark.
//
// Threads: none of its own; the owner's (the loop thread for both channels).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace sluice {

// The Loc of a channel that needs no location hint.
struct NoLoc {};

template <typename Loc>
class CursorLedger {
 public:
  struct Range {
    uint64_t begin = 0, end = 0;  // positions, [begin, end)
    Loc loc{};                    // where begin lives
  };
  // The ranges of one take. `more` only when a take gathered several disjoint fragments.
  struct TakeRecord {
    uint64_t id = 0;
    Range first;
    std::vector<Range> more;
    uint64_t events = 0;
  };

  CursorLedger(uint64_t start, Loc loc)
      : next_pos_(start), next_loc_(loc), low_water_(start), low_loc_(loc) {}

  // Assembles the ranges of a take: rolled-back ranges first, in position order, then [next,
  // tail). `collect(begin, end, loc)` hands out what fits of [begin, end), starting at `loc`; it
  // returns the position reached and leaves `loc` where that position lives. `full()` says the
  // take has no room left. What was handed out leaves the rolled-back list and `next`; the record
  // returned is not outstanding until add() (drop it if the take came back empty).
  template <typename Collect, typename Full>
  TakeRecord gather(uint64_t tail, Collect&& collect, Full&& full) {
    TakeRecord rec;
    size_t used = 0;
    while (used < rolled_back_.size() && !full()) {
      Range& r = rolled_back_[used];
      Loc loc = r.loc;
      uint64_t reached = collect(r.begin, r.end, loc);
      append(rec, r.begin, reached, r.loc);
      rolled_back_events_ -= reached - r.begin;
      if (reached >= r.end) {
        ++used;
      } else {
        r.begin = reached;
        r.loc = loc;
      }
    }
    if (used) rolled_back_.erase(rolled_back_.begin(), rolled_back_.begin() + used);

    if (!full() && next_pos_ < tail) {
      Loc start_loc = next_loc_;
      uint64_t begin = next_pos_;
      next_pos_ = collect(begin, tail, next_loc_);
      append(rec, begin, next_pos_, start_loc);
    }
    return rec;
  }

  // Makes a gathered take outstanding with `events` events; returns its id.
  uint64_t add(TakeRecord rec, uint64_t events) {
    rec.id = next_take_id_++;
    rec.events = events;
    outstanding_events_ += events;
    outstanding_.push_back(std::move(rec));
    return outstanding_.back().id;
  }

  // Forgets take `id`: its events count as committed. False when no such take is outstanding.
  // A detached cursor settles every take this way (its events are no longer its business).
  bool commit(uint64_t id) {
    size_t i = find(id);
    if (i == kNotFound) return false;
    outstanding_events_ -= outstanding_[i].events;
    erase(i);
    return true;
  }

  // Moves take `id`'s ranges to the rolled-back list. False when no such take is outstanding.
  bool rollback(uint64_t id) {
    size_t i = find(id);
    if (i == kNotFound) return false;
    TakeRecord& rec = outstanding_[i];
    outstanding_events_ -= rec.events;
    rolled_back_events_ += rec.events;
    requeue(rec.first);
    for (const auto& r : rec.more) requeue(r);
    erase(i);
    return true;
  }

  void recomputeLowWater() {
    uint64_t low = next_pos_;
    Loc loc = next_loc_;
    if (!rolled_back_.empty() && rolled_back_.front().begin < low) {
      low = rolled_back_.front().begin;
      loc = rolled_back_.front().loc;
    }
    // A record's ranges are ascending, so `first` holds its smallest position.
    for (const auto& rec : outstanding_) {
      if (rec.first.begin < low) {
        low = rec.first.begin;
        loc = rec.first.loc;
      }
    }
    low_water_ = low;
    low_loc_ = loc;
  }

  // Every position not committed below nextPos(): the rolled-back ranges and the ranges of the
  // outstanding takes, in no particular order. With nextPos() and its Loc this is the whole
  // state a restart needs to hand out exactly what was not committed.
  template <typename F>
  void forEachUncommitted(F&& f) const {
    for (const auto& r : rolled_back_) f(r);
    for (const auto& rec : outstanding_) {
      f(rec.first);
      for (const auto& r : rec.more) f(r);
    }
  }

  // The same ranges sorted by position, adjacent ones merged (the lower one's Loc locates the
  // merged begin): a consumer with many takes outstanding, settling them in order, has one.
  std::vector<Range> mergedUncommitted() const {
    std::vector<Range> ranges;
    forEachUncommitted([&ranges](const Range& r) { ranges.push_back(r); });
    std::sort(ranges.begin(), ranges.end(),
              [](const Range& a, const Range& b) { return a.begin < b.begin; });
    size_t n = 0;
    for (const auto& r : ranges) {
      if (n > 0 && ranges[n - 1].end == r.begin) {
        ranges[n - 1].end = r.end;
      } else {
        ranges[n++] = r;
      }
    }
    ranges.resize(n);
    return ranges;
  }

  // Restores a saved state (see forEachUncommitted) into a ledger with nothing outstanding: the
  // uncommitted ranges become rolled back, so they are handed out first, then [next, tail).
  // Ranges must lie below `next` and not overlap.
  void restore(uint64_t next, Loc next_loc, std::vector<Range> uncommitted) {
    std::sort(uncommitted.begin(), uncommitted.end(),
              [](const Range& a, const Range& b) { return a.begin < b.begin; });
    next_pos_ = next;
    next_loc_ = next_loc;
    rolled_back_.clear();
    rolled_back_events_ = 0;
    for (const auto& r : uncommitted) {
      if (r.begin >= r.end) continue;
      rolled_back_events_ += r.end - r.begin;
      requeue(r);
    }
    recomputeLowWater();
  }

  // As of the last recomputeLowWater.
  uint64_t lowWater() const { return low_water_; }
  const Loc& lowLoc() const { return low_loc_; }
  uint64_t nextPos() const { return next_pos_; }
  const Loc& nextLoc() const { return next_loc_; }
  // Events not committed, out of a log whose next put starts at `tail`.
  uint64_t lag(uint64_t tail) const {
    return (tail - std::min(next_pos_, tail)) + rolled_back_events_ + outstanding_events_;
  }
  bool hasOutstanding() const { return !outstanding_.empty(); }
  uint64_t outstandingEvents() const { return outstanding_events_; }
  uint64_t rolledBackEvents() const { return rolled_back_events_; }
  const std::vector<Range>& rolledBack() const { return rolled_back_; }

 private:
  static constexpr size_t kNotFound = static_cast<size_t>(-1);

  static void append(TakeRecord& rec, uint64_t begin, uint64_t end, const Loc& loc) {
    if (begin >= end) return;
    if (rec.first.begin == rec.first.end) {
      rec.first = {begin, end, loc};
      return;
    }
    Range& last = rec.more.empty() ? rec.first : rec.more.back();
    if (last.end == begin) {
      last.end = end;
    } else {
      rec.more.push_back({begin, end, loc});
    }
  }

  size_t find(uint64_t id) const {
    // Takes are mostly settled oldest first: scan from the front.
    for (size_t i = 0; i < outstanding_.size(); ++i) {
      if (outstanding_[i].id == id) return i;
    }
    return kNotFound;
  }

  void erase(size_t i) { outstanding_.erase(outstanding_.begin() + static_cast<ptrdiff_t>(i)); }

  // Inserts r into the rolled-back list, merging it with adjacent neighbours (the lower range's
  // loc stays, as it locates the merged range's begin).
  void requeue(const Range& r) {
    auto it = std::lower_bound(rolled_back_.begin(), rolled_back_.end(), r.begin,
                               [](const Range& a, uint64_t pos) { return a.begin < pos; });
    size_t i = static_cast<size_t>(it - rolled_back_.begin());
    rolled_back_.insert(it, r);
    if (i + 1 < rolled_back_.size() && rolled_back_[i].end == rolled_back_[i + 1].begin) {
      rolled_back_[i].end = rolled_back_[i + 1].end;
      rolled_back_.erase(rolled_back_.begin() + static_cast<ptrdiff_t>(i + 1));
    }
    if (i > 0 && rolled_back_[i - 1].end == rolled_back_[i].begin) {
      rolled_back_[i - 1].end = rolled_back_[i].end;
      rolled_back_.erase(rolled_back_.begin() + static_cast<ptrdiff_t>(i));
    }
  }

  uint64_t next_pos_;  // next position never handed out
  Loc next_loc_;
  uint64_t low_water_;
  Loc low_loc_;
  std::vector<Range> rolled_back_;  // sorted, disjoint, not adjacent
  uint64_t rolled_back_events_ = 0;
  std::vector<TakeRecord> outstanding_;
  uint64_t outstanding_events_ = 0;
  uint64_t next_take_id_ = 1;
};

}  // namespace sluice

#pragma once
// The channel contract.
//
// A channel is an ordered log of events with one cursor per consumer. Every sink group that
// reads a channel is one consumer: it takes batches through its own cursor and commits them
// once its sink has delivered them. Data is freed when every cursor has committed past it.
//
// Threads: every method here runs on the loop thread. Callbacks (`onReady`, space listeners)
// are called on the loop thread too, never from inside put/take/commit of the same channel
// re-entrantly: implementations defer them to the loop.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/event.h"
#include "agent/metrics.h"

namespace sluice {

struct Slice {
  std::shared_ptr<const Batch> batch;
  uint32_t begin = 0;
  uint32_t end = 0;
};

class Cursor;

// What a take hands out: events by reference into the channel's shared batches, plus the token
// that commits or rolls back. Move-only. A Take destroyed without commit() rolls back, so a sink
// that loses a take on an error path never loses its events.
class Take {
 public:
  Take() = default;
  Take(Take&& other) noexcept { *this = std::move(other); }
  Take& operator=(Take&& other) noexcept;
  Take(const Take&) = delete;
  Take& operator=(const Take&) = delete;
  ~Take() { rollback(); }

  explicit operator bool() const { return cursor_ != nullptr; }
  size_t events() const { return events_; }
  size_t bytes() const { return bytes_; }
  const std::vector<Slice>& slices() const { return slices_; }

  // Calls f(EventView) for every event, in channel order.
  template <class F>
  void forEach(F&& f) const {
    for (const auto& s : slices_) {
      for (uint32_t i = s.begin; i < s.end; ++i) f((*s.batch)[i]);
    }
  }

  void commit();
  void rollback();

 private:
  friend class Cursor;
  Cursor* cursor_ = nullptr;
  uint64_t id_ = 0;
  std::vector<Slice> slices_;
  size_t events_ = 0;
  size_t bytes_ = 0;
};

class Cursor {
 public:
  virtual ~Cursor() = default;

  // Hands out up to max_events events and, past the first event, up to max_bytes bytes.
  // Events rolled back earlier come first, in order. Returns an empty Take when nothing is
  // available; the ready callback then fires once data arrives.
  // Several takes may be outstanding at once; they may be committed in any order.
  virtual Take take(size_t max_events, size_t max_bytes) = 0;
  // Events this consumer has not committed yet (its lag).
  virtual uint64_t lag() const = 0;
  virtual void setOnReady(std::function<void()> fn) = 0;

 protected:
  friend class Take;
  virtual void commitTake(uint64_t id) = 0;
  virtual void rollbackTake(uint64_t id) = 0;
  Take makeTake(uint64_t id, std::vector<Slice> slices, size_t events, size_t bytes) {
    Take t;
    t.cursor_ = this;
    t.id_ = id;
    t.slices_ = std::move(slices);
    t.events_ = events;
    t.bytes_ = bytes;
    return t;
  }
};

// What a put may carry besides the batch.
struct PutOptions {
  // Opaque source positions (a file's identity -> offset, say) that a durable channel writes in
  // the same durable write as the batch, so a source after a crash resumes exactly after the
  // last line the channel holds: no loss, no duplicate. Later values of a key replace earlier.
  std::vector<std::pair<std::string, std::string>> positions;
  // Runs on the loop thread once the batch is durable; never inside put() itself.
  std::function<void()> on_durable;
};

struct ChannelStats {
  uint64_t events = 0;
  uint64_t bytes = 0;
  uint64_t capacity_events = 0;  // 0: unbounded in events
  uint64_t capacity_bytes = 0;   // 0: unbounded in bytes
  // Where the events are kept durably (a file channel's directory); empty: in memory only, lost
  // when the process ends.
  std::string location;
  // A channel that needs free space on a volume (min_free_bytes > 0) accepts nothing while
  // free_bytes is below it; /health reports that.
  uint64_t free_bytes = 0;
  uint64_t min_free_bytes = 0;
  // It refuses puts for want of free space: what is queued for the disk and the put would leave
  // less than min_free_bytes free (true from such a refusal until free space grows).
  bool refusing_for_space = false;
};

class Channel {
 public:
  virtual ~Channel() = default;

  // True when a put of this many events and bytes would be accepted now. Puts into several
  // channels are all-or-nothing: the router asks every required channel first, then puts.
  virtual bool hasRoom(size_t events, size_t bytes) const = 0;
  // Appends a frozen batch. Returns false (and keeps nothing) when there is no room. Events
  // become visible to cursors once they are durable (at once for a memory channel).
  virtual bool put(std::shared_ptr<const Batch> batch, PutOptions options = {}) = 0;
  // The latest durable source positions, by key; empty for a channel that keeps none. A file
  // source reads its positions back from here at start-up.
  virtual std::map<std::string, std::string> positions() const { return {}; }
  // Whether puts store their source positions durably with the events (the file channel).
  virtual bool keepsPositions() const { return false; }
  // Registers fn to be called on the loop thread whenever room frees up. Returns a handle for
  // removeSpaceListener.
  virtual uint64_t addSpaceListener(std::function<void()> fn) = 0;
  virtual void removeSpaceListener(uint64_t handle) = 0;

  // The consumer's cursor, created on first use. A new consumer starts at the oldest event the
  // channel still holds.
  virtual Cursor& cursor(const std::string& consumer) = 0;
  // Forgets a consumer (its sink group is gone); data only it held back is freed.
  virtual void dropCursor(const std::string& consumer) = 0;

  virtual ChannelStats stats() const = 0;
};

using ChannelPtr = std::shared_ptr<Channel>;

}  // namespace sluice

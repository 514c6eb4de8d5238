#include "agent/cursor_ledger.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

namespace sluice {
namespace {

using Ledger = CursorLedger<NoLoc>;

// Hands out at most `budget` positions per take, like a channel whose take is full after that.
struct Taker {
  uint64_t budget = 0;
  uint64_t given = 0;
  std::vector<uint64_t> positions;

  uint64_t operator()(uint64_t begin, uint64_t end, NoLoc&) {
    uint64_t n = std::min(end - begin, budget - given);
    for (uint64_t p = begin; p < begin + n; ++p) positions.push_back(p);
    given += n;
    return begin + n;
  }
  bool full() const { return given >= budget; }
};

// Takes up to `max` positions from [next, tail); returns them and the take's id (0 when empty).
std::pair<std::vector<uint64_t>, uint64_t> take(Ledger& l, uint64_t tail, uint64_t max) {
  Taker t;
  t.budget = max;
  auto rec = l.gather(
      tail, [&t](uint64_t b, uint64_t e, NoLoc& loc) { return t(b, e, loc); },
      [&t] { return t.full(); });
  if (t.given == 0) return {{}, 0};
  uint64_t id = l.add(std::move(rec), t.given);
  return {t.positions, id};
}

std::vector<uint64_t> seq(uint64_t begin, uint64_t end) {
  std::vector<uint64_t> v;
  for (uint64_t p = begin; p < end; ++p) v.push_back(p);
  return v;
}

TEST_CASE("cursor ledger: takes hand out new positions in order and commits raise the low water") {
  Ledger l(10, NoLoc{});
  CHECK(l.lowWater() == 10);
  auto [a, ida] = take(l, 20, 4);
  auto [b, idb] = take(l, 20, 4);
  CHECK(a == seq(10, 14));
  CHECK(b == seq(14, 18));
  CHECK(l.nextPos() == 18);
  CHECK(l.outstandingEvents() == 8);
  CHECK(l.lag(20) == 10);

  // Committing the second take first leaves the low water at the first one.
  CHECK(l.commit(idb));
  l.recomputeLowWater();
  CHECK(l.lowWater() == 10);
  CHECK(l.commit(ida));
  l.recomputeLowWater();
  CHECK(l.lowWater() == 18);
  CHECK_FALSE(l.hasOutstanding());
  CHECK(l.lag(20) == 2);
}

TEST_CASE("cursor ledger: uncommitted ranges come sorted, adjacent ones merged") {
  Ledger l(0, NoLoc{});
  std::vector<uint64_t> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(take(l, 100, 10).second);  // [0,10) ... [40,50)
  CHECK(l.commit(ids[2]));                                             // [20,30) committed
  CHECK(l.rollback(ids[4]));  // [40,50) rolled back, still uncommitted
  auto ranges = l.mergedUncommitted();
  REQUIRE(ranges.size() == 2);
  CHECK(ranges[0].begin == 0);
  CHECK(ranges[0].end == 20);
  CHECK(ranges[1].begin == 30);
  CHECK(ranges[1].end == 50);
}

TEST_CASE("cursor ledger: unknown or already settled takes are ignored") {
  Ledger l(0, NoLoc{});
  auto [a, id] = take(l, 5, 5);
  CHECK_FALSE(l.commit(id + 1));
  CHECK_FALSE(l.rollback(id + 1));
  CHECK(l.commit(id));
  CHECK_FALSE(l.commit(id));
  CHECK_FALSE(l.rollback(id));
  CHECK(l.outstandingEvents() == 0);
}

TEST_CASE("cursor ledger: an empty take records nothing") {
  Ledger l(3, NoLoc{});
  auto [a, id] = take(l, 3, 10);
  CHECK(a.empty());
  CHECK(id == 0);
  CHECK_FALSE(l.hasOutstanding());
  CHECK(l.nextPos() == 3);
}

TEST_CASE("cursor ledger: rolled-back ranges are merged and handed out first, in order") {
  Ledger l(0, NoLoc{});
  auto [a, ida] = take(l, 100, 3);  // 0..3
  auto [b, idb] = take(l, 100, 3);  // 3..6
  auto [c, idc] = take(l, 100, 3);  // 6..9
  CHECK(l.rollback(idc));
  CHECK(l.rollback(ida));
  CHECK(l.rolledBack().size() == 2);
  CHECK(l.rolledBackEvents() == 6);
  // The middle one joins both neighbours into one range.
  CHECK(l.rollback(idb));
  REQUIRE(l.rolledBack().size() == 1);
  CHECK(l.rolledBack()[0].begin == 0);
  CHECK(l.rolledBack()[0].end == 9);
  CHECK(l.outstandingEvents() == 0);
  l.recomputeLowWater();
  CHECK(l.lowWater() == 0);

  // A take larger than the rolled-back range continues with new positions.
  auto [d, idd] = take(l, 100, 12);
  CHECK(d == seq(0, 12));
  CHECK(l.rolledBackEvents() == 0);
  CHECK(l.nextPos() == 12);
  // A rolled-back take that covered both parts comes back as one range.
  CHECK(l.rollback(idd));
  REQUIRE(l.rolledBack().size() == 1);
  CHECK(l.rolledBack()[0].end == 12);
}

TEST_CASE("cursor ledger: a partial take of a rolled-back range leaves the rest first in line") {
  Ledger l(0, NoLoc{});
  auto [a, ida] = take(l, 10, 10);
  CHECK(l.rollback(ida));
  auto [b, idb] = take(l, 10, 4);
  CHECK(b == seq(0, 4));
  CHECK(l.rolledBackEvents() == 6);
  REQUIRE(l.rolledBack().size() == 1);
  CHECK(l.rolledBack()[0].begin == 4);
  CHECK(l.commit(idb));
  l.recomputeLowWater();
  CHECK(l.lowWater() == 4);
}

TEST_CASE("cursor ledger: the low-water location follows the smallest position") {
  struct Loc {
    uint64_t where = 0;
  };
  CursorLedger<Loc> l(0, Loc{1000});
  // The channel's location hint is just the position plus 1000 here.
  auto collect = [](uint64_t begin, uint64_t end, Loc& loc, uint64_t max) {
    uint64_t reached = std::min(end, begin + max);
    loc.where = reached + 1000;
    return reached;
  };
  auto takeN = [&](uint64_t n) {
    auto rec = l.gather(
        50, [&](uint64_t b, uint64_t e, Loc& loc) { return collect(b, e, loc, n); },
        [] { return false; });
    return l.add(std::move(rec), n);
  };
  uint64_t a = takeN(5);  // 0..5
  uint64_t b = takeN(5);  // 5..10
  CHECK(l.commit(a));
  l.recomputeLowWater();
  CHECK(l.lowWater() == 5);
  CHECK(l.lowLoc().where == 1005);
  CHECK(l.commit(b));
  l.recomputeLowWater();
  CHECK(l.lowWater() == 10);
  CHECK(l.lowLoc().where == 1010);
}

// Random takes, commits and rollbacks against a model: every position is handed out again
// after a rollback, never twice while outstanding, and the low water is the smallest position
// not committed.
TEST_CASE("cursor ledger: random actions match a model") {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 50; ++round) {
    Ledger l(0, NoLoc{});
    uint64_t tail = 0;
    std::set<uint64_t> committed, handed_out;
    std::vector<std::pair<uint64_t, std::vector<uint64_t>>> open;
    for (int step = 0; step < 200; ++step) {
      switch (rng() % 4) {
        case 0:
          tail += rng() % 8;
          break;
        case 1: {
          auto [got, id] = take(l, tail, 1 + rng() % 6);
          // Rolled-back positions come first and in ascending order.
          CHECK(std::is_sorted(got.begin(), got.end()));
          for (uint64_t p : got) {
            CHECK(handed_out.insert(p).second);
            CHECK_FALSE(committed.count(p));
          }
          if (id) open.push_back({id, got});
          break;
        }
        case 2:
        case 3: {
          if (open.empty()) break;
          size_t i = rng() % open.size();
          auto [id, got] = open[i];
          open.erase(open.begin() + static_cast<ptrdiff_t>(i));
          if (rng() % 2) {
            CHECK(l.commit(id));
            committed.insert(got.begin(), got.end());
          } else {
            CHECK(l.rollback(id));
          }
          for (uint64_t p : got) handed_out.erase(p);
          break;
        }
      }
      uint64_t low = 0;
      while (committed.count(low)) ++low;
      l.recomputeLowWater();
      CHECK(l.lowWater() == low);
      CHECK(l.lag(tail) == tail - committed.size());
    }
  }
}

}  // namespace
}  // namespace sluice

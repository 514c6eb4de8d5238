#include "agent/diagnostics.h"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>

namespace sluice {

void Diagnostics::add(Diagnostic::Severity severity, Location where, std::string path,
                      std::string message) {
  if (severity == Diagnostic::Severity::Error) ++errors_;
  if (items_.size() >= kMaxKept) {
    ++left_out_;
    return;
  }
  items_.push_back({severity, where, std::move(path), std::move(message)});
}

void Diagnostics::error(Location where, std::string path, std::string message) {
  add(Diagnostic::Severity::Error, where, std::move(path), std::move(message));
}

void Diagnostics::warning(Location where, std::string path, std::string message) {
  add(Diagnostic::Severity::Warning, where, std::move(path), std::move(message));
}

std::string Diagnostics::format() const {
  std::string out;
  const std::string& name = file_.empty() ? std::string("<config>") : file_;
  for (const auto& d : items_) {
    out += name;
    if (d.where.line > 0)
      fmt::format_to(std::back_inserter(out), ":{}:{}", d.where.line, d.where.column);
    out += d.severity == Diagnostic::Severity::Error ? ": error: " : ": warning: ";
    if (!d.path.empty()) out += d.path + ": ";
    out += d.message + "\n";
  }
  if (left_out_ > 0) {
    fmt::format_to(std::back_inserter(out), "{}: {} more problems not shown\n", name, left_out_);
  }
  return out;
}

namespace {
thread_local size_t edit_distance_count = 0;
}  // namespace

size_t editDistanceCount() { return edit_distance_count; }

size_t editDistance(const std::string& a, const std::string& b) {
  ++edit_distance_count;
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t subst = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  // A plausible typo: at most a third of the word wrong (and at least two edits allowed).
  size_t limit = std::max<size_t>(2, word.size() / 3);
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const auto& c : candidates) {
    // The distance is at least the difference in length: such a candidate cannot be near.
    size_t length_gap = c.size() > word.size() ? c.size() - word.size() : word.size() - c.size();
    if (length_gap > limit) continue;
    size_t d = editDistance(word, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  if (best_distance <= limit) return best;
  // An abbreviation: "trunc" for "truncate".
  if (word.size() >= 3) {
    for (const auto& c : candidates) {
      if (c.compare(0, word.size(), word) == 0) return c;
    }
  }
  return std::string();
}

}  // namespace sluice

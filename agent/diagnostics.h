#pragma once
// Configuration diagnostics: every problem with file:line:column and the key path, collected
// so that one run of `sluice check` shows all of them.

#include <string>
#include <vector>

namespace sluice {

struct Location {
  int line = 0;    // 1-based; 0 when unknown
  int column = 0;  // 1-based
};

struct Diagnostic {
  enum class Severity { Error, Warning } severity = Severity::Error;
  Location where;
  std::string path;  // sinks.kafka.batch_size
  std::string message;
};

class Diagnostics {
 public:
  explicit Diagnostics(std::string file = {}) : file_(std::move(file)) {}
  void error(Location where, std::string path, std::string message);
  void warning(Location where, std::string path, std::string message);
  bool hasErrors() const { return errors_ > 0; }
  // Every error, including those past the cap that are counted but not kept.
  size_t errorCount() const { return errors_; }
  const std::vector<Diagnostic>& all() const { return items_; }
  // True once kMaxKept diagnostics are kept: a caller may then skip the work of building a
  // message (a did-you-mean search) and only count the error.
  bool full() const { return items_.size() >= kMaxKept; }
  // One line per diagnostic: "file:line:col: error: path: message"; then, when errors were
  // left out, how many.
  std::string format() const;
  // At most this many diagnostics are kept (a generated file with 200,000 bad keys would
  // otherwise print 200,000 lines); the rest are only counted.
  static constexpr size_t kMaxKept = 100;
  const std::string& file() const { return file_; }

 private:
  void add(Diagnostic::Severity severity, Location where, std::string path, std::string message);

  std::string file_;
  std::vector<Diagnostic> items_;
  size_t errors_ = 0;
  size_t left_out_ = 0;
};

// Edit distance, for did-you-mean suggestions.
size_t editDistance(const std::string& a, const std::string& b);
// How many times this thread has computed an edit distance: lets a test see that `check` on a
// file with many unknown keys does not search for suggestions it will not show.
size_t editDistanceCount();
// The candidate nearest to `word`, or "" when none is near enough to be a plausible typo.
std::string nearest(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace sluice

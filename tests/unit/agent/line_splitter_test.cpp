#include "agent/line_splitter.h"

#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

namespace sluice {
namespace {

struct Collect : LineSink {
  std::vector<std::string> lines;
  void onLine(std::string_view line) override { lines.emplace_back(line); }
};

LineSplitterOptions opts(size_t max, LongLinePolicy policy = LongLinePolicy::Split,
                         bool strip_cr = true) {
  LineSplitterOptions o;
  o.max_line_bytes = max;
  o.on_long_line = policy;
  o.strip_cr = strip_cr;
  return o;
}

// Feeds `input` cut at the given offsets, then flushes.
std::vector<std::string> splitAt(LineSplitter& s, const std::string& input,
                                 const std::vector<size_t>& cuts, bool flush = true) {
  Collect c;
  size_t prev = 0;
  for (size_t cut : cuts) {
    s.feed(std::string_view(input).substr(prev, cut - prev), c);
    prev = cut;
  }
  s.feed(std::string_view(input).substr(prev), c);
  if (flush) s.flush(c);
  return c.lines;
}

// Feeds `input` one byte at a time, then flushes.
std::vector<std::string> byteByByte(LineSplitter& s, const std::string& input) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < input.size(); ++i) cuts.push_back(i);
  return splitAt(s, input, cuts);
}

using Lines = std::vector<std::string>;

TEST_CASE("LineSplitter: whole lines in one chunk") {
  LineSplitter s;
  CHECK(splitAt(s, "a\nbb\nccc\n", {}) == Lines{"a", "bb", "ccc"});
  CHECK_FALSE(s.hasPartial());
}

TEST_CASE("LineSplitter: lines inside a chunk are views into it") {
  LineSplitter s;
  std::string chunk = "hello\nworld\n";
  std::vector<const char*> starts;
  s.feed(chunk, [&](std::string_view line) { starts.push_back(line.data()); });
  REQUIRE(starts.size() == 2);
  CHECK(starts[0] == chunk.data());
  CHECK(starts[1] == chunk.data() + 6);
}

TEST_CASE("LineSplitter: lines across chunk boundaries") {
  LineSplitter s;
  CHECK(splitAt(s, "abc\ndef\nghi\n", {2, 5, 8, 9}) == Lines{"abc", "def", "ghi"});
  CHECK(s.partialBytes() == 0);
}

TEST_CASE("LineSplitter: partial line is held until its newline") {
  LineSplitter s;
  Collect c;
  s.feed("abc", c);
  CHECK(c.lines.empty());
  CHECK(s.hasPartial());
  CHECK(s.partialBytes() == 3);
  s.feed("def", c);
  CHECK(c.lines.empty());
  s.feed("\n", c);
  CHECK(c.lines == Lines{"abcdef"});
  CHECK_FALSE(s.hasPartial());
}

TEST_CASE("LineSplitter: empty lines are emitted") {
  LineSplitter s;
  CHECK(splitAt(s, "\n\na\n\n", {}) == Lines{"", "", "a", ""});
  LineSplitter t;
  CHECK(byteByByte(t, "\n\na\n\n") == Lines{"", "", "a", ""});
  LineSplitter u;
  CHECK(byteByByte(u, "\r\n\r\n") == Lines{"", ""});
}

TEST_CASE("LineSplitter: CRLF is stripped, also across chunks") {
  LineSplitter s;
  CHECK(splitAt(s, "a\r\nb\r\n", {}) == Lines{"a", "b"});
  LineSplitter t;
  CHECK(splitAt(t, "a\r\nb\r\n", {2}) == Lines{"a", "b"});  // "a\r" | "\nb\r\n"
  LineSplitter u;
  CHECK(byteByByte(u, "ab\r\ncd\r\n") == Lines{"ab", "cd"});
}

TEST_CASE("LineSplitter: only one trailing CR is stripped; inner CRs stay") {
  LineSplitter s;
  CHECK(splitAt(s, "a\rb\r\r\n", {}) == Lines{"a\rb\r"});
  LineSplitter t;
  CHECK(byteByByte(t, "a\rb\r\r\n") == Lines{"a\rb\r"});
  LineSplitter u;
  CHECK(splitAt(u, "a\r\rb\n", {2}) == Lines{"a\r\rb"});
}

TEST_CASE("LineSplitter: strip_cr off keeps the CR") {
  LineSplitter s(opts(100, LongLinePolicy::Split, false));
  CHECK(splitAt(s, "a\r\nb\r\n", {2}) == Lines{"a\r", "b\r"});
}

TEST_CASE("LineSplitter: flush emits the final partial line") {
  LineSplitter s;
  CHECK(splitAt(s, "a\nb\nc", {}) == Lines{"a", "b", "c"});
  CHECK_FALSE(s.hasPartial());
  LineSplitter t;
  CHECK(splitAt(t, "a\nb\nc\r", {5}) == Lines{"a", "b", "c"});  // a final CR is stripped too
  // Nothing pending: flush emits nothing.
  LineSplitter u;
  CHECK(splitAt(u, "a\n", {}) == Lines{"a"});
  Collect c;
  u.flush(c);
  CHECK(c.lines.empty());
  // The stream may go on after a flush.
  u.feed("x", c);
  u.flush(c);
  u.feed("y\n", c);
  CHECK(c.lines == Lines{"x", "y"});
}

TEST_CASE("LineSplitter: a line of exactly max_line_bytes is one line") {
  for (LongLinePolicy policy : {LongLinePolicy::Split, LongLinePolicy::Truncate}) {
    LineSplitter s(opts(4, policy));
    CHECK(splitAt(s, "abcd\nefgh\r\n", {}) == Lines{"abcd", "efgh"});
    LineSplitter t(opts(4, policy));
    CHECK(byteByByte(t, "abcd\nefgh\r\nijkl") == Lines{"abcd", "efgh", "ijkl"});
    LineSplitter u(opts(4, policy));
    CHECK(splitAt(u, "abcd\r\n", {5}) == Lines{"abcd"});  // "abcd\r" | "\n"
    CHECK(s.splitCount() + t.splitCount() + u.splitCount() == 0);
    CHECK(s.truncatedCount() + t.truncatedCount() + u.truncatedCount() == 0);
  }
}

TEST_CASE("LineSplitter: split policy keeps every byte and counts extra pieces") {
  LineSplitter s(opts(4));
  CHECK(splitAt(s, "abcdefghij\n12\n", {}) == Lines{"abcd", "efgh", "ij", "12"});
  CHECK(s.splitCount() == 2);
  LineSplitter t(opts(4));
  CHECK(byteByByte(t, "abcdefghij\n12\n") == Lines{"abcd", "efgh", "ij", "12"});
  CHECK(t.splitCount() == 2);
  LineSplitter u(opts(4));
  CHECK(splitAt(u, "abcdefgh\n", {3, 6}) == Lines{"abcd", "efgh"});
  CHECK(u.splitCount() == 1);
  // A CR that turns out not to end the line is content of the next piece.
  LineSplitter v(opts(4));
  CHECK(splitAt(v, "abcd\rx\n", {5}) == Lines{"abcd", "\rx"});
  CHECK(v.splitCount() == 1);
  // An unterminated long line is split too, and flushed.
  LineSplitter w(opts(3));
  CHECK(splitAt(w, "abcdefg", {2}) == Lines{"abc", "def", "g"});
  CHECK(w.splitCount() == 2);
}

TEST_CASE("LineSplitter: truncate policy keeps the head and counts the rest") {
  LineSplitter s(opts(4, LongLinePolicy::Truncate));
  CHECK(splitAt(s, "abcdefghij\n12\n", {}) == Lines{"abcd", "12"});
  CHECK(s.truncatedCount() == 1);
  CHECK(s.discardedBytes() == 6);
  LineSplitter t(opts(4, LongLinePolicy::Truncate));
  CHECK(byteByByte(t, "abcdefghij\r\n12\n") == Lines{"abcd", "12"});
  CHECK(t.truncatedCount() == 1);
  CHECK(t.discardedBytes() == 6);  // the stripped CR is not counted
  LineSplitter u(opts(4, LongLinePolicy::Truncate));
  CHECK(splitAt(u, "abcdefghij", {3, 7}) == Lines{"abcd"});
  CHECK(u.truncatedCount() == 1);
  CHECK(u.discardedBytes() == 6);
  CHECK(u.splitCount() == 0);
}

TEST_CASE("LineSplitter: memory stays bounded by max_line_bytes") {
  LineSplitter s(opts(8, LongLinePolicy::Truncate));
  Collect c;
  std::string chunk(1000, 'x');
  for (int i = 0; i < 100; ++i) {
    s.feed(chunk, c);
    CHECK(s.partialBytes() <= 8);
  }
  s.feed("\n", c);
  CHECK(c.lines == Lines{"xxxxxxxx"});
  CHECK(s.discardedBytes() == 100000 - 8);

  LineSplitter t(opts(8));
  Collect d;
  for (int i = 0; i < 10; ++i) {
    t.feed(chunk, d);
    CHECK(t.partialBytes() <= 8);
  }
  t.flush(d);
  CHECK(d.lines.size() == 1250);
  CHECK(t.splitCount() == 1249);
}

TEST_CASE("LineSplitter: reset forgets the partial line") {
  LineSplitter s;
  Collect c;
  s.feed("abc", c);
  s.reset();
  s.feed("def\n", c);
  CHECK(c.lines == Lines{"def"});
}

// Reference model: split the whole input at once, by the documented rules.
Lines model(const std::string& input, size_t max, LongLinePolicy policy) {
  Lines out;
  size_t pos = 0;
  while (pos < input.size()) {
    size_t nl = input.find('\n', pos);
    bool last = nl == std::string::npos;
    std::string line = input.substr(pos, last ? std::string::npos : nl - pos);
    pos = last ? input.size() : nl + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() <= max) {
      out.push_back(line);
    } else if (policy == LongLinePolicy::Truncate) {
      out.push_back(line.substr(0, max));
    } else {
      for (size_t off = 0; off < line.size(); off += max) out.push_back(line.substr(off, max));
    }
  }
  return out;
}

TEST_CASE("LineSplitter: random chunking agrees with a whole-input model") {
  std::mt19937 rng(12345);
  const char alphabet[] = {'a', 'b', '\r', '\n', 'c'};
  for (int round = 0; round < 2000; ++round) {
    size_t len = rng() % 40;
    std::string input;
    for (size_t i = 0; i < len; ++i) input.push_back(alphabet[rng() % sizeof(alphabet)]);
    size_t max = 1 + rng() % 6;
    auto policy = (rng() % 2) ? LongLinePolicy::Split : LongLinePolicy::Truncate;
    std::vector<size_t> cuts;
    for (size_t i = 1; i < input.size(); ++i) {
      if (rng() % 3 == 0) cuts.push_back(i);
    }
    LineSplitter s(opts(max, policy));
    Lines got = splitAt(s, input, cuts);
    Lines want = model(input, max, policy);
    INFO("input=", input, " max=", max);
    REQUIRE(got == want);
  }
}

}  // namespace
}  // namespace sluice

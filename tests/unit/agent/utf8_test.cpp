// UTF-8 validation: Unicode's well-formed sequences, and the same verdict as nlohmann::json's
// dump (which the JSON sinks use with error_handler_t::replace).

#include "agent/utf8.h"

#include <doctest/doctest.h>
#include <rapidcheck.h>

#include <nlohmann/json.hpp>
#include <string>

namespace sluice {
namespace {

using namespace std::string_literals;

TEST_CASE("utf8: well-formed and ill-formed sequences") {
  CHECK(isValidUtf8(""));
  CHECK(isValidUtf8("plain ASCII, longer than eight bytes"));
  CHECK(isValidUtf8("h\xC3\xA9llo w\xC3\xB6rld"));          // é ö
  CHECK(isValidUtf8("\xE2\x82\xAC and \xF0\x9F\x98\x80"));  // € and 😀
  CHECK(isValidUtf8("\xEF\xBF\xBD"));                       // U+FFFD itself
  CHECK(isValidUtf8("\xF4\x8F\xBF\xBF"));                   // U+10FFFF
  CHECK(isValidUtf8("\xED\x9F\xBF"));                       // U+D7FF
  CHECK_FALSE(isValidUtf8("\xFF"));
  CHECK_FALSE(isValidUtf8("abcdefgh\x80"));      // a lone continuation byte
  CHECK_FALSE(isValidUtf8("\xC0\x80"));          // overlong NUL
  CHECK_FALSE(isValidUtf8("\xC1\xBF"));          // overlong
  CHECK_FALSE(isValidUtf8("\xE0\x9F\xBF"));      // overlong 3-byte
  CHECK_FALSE(isValidUtf8("\xF0\x8F\xBF\xBF"));  // overlong 4-byte
  CHECK_FALSE(isValidUtf8("\xED\xA0\x80"));      // a surrogate
  CHECK_FALSE(isValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  CHECK_FALSE(isValidUtf8("\xF5\x80\x80\x80"));
  CHECK_FALSE(isValidUtf8("caf\xC3"));     // truncated at the end
  CHECK_FALSE(isValidUtf8("\xE2\x82 x"));  // truncated in the middle
  CHECK_FALSE(isValidUtf8("latin-1 caf\xE9 au lait"));
}

// nlohmann::json throws type_error 316 on exactly the strings it would replace.
bool nlohmannAccepts(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

TEST_CASE("utf8: the same verdict as nlohmann::json's dump (property)") {
  CHECK(rc::check([](const std::string& s) { RC_ASSERT(isValidUtf8(s) == nlohmannAccepts(s)); }));
  // Arbitrary strings are rarely well-formed: also mix valid sequences with random bytes.
  CHECK(rc::check([](const std::vector<int>& pieces) {
    static const std::string kPieces[] = {
        "a",    "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xED\x9F\xBF", "\xF4\x8F\xBF\xBF",
        "\x80", "\xC3",     "\xED\xA0\x80", "\xE0\xA0",         "01234567"};
    std::string s;
    for (int p : pieces) s += kPieces[static_cast<unsigned>(p) % std::size(kPieces)];
    RC_ASSERT(isValidUtf8(s) == nlohmannAccepts(s));
  }));
}

}  // namespace
}  // namespace sluice

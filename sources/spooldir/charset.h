#pragma once
// Conversion of one line from an input charset to UTF-8 with iconv (glibc). Lines are cut on the
// byte '\n' before conversion, so the input charset must keep ASCII's newline (ISO-8859-*,
// Windows-125x, Shift_JIS, GB18030, EUC-*; not UTF-16 or UTF-32). Positions stay byte offsets
// in the original file.

#include <iconv.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace sluice::spool {

class Utf8Converter {
 public:
  Utf8Converter() = default;
  ~Utf8Converter();
  Utf8Converter(const Utf8Converter&) = delete;
  Utf8Converter& operator=(const Utf8Converter&) = delete;

  // Opens a converter from `charset`; false with `error` when iconv does not know it.
  bool open(const std::string& charset, std::string& error);
  bool isOpen() const { return cd_ != reinterpret_cast<iconv_t>(-1); }

  // Converts `in` into `out` (replacing its content). An invalid or incomplete sequence becomes
  // U+FFFD (one per offending byte) with `replace`, counted in `replaced`; without `replace`
  // the conversion stops and returns false.
  bool convert(std::string_view in, std::string& out, bool replace, uint64_t& replaced);

 private:
  iconv_t cd_ = reinterpret_cast<iconv_t>(-1);
};

}  // namespace sluice::spool

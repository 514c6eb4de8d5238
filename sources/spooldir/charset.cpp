#include "sources/spooldir/charset.h"

#include <cerrno>
#include <cstring>

namespace sluice::spool {

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD in UTF-8
}  // namespace

Utf8Converter::~Utf8Converter() {
  if (isOpen()) iconv_close(cd_);
}

bool Utf8Converter::open(const std::string& charset, std::string& error) {
  if (isOpen()) iconv_close(cd_);
  cd_ = iconv_open("UTF-8", charset.c_str());
  if (!isOpen()) {
    error = "unknown charset '" + charset + "': " + std::strerror(errno);
    return false;
  }
  return true;
}

bool Utf8Converter::convert(std::string_view in, std::string& out, bool replace,
                            uint64_t& replaced) {
  out.clear();
  iconv(cd_, nullptr, nullptr, nullptr, nullptr);  // initial shift state for every line
  out.resize(in.size() * 2 + 16);
  char* src = const_cast<char*>(in.data());
  size_t src_left = in.size();
  size_t used = 0;
  while (true) {
    char* dst = out.data() + used;
    size_t dst_left = out.size() - used;
    size_t rc = src_left == 0 ? iconv(cd_, nullptr, nullptr, &dst, &dst_left)
                              : iconv(cd_, &src, &src_left, &dst, &dst_left);
    used = out.size() - dst_left;
    if (rc != static_cast<size_t>(-1)) {
      if (src_left == 0) break;
      continue;
    }
    if (errno == E2BIG) {
      out.resize(out.size() * 2);
      continue;
    }
    // EILSEQ (invalid) or EINVAL (incomplete at the end of the line): one byte is replaced.
    if (!replace) return false;
    if (out.size() - used < kReplacement.size()) out.resize(out.size() * 2);
    std::memcpy(out.data() + used, kReplacement.data(), kReplacement.size());
    used += kReplacement.size();
    ++replaced;
    ++src;
    --src_left;
    iconv(cd_, nullptr, nullptr, nullptr, nullptr);
    if (src_left == 0) break;
  }
  out.resize(used);
  return true;
}

}  // namespace sluice::spool

// SHA-256 (FIPS 180-4), for content digests of models, calibration sets and candidate keys.
//
//   Sha256 h; h.Update(bytes); std::string hex = h.HexDigest();
#ifndef QS_COMMON_SHA256_H_
#define QS_COMMON_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace qs {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  void Update(const std::string& s) { Update(s.data(), s.size()); }
  // Finishes the hash; the object must not be updated afterwards.
  std::string HexDigest();

 private:
  void Block(const uint8_t* block);
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Hex SHA-256 of `s`.
std::string Sha256Hex(const std::string& s);

}  // namespace qs

#endif  // QS_COMMON_SHA256_H_

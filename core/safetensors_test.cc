#include "core/safetensors.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "common/file_util.h"

namespace qs::core {
namespace {

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("qs_st_" + name)).string();
}

std::string WithHeader(const std::string& header, const std::string& data) {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

Status ParseStatus(const std::string& bytes) {
  return SafetensorsFile::Parse(bytes, "test.safetensors").status();
}

TEST(SafetensorsTest, RoundTripsEveryDtypeWithMetadata) {
  std::map<std::string, torch::Tensor> tensors = {
      {"f32", torch::randn({3, 4})},
      {"f16", torch::randn({5}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"f64", torch::randn({2}, torch::kFloat64)},
      {"i64", torch::arange(6).reshape({2, 3})},
      {"i32", torch::arange(4, torch::kInt32)},
      {"i8", torch::arange(-3, 3, torch::kInt8)},
      {"u8", torch::arange(7, torch::kUInt8)},
      {"bool", torch::tensor({true, false})},
      {"empty", torch::empty({0, 3})},
  };
  const std::string path = TempPath("roundtrip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->metadata().at("format"), "pt");
  for (const auto& [name, t] : tensors) {
    auto back = file->Tensor(name);
    ASSERT_TRUE(back.ok()) << name;
    EXPECT_EQ(back->scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(*back, t)) << name;
  }
  // Deterministic bytes.
  const std::string path2 = TempPath("roundtrip2.safetensors");
  ASSERT_TRUE(WriteSafetensors(path2, tensors, {{"format", "pt"}}).ok());
  EXPECT_EQ(*ReadFileBytes(path), *ReadFileBytes(path2));
  std::remove(path.c_str());
  std::remove(path2.c_str());
}

TEST(SafetensorsTest, MissingFileAndMissingTensorAreNotFound) {
  EXPECT_EQ(SafetensorsFile::Open(TempPath("nope.safetensors")).status().code(),
            StatusCode::kNotFound);
  auto file = SafetensorsFile::Parse(
      WithHeader(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
      "x");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto missing = file->Tensor("blocks.0.attn.qkv.weight");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("blocks.0.attn.qkv.weight"), std::string::npos);
}

TEST(SafetensorsTest, TruncatedFilesAreDataLoss) {
  EXPECT_EQ(ParseStatus("").code(), StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus("abc").code(), StatusCode::kDataLoss);
  // Header length larger than the file.
  std::string full = WithHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                std::string(8, '\0'));
  EXPECT_EQ(ParseStatus(full.substr(0, 20)).code(), StatusCode::kDataLoss);
  // Data cut short: offsets now point past the end.
  auto cut = ParseStatus(full.substr(0, full.size() - 3));
  EXPECT_EQ(cut.code(), StatusCode::kDataLoss);
  EXPECT_NE(cut.message().find("'a'"), std::string::npos);
}

TEST(SafetensorsTest, OpenChecksTheHeaderBeforeReadingTheFile) {
  // Once a file was read whole before its header was looked at: /dev/zero ran until memory gave
  // out, and a large junk file cost its size in memory before the error.
  auto dev = SafetensorsFile::Open("/dev/zero");
  EXPECT_EQ(dev.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dev.status().message().find("not a regular file"), std::string::npos);
  const std::string junk = TempPath("junk.safetensors");
  {
    // 64 MiB of 0xff, sparse where the filesystem allows: the header length it claims is huge.
    std::FILE* f = std::fopen(junk.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    const std::string block(1 << 20, '\xff');
    for (int i = 0; i < 64; ++i) std::fwrite(block.data(), 1, block.size(), f);
    std::fclose(f);
  }
  auto s = SafetensorsFile::Open(junk).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("exceeds the file (67108864 bytes)"), std::string::npos) << s.ToString();
  const std::string text = TempPath("text.safetensors");
  ASSERT_TRUE(WriteFileAtomically(text, WithHeader("{not json", std::string(1000, 'x'))).ok());
  s = SafetensorsFile::Open(text).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("malformed header"), std::string::npos);
  std::remove(junk.c_str());
  std::remove(text.c_str());
}

TEST(SafetensorsTest, MalformedHeadersAreDataLoss) {
  EXPECT_EQ(ParseStatus(WithHeader("{not json", "")).code(), StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus(WithHeader("[1,2]", "")).code(), StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus(WithHeader(R"({"a":3})", "")).code(), StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus(WithHeader(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})",
                                   std::string(4, '\0')))
                .code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus(WithHeader(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                                   std::string(4, '\0')))
                .code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus(WithHeader(R"({"__metadata__":{"k":1}})", "")).code(),
            StatusCode::kDataLoss);
}

TEST(SafetensorsTest, HeadersThatLieAboutOffsetsAreRejected) {
  const std::string data(16, '\0');
  // Size disagrees with dtype × shape.
  auto size = ParseStatus(
      WithHeader(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data));
  EXPECT_EQ(size.code(), StatusCode::kDataLoss);
  EXPECT_NE(size.message().find("'w'"), std::string::npos);
  // Begin after end.
  EXPECT_EQ(ParseStatus(WithHeader(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})",
                                   data))
                .code(),
            StatusCode::kDataLoss);
  // Outside the data section.
  EXPECT_EQ(ParseStatus(WithHeader(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                                   data))
                .code(),
            StatusCode::kDataLoss);
  // Two tensors sharing bytes.
  auto overlap = ParseStatus(WithHeader(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      data));
  EXPECT_EQ(overlap.code(), StatusCode::kDataLoss);
  EXPECT_NE(overlap.message().find("overlaps"), std::string::npos);
  // An empty tensor between two overlapping ones must not hide the overlap.
  auto hidden = ParseStatus(WithHeader(
      R"({"a":{"dtype":"U8","shape":[12],"data_offsets":[0,12]},)"
      R"("e":{"dtype":"U8","shape":[0],"data_offsets":[6,6]},)"
      R"("c":{"dtype":"U8","shape":[2],"data_offsets":[8,10]}})",
      data));
  EXPECT_EQ(hidden.code(), StatusCode::kDataLoss);
  // Offsets that are not unsigned integers.
  EXPECT_EQ(ParseStatus(WithHeader(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})",
                                   data))
                .code(),
            StatusCode::kDataLoss);
}

TEST(SafetensorsTest, BoolBytesOtherThanZeroOrOneReadAsTrue) {
  auto file = SafetensorsFile::Parse(
      WithHeader(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
                 std::string("\x00\x01\x07", 3)),
      "x");
  ASSERT_TRUE(file.ok());
  auto m = file->Tensor("m");
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(torch::equal(*m, torch::tensor({false, true, true})));
}

TEST(SafetensorsTest, UnknownDtypeIsInvalidArgument) {
  auto s = ParseStatus(
      WithHeader(R"({"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", "\0"));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("F8_E4M3"), std::string::npos);
}

}  // namespace
}  // namespace qs::core

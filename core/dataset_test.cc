#include "core/dataset.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <limits>
#include <set>

#include "common/file_util.h"
#include "core/safetensors.h"

namespace qs::core {
namespace {

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("qs_ds_" + name)).string();
}

std::string Idx(std::vector<uint32_t> dims, const std::string& data) {
  std::string out = {0, 0, 0x08, static_cast<char>(dims.size())};
  for (uint32_t d : dims) {
    for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((d >> (8 * i)) & 0xff));
  }
  return out + data;
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), bytes.size()), static_cast<int>(bytes.size()));
  gzclose(f);
}

TEST(IdxTest, ReadsPlainAndGzipFiles) {
  std::string data = {1, 2, 3, 4, 5, 6};
  const std::string plain = TempPath("plain.idx");
  ASSERT_TRUE(WriteFileAtomically(plain, Idx({1, 2, 3}, data)).ok());
  auto t = ReadIdxFile(plain);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->sizes().vec(), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(t->flatten()[5].item<int>(), 6);
  const std::string gz = TempPath("labels.idx.gz");
  WriteGzip(gz, Idx({6}, data));
  auto g = ReadIdxFile(gz);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->numel(), 6);
  // A zero dimension is an empty tensor (fuzz_idx found the copy of no bytes from a null
  // pointer, undefined behaviour that the sanitized suite reports).
  ASSERT_TRUE(WriteFileAtomically(plain, Idx({0, 28, 28}, "")).ok());
  auto empty = ReadIdxFile(plain);
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(empty->sizes().vec(), (std::vector<int64_t>{0, 28, 28}));
  std::remove(plain.c_str());
  std::remove(gz.c_str());
}

TEST(IdxTest, RejectsBadMagicAndWrongSizes) {
  const std::string path = TempPath("bad.idx");
  ASSERT_TRUE(WriteFileAtomically(path, "\x01\x02\x08\x01").ok());
  EXPECT_EQ(ReadIdxFile(path).status().code(), StatusCode::kDataLoss);
  ASSERT_TRUE(WriteFileAtomically(path, Idx({10}, "abc")).ok());
  auto s = ReadIdxFile(path).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("says 10"), std::string::npos);
  EXPECT_EQ(ReadIdxFile(TempPath("absent.idx")).status().code(), StatusCode::kNotFound);
  // Dimensions whose product wraps around 2^64 must not pass the size check.
  ASSERT_TRUE(
      WriteFileAtomically(path, Idx({0xffffffffu, 0xffffffffu, 0x00000001u}, std::string(16, 'a')))
          .ok());
  EXPECT_EQ(ReadIdxFile(path).status().code(), StatusCode::kResourceExhausted);
  std::remove(path.c_str());
}

TEST(IdxTest, ReadsNoMoreThanTheHeaderSaysWhateverTheFileHolds) {
  // Once the whole file was decompressed before the header was read: 1 MB of gzip cost 2.3 GB.
  // Now a header declaring 10 bytes stops the read after 11, and one declaring 2 GiB over a
  // few bytes fails after those few.
  const std::string bomb = TempPath("bomb.idx.gz");
  WriteGzip(bomb, Idx({10}, std::string(20 << 20, '\0')));
  auto s = ReadIdxFile(bomb).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("more data bytes than its header says"), std::string::npos);
  const std::string liar = TempPath("liar.idx");
  ASSERT_TRUE(WriteFileAtomically(liar, Idx({0x8000, 0x10000}, "abc")).ok());
  s = ReadIdxFile(liar).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("holds 3 data bytes"), std::string::npos);
  // A damaged gzip stream reports zlib's reason.
  std::string damaged;
  {
    WriteGzip(bomb, Idx({6}, "abcdef"));
    auto bytes = ReadFileBytes(bomb);
    ASSERT_TRUE(bytes.ok());
    damaged = *bytes;
  }
  damaged[damaged.size() / 2] ^= 0x55;
  damaged.resize(damaged.size() - 3);
  ASSERT_TRUE(WriteFileAtomically(bomb, damaged).ok());
  EXPECT_EQ(ReadIdxFile(bomb).status().code(), StatusCode::kDataLoss);
  std::remove(bomb.c_str());
  std::remove(liar.c_str());
}

TEST(DatasetTest, FashionMnistTestSplitLoads) {
  auto d = LoadDataset("fashion-mnist:test");
  ASSERT_TRUE(d.ok()) << d.status().ToString() << " (scripts/setup.sh installs it)";
  EXPECT_EQ(d->images.sizes().vec(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(d->labels.min().item<int64_t>(), 0);
  EXPECT_EQ(d->labels.max().item<int64_t>(), 9);
  EXPECT_GE(d->images.min().item<float>(), 0.0f);
  EXPECT_LE(d->images.max().item<float>(), 1.0f);
  // Every class is present 1000 times in the test split.
  EXPECT_EQ(d->labels.bincount().min().item<int64_t>(), 1000);
}

TEST(DatasetTest, UnknownSourcesAreInvalidArgument) {
  EXPECT_EQ(LoadDataset("fashion-mnist:val").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadDataset("imagenet:train").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadDataset(TempPath("none.safetensors")).status().code(), StatusCode::kNotFound);
}

TEST(DatasetTest, SafetensorsDatasetLoadsAndIsChecked) {
  const std::string path = TempPath("data.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"images", torch::rand({6, 3, 8, 8})},
                                      {"labels", torch::arange(6)}})
                  .ok());
  auto d = LoadDataset(path);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->size(), 6);
  ASSERT_TRUE(WriteSafetensors(path, {{"images", torch::rand({6, 3, 8, 8})},
                                      {"labels", torch::arange(6, torch::kInt32)}})
                  .ok());
  EXPECT_EQ(LoadDataset(path).status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteSafetensors(path, {{"images", torch::rand({6, 3, 8, 8})}}).ok());
  auto missing = LoadDataset(path).status();
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("labels"), std::string::npos);
  std::remove(path.c_str());
}

TEST(DatasetTest, SubsetsAreSeededDistinctAndStable) {
  Dataset d;
  d.images = torch::arange(1000, torch::kFloat32).reshape({1000, 1, 1, 1});
  d.labels = torch::arange(1000);
  auto a = DrawSubset(d, 100, 7), b = DrawSubset(d, 100, 7), c = DrawSubset(d, 100, 8);
  EXPECT_TRUE(torch::equal(a.labels, b.labels));
  EXPECT_FALSE(torch::equal(a.labels, c.labels));
  std::set<int64_t> unique;
  for (int64_t i = 0; i < a.size(); ++i) unique.insert(a.labels[i].item<int64_t>());
  EXPECT_EQ(unique.size(), 100u);
  EXPECT_TRUE(torch::equal(a.images.flatten().to(torch::kLong), a.labels));
  // A larger draw with the same seed extends a smaller one (partial Fisher-Yates).
  EXPECT_EQ(DrawSubset(d, 1, 0).labels[0].item<int64_t>(), DrawSubset(d, 5, 0).labels[0].item<int64_t>());
  EXPECT_EQ(DrawSubset(d, 5000, 0).size(), 1000);
  EXPECT_EQ(Head(d, 10).size(), 10);
  EXPECT_NE(DatasetDigest(a), DatasetDigest(c));
  EXPECT_EQ(DatasetDigest(a), DatasetDigest(b));
}

TEST(DatasetTest, NormalizationChecksShapeAndUsesMeanStd) {
  Dataset d;
  d.images = torch::full({2, 1, 4, 4}, 0.75);
  d.labels = torch::zeros({2}, torch::kLong);
  ViTConfig c;
  c.in_chans = 1;
  c.img_size = 4;
  c.mean = {0.5};
  c.std = {0.25};
  c.num_classes = 10;
  auto x = NormalizeImages(d, c);
  ASSERT_TRUE(x.ok());
  EXPECT_FLOAT_EQ(x->max().item<float>(), 1.0f);
  c.img_size = 28;
  auto bad = NormalizeImages(d, c);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("28"), std::string::npos);
  // Once each of these measured to a number and exited 0.
  c.img_size = 4;
  Dataset nan = d;
  nan.images = d.images.clone();
  nan.images[1][0][2][2] = std::numeric_limits<float>::quiet_NaN();
  auto s = NormalizeImages(nan, c).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("NaN"), std::string::npos);
  Dataset labels = d;
  labels.labels = torch::tensor({0, 1000}, torch::kLong);
  c.num_classes = 10;
  s = NormalizeImages(labels, c).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("0..1000"), std::string::npos) << s.ToString();
  labels.labels = torch::tensor({-1, 3}, torch::kLong);
  EXPECT_EQ(NormalizeImages(labels, c).status().code(), StatusCode::kInvalidArgument);
  Dataset empty = d;
  empty.images = torch::zeros({0, 1, 4, 4});
  empty.labels = torch::zeros({0}, torch::kLong);
  EXPECT_EQ(NormalizeImages(empty, c).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qs::core

#include "core/image_set.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/file_util.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "core/test_models.h"

namespace qs::core {
namespace {

namespace fs = std::filesystem;

// A fresh directory per process and test.
std::string TestDir(const std::string& name) {
  auto dir = fs::temp_directory_path() /
             ("qs_image_set_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

ViTConfig FashionConfig() {
  ViTConfig c = testing::TinyConfig();
  c.img_size = 28;
  c.patch_size = 7;
  c.num_classes = 10;
  return c;
}

ViTConfig RgbConfig(int64_t classes) {
  ViTConfig c = testing::TinyConfig();
  c.in_chans = 3;
  c.mean = {0.5, 0.5, 0.5};
  c.std = {0.25, 0.25, 0.25};
  c.num_classes = classes;
  return c;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

// A 20×12 RGB JPEG whose pixels all hold `value` (give or take the codec's rounding).
std::string SolidJpeg(int value) {
  return EncodeJpeg(torch::full({12, 20, 3}, value, torch::kUInt8), 100).value();
}

std::map<int64_t, int64_t> ClassCounts(const ImageSet& set) {
  std::map<int64_t, int64_t> counts;
  auto labels = set.labels();
  for (int64_t i = 0; i < labels.size(0); ++i) ++counts[labels[i].item<int64_t>()];
  return counts;
}

TEST(ImageSetTest, SlicesFollowPythonSemantics) {
  auto parsed = ParseSourceText("fashion-mnist:test[5000:]");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->base, "fashion-mnist:test");
  EXPECT_EQ(*parsed->begin, 5000);
  EXPECT_FALSE(parsed->end.has_value());
  EXPECT_EQ(ParseSourceText("imagefolder:/a[b]/c").value().base, "imagefolder:/a[b]/c");
  for (const char* bad : {"x[1]", "x[1:2:3]", "x[a:]", "[1:2]", "x[:1e3]"}) {
    EXPECT_EQ(ParseSourceText(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  const auto config = FashionConfig();
  auto tail = OpenImageSet("fashion-mnist:test[5000:]", config);
  ASSERT_TRUE(tail.ok()) << tail.status().ToString();
  EXPECT_EQ(tail->size(), 5000);
  EXPECT_EQ(tail->indices.front(), 5000);
  auto last = OpenImageSet("fashion-mnist:test[-100:]", config);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->indices.front(), 9900);
  EXPECT_EQ(OpenImageSet("fashion-mnist:test[7:7]", config).status().code(),
            StatusCode::kInvalidArgument);
  auto wrong_model = OpenImageSet("fashion-mnist:test", RgbConfig(10));
  EXPECT_EQ(wrong_model.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_model.status().message().find("[1, 28, 28]"), std::string::npos);
  auto few_classes = FashionConfig();
  few_classes.num_classes = 5;
  auto labels = OpenImageSet("fashion-mnist:test", few_classes);
  EXPECT_EQ(labels.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(labels.status().message().find("5 classes"), std::string::npos);
}

TEST(ImageSetTest, BalancedDrawsTakeEveryClassEquallyAndRepeat) {
  auto all = OpenImageSet("fashion-mnist:test", FashionConfig());
  ASSERT_TRUE(all.ok());
  auto a = DrawImages(*all, 105, 3, Sampling::kBalanced);
  auto b = DrawImages(*all, 105, 3, Sampling::kBalanced);
  auto c = DrawImages(*all, 105, 4, Sampling::kBalanced);
  EXPECT_EQ(a.indices, b.indices);
  EXPECT_NE(a.indices, c.indices);
  ASSERT_EQ(a.size(), 105);
  EXPECT_TRUE(std::is_sorted(a.indices.begin(), a.indices.end()));
  EXPECT_EQ(std::set<int64_t>(a.indices.begin(), a.indices.end()).size(), 105u);
  for (const auto& [label, n] : ClassCounts(a)) EXPECT_TRUE(n == 10 || n == 11) << label;
  // The uniform draw is the pre-balancing one: the same images as DrawSubset.
  auto legacy = DrawSubset(*LoadDataset("fashion-mnist:test"), 64, 9);
  auto uniform = Materialize(DrawImages(*all, 64, 9, Sampling::kUniform));
  ASSERT_TRUE(uniform.ok());
  EXPECT_TRUE(torch::equal(uniform->images, legacy.images));
  EXPECT_EQ(DatasetDigest(*uniform), DatasetDigest(legacy));
  EXPECT_EQ(DrawImages(*all, 0, 1, Sampling::kBalanced).size(), 10000);
  // Asking for more than there is takes all of them and says so (it used to be silent).
  auto more = DrawImages(*all, 1000000000000, 1, Sampling::kBalanced);
  EXPECT_EQ(more.size(), 10000);
  EXPECT_NE(more.description.find("[all 10000: 1000000000000 asked]"), std::string::npos)
      << more.description;
  EXPECT_EQ(DrawImages(*all, 10000, 1, Sampling::kBalanced).description, all->description);
}

TEST(ImageSetTest, SmallClassesGiveTheirShareToTheOthers) {
  // Labels sorted by class as an ImageNet folder is: 3 of class 0, 50 of class 1, 50 of class 2.
  const std::string dir = TestDir("skewed");
  auto labels = torch::cat({torch::zeros({3}), torch::ones({50}), torch::full({50}, 2)})
                    .to(torch::kInt64);
  auto images = torch::rand({103, 1, 28, 28});
  ASSERT_TRUE(WriteSafetensors(dir + "/set.safetensors", {{"images", images}, {"labels", labels}})
                  .ok());
  auto set = OpenImageSet(dir + "/set.safetensors", FashionConfig());
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  auto drawn = DrawImages(*set, 30, 0, Sampling::kBalanced);
  auto counts = ClassCounts(drawn);
  EXPECT_EQ(counts[0], 3);
  EXPECT_EQ(counts[1] + counts[2], 27);
  EXPECT_LE(std::abs(counts[1] - counts[2]), 1);
  // The first 30 would be 3 of class 0 and 27 of class 1; a head is what balancing avoids.
  EXPECT_GT(counts[2], 0);
}

TEST(ImageSetTest, OverlappingSetsAreRefusedByName) {
  const auto config = FashionConfig();
  auto a = *OpenImageSet("fashion-mnist:test[:5000]", config);
  auto b = *OpenImageSet("fashion-mnist:test[5000:]", config);
  auto c = *OpenImageSet("fashion-mnist:test[4000:6000]", config);
  auto train = *OpenImageSet("fashion-mnist:train[:5000]", config);
  EXPECT_TRUE(CheckDisjoint({{"validation", &a}, {"test", &b}, {"calibration", &train}}).ok());
  auto s = CheckDisjoint({{"validation", &a}, {"test", &c}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("share 1000"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("validation"), std::string::npos);
  EXPECT_NE(s.message().find("test"), std::string::npos);
}

TEST(ImageSetTest, ImageFolderOrderLabelsAndReads) {
  const std::string dir = TestDir("folder");
  // Classes in sorted-name order, files sorted within a class (subfolders included).
  WriteFile(dir + "/b_cat/2.jpg", SolidJpeg(20));
  WriteFile(dir + "/b_cat/1.JPEG", SolidJpeg(10));
  WriteFile(dir + "/a_dog/x.jpg", SolidJpeg(30));
  WriteFile(dir + "/a_dog/sub/y.jpeg", SolidJpeg(40));
  WriteFile(dir + "/a_dog/notes.txt", "not an image");
  auto set = OpenImageSet("imagefolder:" + dir, RgbConfig(2));
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  ASSERT_EQ(set->size(), 4);
  EXPECT_TRUE(torch::equal(set->labels(), torch::tensor({0, 0, 1, 1}, torch::kInt64)));
  auto data = Materialize(*set);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->images.sizes().vec(), (std::vector<int64_t>{4, 3, 16, 16}));
  // A solid image stays solid through resize and crop: the pixel values give the file order,
  // torchvision's sorted(os.walk(...)): a folder's own files before its subfolders'.
  const std::vector<int> expected = {30, 40, 10, 20};  // a_dog/x, a_dog/sub/y, b_cat/1, b_cat/2
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(data->images[i].mean().item<double>(), expected[i] / 255.0, 1.5 / 255) << i;
  }
  // Streaming gives the same images in batches.
  BatchReader reader(*set, 3);
  std::vector<torch::Tensor> parts;
  while (true) {
    auto batch = reader.Next();
    ASSERT_TRUE(batch.ok());
    if (!batch->has_value()) break;
    parts.push_back((*batch)->images);
  }
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_TRUE(torch::equal(at::cat(parts), data->images));
}

TEST(ImageSetTest, BadFoldersAndListsAreNamed) {
  const auto config = RgbConfig(3);
  EXPECT_EQ(OpenImageSet("imagefolder:/no/such/dir", config).status().code(),
            StatusCode::kNotFound);
  const std::string dir = TestDir("bad");
  WriteFile(dir + "/empty_class/readme.txt", "x");
  WriteFile(dir + "/ok/a.jpg", SolidJpeg(1));
  auto empty = OpenImageSet("imagefolder:" + dir, config);
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("empty_class"), std::string::npos);
  WriteFile(dir + "/empty_class/a.bmp", "BM");
  auto bmp = OpenImageSet("imagefolder:" + dir, config);
  EXPECT_NE(bmp.status().message().find("a.bmp"), std::string::npos);

  // A damaged file fails the read that reaches it, naming the file, without a crash.
  const std::string broken = TestDir("broken");
  WriteFile(broken + "/c/good.jpg", SolidJpeg(5));
  WriteFile(broken + "/c/torn.jpg", SolidJpeg(6).substr(0, 200));
  auto set = OpenImageSet("imagefolder:" + broken, config);
  ASSERT_TRUE(set.ok());
  BatchReader reader(*set, 1);
  ASSERT_TRUE(reader.Next().ok());
  auto torn = reader.Next();
  EXPECT_FALSE(torn.ok());
  EXPECT_NE(torn.status().message().find("torn.jpg"), std::string::npos);
  EXPECT_FALSE(reader.Next().ok());  // the error stays: not mistaken for the end of the set
  // Materializing more than the bound is refused before anything else is read.
  auto too_big = Materialize(*set, 1000);
  EXPECT_EQ(too_big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(too_big.status().message().find("draw fewer"), std::string::npos);

  // A folder that links back to its parent is a loop, refused by name rather than walked.
  const std::string loop = TestDir("loop");
  WriteFile(loop + "/c/a.jpg", SolidJpeg(3));
  fs::create_directory_symlink("..", loop + "/c/back");
  auto looped = OpenImageSet("imagefolder:" + loop, config);
  EXPECT_EQ(looped.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(looped.status().message().find("symlink loop"), std::string::npos);

  const std::string list = TestDir("list");
  WriteFile(list + "/img/one.jpg", SolidJpeg(7));
  WriteFile(list + "/files.txt", "# path label\nimg/one.jpg 2\n\n" + list + "/img/one.jpg 1\n");
  auto listed = OpenImageSet("filelist:" + list + "/files.txt", config);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_TRUE(torch::equal(listed->labels(), torch::tensor({2, 1}, torch::kInt64)));
  WriteFile(list + "/missing.txt", "img/one.jpg 0\nimg/two.jpg 1\n");
  auto missing = OpenImageSet("filelist:" + list + "/missing.txt", config);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("missing.txt:2"), std::string::npos);
  WriteFile(list + "/label.txt", "img/one.jpg cat\n");
  EXPECT_EQ(OpenImageSet("filelist:" + list + "/label.txt", config).status().code(),
            StatusCode::kInvalidArgument);
  WriteFile(list + "/range.txt", "img/one.jpg 3\n");
  EXPECT_EQ(OpenImageSet("filelist:" + list + "/range.txt", config).status().code(),
            StatusCode::kInvalidArgument);
  WriteFile(list + "/long.txt", "img/one.jpg 0\n" + std::string(100000, 'x') + " 1\n");
  auto long_line = OpenImageSet("filelist:" + list + "/long.txt", config);
  EXPECT_EQ(long_line.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(long_line.status().message().find("long.txt:2"), std::string::npos);
  WriteFile(list + "/last.txt", "img/one.jpg 0\nimg/one.jpg 1");  // no final newline
  auto last = OpenImageSet("filelist:" + list + "/last.txt", config);
  ASSERT_TRUE(last.ok()) << last.status().ToString();
  EXPECT_EQ(last->size(), 2);
}

}  // namespace
}  // namespace qs::core

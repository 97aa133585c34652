#include "core/image_io.h"

#include <gtest/gtest.h>
#include <unistd.h>

// clang-format off
#include <cstdio>  // first: jpeglib.h uses FILE and size_t without declaring them
#include <jpeglib.h>
// clang-format on
#include <png.h>

#include <cmath>
#include <csetjmp>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "common/file_util.h"

namespace qs::core {
namespace {

// Encodes `pixels` (rows of width * channels samples; 16-bit samples big-endian as PNG stores them)
// with libpng. `header_only` stops after the header, for size checks on huge images.
std::string EncodePng(int width, int height, int color_type, int bit_depth,
                      const std::vector<uint8_t>& pixels,
                      const std::vector<png_color>& palette = {}, bool interlace = false,
                      bool header_only = false) {
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    ADD_FAILURE() << "libpng could not write the test image";
    return "";
  }
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, size_t n) {
        static_cast<std::string*>(png_get_io_ptr(p))->append(reinterpret_cast<char*>(data), n);
      },
      nullptr);
  png_set_IHDR(png, info, width, height, bit_depth, color_type,
               interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty()) {
    png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
  }
  png_write_info(png, info);
  if (!header_only) {
    const size_t row_bytes = png_get_rowbytes(png, info);
    std::vector<png_bytep> rows(height);
    for (int y = 0; y < height; ++y) {
      rows[y] = const_cast<png_bytep>(pixels.data()) + y * row_bytes;
    }
    png_write_image(png, rows.data());
    png_write_end(png, info);
  }
  png_destroy_write_struct(&png, &info);
  return out;
}

// Encodes 8-bit samples with libjpeg at quality 100 (components 1, 3 as RGB, or 4 as CMYK).
std::string JpegBytes(int width, int height, int components, const std::vector<uint8_t>& pixels) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = components;
  cinfo.in_color_space = components == 1 ? JCS_GRAYSCALE : components == 3 ? JCS_RGB : JCS_CMYK;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 100, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(pixels.data()) + cinfo.next_scanline * width * components;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buffer), size);
  free(buffer);
  return out;
}

// A smooth, non-constant test picture: sample (y, x, c).
std::vector<uint8_t> Gradient(int width, int height, int channels) {
  std::vector<uint8_t> v;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c)
        v.push_back(static_cast<uint8_t>((x * 7 + y * 3 + c * 50) % 256));
    }
  }
  return v;
}

std::vector<uint8_t> Bytes(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<uint8_t>(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel());
}

// The transform's output back in 0..255, [C, S, S] flattened.
std::vector<int> Pixels255(const torch::Tensor& t) {
  auto r = (t * 255).round().to(torch::kInt32).contiguous();
  return std::vector<int>(r.data_ptr<int32_t>(), r.data_ptr<int32_t>() + r.numel());
}

// `v` repeated `times` times.
std::vector<int> Repeat(const std::vector<int>& v, int times) {
  std::vector<int> out;
  for (int i = 0; i < times; ++i) out.insert(out.end(), v.begin(), v.end());
  return out;
}

torch::Tensor MakeImage(int height, int width, int channels, const std::vector<uint8_t>& v) {
  return torch::tensor(std::vector<int64_t>(v.begin(), v.end()))
      .to(torch::kUInt8)
      .reshape({height, width, channels});
}

class ImageIoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One directory per process: ctest runs these tests as parallel processes.
    dir_ = new std::string(
        (std::filesystem::temp_directory_path() / ("qs_image_io_test_" + std::to_string(getpid())))
            .string());
    std::filesystem::create_directories(*dir_);
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  static std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path = *dir_ + "/" + name;
    EXPECT_TRUE(WriteFileAtomically(path, bytes).ok());
    return path;
  }
  static std::string* dir_;
};
std::string* ImageIoTest::dir_ = nullptr;

TEST_F(ImageIoTest, ParsesInterpolationNames) {
  for (auto i : {Interpolation::kNearest, Interpolation::kBilinear, Interpolation::kBicubic}) {
    auto parsed = ParseInterpolation(InterpolationName(i));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, i);
  }
  auto bad = ParseInterpolation("lanczos");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("nearest, bilinear or bicubic"), std::string::npos);
}

TEST_F(ImageIoTest, PngRoundTripsKnownPixels) {
  const int w = 5, h = 3;
  const std::vector<uint8_t> rgb = Gradient(w, h, 3);
  const std::string path = Write("rgb.png", EncodePng(w, h, PNG_COLOR_TYPE_RGB, 8, rgb));
  auto decoded = DecodeImageFile(path, 3);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->sizes(), (std::vector<int64_t>{h, w, 3}));
  EXPECT_EQ(Bytes(*decoded), rgb);

  // Interlaced: the same pixels.
  auto interlaced = DecodeImage(EncodePng(w, h, PNG_COLOR_TYPE_RGB, 8, rgb, {}, true), 3, "il");
  ASSERT_TRUE(interlaced.ok()) << interlaced.status().ToString();
  EXPECT_EQ(Bytes(*interlaced), rgb);

  // Alpha is dropped, not composited.
  const std::vector<uint8_t> rgba = Gradient(w, h, 4);
  auto no_alpha = DecodeImage(EncodePng(w, h, PNG_COLOR_TYPE_RGBA, 8, rgba), 3, "rgba");
  ASSERT_TRUE(no_alpha.ok()) << no_alpha.status().ToString();
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) EXPECT_EQ(Bytes(*no_alpha)[3 * i + c], rgba[4 * i + c]);
  }

  // Gray and gray+alpha: one channel as stored, or replicated to RGB.
  const std::vector<uint8_t> gray = Gradient(w, h, 1);
  auto g1 = DecodeImage(EncodePng(w, h, PNG_COLOR_TYPE_GRAY, 8, gray), 1, "gray");
  ASSERT_TRUE(g1.ok()) << g1.status().ToString();
  EXPECT_EQ(Bytes(*g1), gray);
  auto g3 = DecodeImage(EncodePng(w, h, PNG_COLOR_TYPE_GRAY, 8, gray), 3, "gray");
  ASSERT_TRUE(g3.ok()) << g3.status().ToString();
  std::vector<uint8_t> gray3;
  for (uint8_t v : gray) gray3.insert(gray3.end(), {v, v, v});
  EXPECT_EQ(Bytes(*g3), gray3);
  std::vector<uint8_t> ga;
  for (uint8_t v : gray) ga.insert(ga.end(), {v, static_cast<uint8_t>(255 - v)});
  auto la = DecodeImage(EncodePng(w, h, PNG_COLOR_TYPE_GRAY_ALPHA, 8, ga), 1, "la");
  ASSERT_TRUE(la.ok()) << la.status().ToString();
  EXPECT_EQ(Bytes(*la), gray);

  // 1-bit gray scales to 0 / 255.
  auto bits = DecodeImage(EncodePng(8, 1, PNG_COLOR_TYPE_GRAY, 1, {0b10110000}), 1, "1bit");
  ASSERT_TRUE(bits.ok()) << bits.status().ToString();
  EXPECT_EQ(Bytes(*bits), (std::vector<uint8_t>{255, 0, 255, 255, 0, 0, 0, 0}));

  // Palette, 4 bits per index; index 3 lies past the 3-entry palette and reads as gray (3, 3, 3).
  const std::vector<png_color> palette = {{10, 20, 30}, {40, 50, 60}, {70, 80, 90}};
  auto pal = DecodeImage(EncodePng(4, 1, PNG_COLOR_TYPE_PALETTE, 4, {0x21, 0x03}, palette), 3, "p");
  ASSERT_TRUE(pal.ok()) << pal.status().ToString();
  EXPECT_EQ(Bytes(*pal), (std::vector<uint8_t>{70, 80, 90, 40, 50, 60, 10, 20, 30, 3, 3, 3}));

  // 16-bit RGB keeps each sample's high byte.
  auto rgb16 = DecodeImage(
      EncodePng(1, 1, PNG_COLOR_TYPE_RGB, 16, {0x12, 0xff, 0xab, 0x01, 0, 0x80}), 3, "rgb16");
  ASSERT_TRUE(rgb16.ok()) << rgb16.status().ToString();
  EXPECT_EQ(Bytes(*rgb16), (std::vector<uint8_t>{0x12, 0xab, 0x00}));
}

TEST_F(ImageIoTest, RefusesSixteenBitGrayPng) {
  auto s = DecodeImage(EncodePng(1, 1, PNG_COLOR_TYPE_GRAY, 16, {1, 2}), 1, "g16.png");
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("g16.png"), std::string::npos);
}

TEST_F(ImageIoTest, GrayscaleUsesPilLuma) {
  // PIL's convert("L") of these pixels (Pillow 9.4).
  const std::vector<uint8_t> rgb = {255, 0, 0, 0,   255, 0,  0, 0, 255, 255, 255, 255,
                                    1,   2, 3, 200, 100, 50, 0, 0, 0,   128, 128, 128};
  auto gray = DecodeImage(EncodePng(8, 1, PNG_COLOR_TYPE_RGB, 8, rgb), 1, "luma");
  ASSERT_TRUE(gray.ok()) << gray.status().ToString();
  EXPECT_EQ(Bytes(*gray), (std::vector<uint8_t>{76, 150, 29, 255, 2, 124, 0, 128}));
}

TEST_F(ImageIoTest, DecodesJpegGrayRgbAndCmyk) {
  const int w = 16, h = 16;
  // Constant 8x8 blocks survive quality 100 within one level.
  auto flat = [&](std::vector<uint8_t> value) {
    std::vector<uint8_t> v;
    for (int i = 0; i < w * h; ++i) v.insert(v.end(), value.begin(), value.end());
    return v;
  };
  auto near = [](const torch::Tensor& t, std::vector<int> want) {
    auto b = Bytes(t);
    for (size_t i = 0; i < b.size(); ++i) {
      if (std::abs(b[i] - want[i % want.size()]) > 1) return false;
    }
    return true;
  };
  auto rgb = DecodeImage(JpegBytes(w, h, 3, flat({200, 30, 90})), 3, "rgb.jpg");
  ASSERT_TRUE(rgb.ok()) << rgb.status().ToString();
  EXPECT_EQ(rgb->sizes(), (std::vector<int64_t>{h, w, 3}));
  EXPECT_TRUE(near(*rgb, {200, 30, 90}));
  auto gray = DecodeImage(JpegBytes(w, h, 1, flat({77})), 1, "gray.jpg");
  ASSERT_TRUE(gray.ok()) << gray.status().ToString();
  EXPECT_EQ(gray->sizes(), (std::vector<int64_t>{h, w, 1}));
  EXPECT_TRUE(near(*gray, {77}));
  // Stored CMYK is Adobe-inverted: stored K 255 means no black, so RGB equals the stored C, M, Y;
  // stored C, M, Y 255 with stored K k gives gray k.
  auto cmy = DecodeImage(JpegBytes(w, h, 4, flat({180, 60, 20, 255})), 3, "cmyk.jpg");
  ASSERT_TRUE(cmy.ok()) << cmy.status().ToString();
  EXPECT_TRUE(near(*cmy, {180, 60, 20}));
  auto k = DecodeImage(JpegBytes(w, h, 4, flat({255, 255, 255, 90})), 3, "k.jpg");
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  EXPECT_TRUE(near(*k, {90, 90, 90}));
}

TEST_F(ImageIoTest, EncodeJpegRoundTrips) {
  for (int channels : {1, 3}) {
    std::vector<uint8_t> flat;
    for (int i = 0; i < 24 * 16; ++i) {
      for (int c = 0; c < channels; ++c) flat.push_back(static_cast<uint8_t>(60 + 70 * c));
    }
    const torch::Tensor image = MakeImage(16, 24, channels, flat);
    auto jpeg = EncodeJpeg(image, 95);
    ASSERT_TRUE(jpeg.ok()) << jpeg.status().ToString();
    auto back = DecodeImage(*jpeg, channels, "encoded.jpg");
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    ASSERT_EQ(back->sizes(), image.sizes());
    EXPECT_LE((back->to(torch::kInt32) - image.to(torch::kInt32)).abs().max().item<int>(), 1);
  }
  const torch::Tensor rgb = MakeImage(4, 4, 3, Gradient(4, 4, 3));
  EXPECT_EQ(EncodeJpeg(rgb, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeJpeg(rgb, 101).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeJpeg(rgb.to(torch::kFloat32), 90).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeJpeg(MakeImage(2, 2, 2, std::vector<uint8_t>(8)), 90).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(ImageIoTest, ConstantImageStaysConstantForEveryInterpolation) {
  const int h = 37, w = 53;
  std::vector<uint8_t> v;
  for (int i = 0; i < h * w; ++i) v.insert(v.end(), {10, 200, 255});
  const torch::Tensor image = MakeImage(h, w, 3, v);
  for (auto interp : {Interpolation::kNearest, Interpolation::kBilinear, Interpolation::kBicubic}) {
    // Downscaling, upscaling, and crop_pct 1.
    for (auto [size, pct] :
         std::vector<std::pair<int64_t, double>>{{16, 0.875}, {96, 0.9}, {37, 1.0}}) {
      EvalTransform t{size, 3, pct, interp};
      auto out = ApplyEvalTransform(image, t);
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      ASSERT_EQ(out->sizes(), (std::vector<int64_t>{3, size, size}));
      EXPECT_EQ(out->scalar_type(), torch::kFloat32);
      for (int c = 0; c < 3; ++c) {
        const float want = static_cast<float>(v[c]) / 255.0f;
        EXPECT_TRUE(torch::all(out->select(0, c) == want).item<bool>())
            << InterpolationName(interp) << " size " << size << " channel " << c;
      }
    }
  }
}

TEST_F(ImageIoTest, ResamplesAsPil) {
  // Values from PIL 9.4's Image.resize.
  const torch::Tensor edge = MakeImage(2, 2, 1, {0, 200, 0, 200});
  auto bilinear = ApplyEvalTransform(edge, {4, 1, 1.0, Interpolation::kBilinear});
  ASSERT_TRUE(bilinear.ok()) << bilinear.status().ToString();
  std::vector<int> row = {0, 50, 150, 200};
  EXPECT_EQ(Pixels255(*bilinear), Repeat(row, 4));
  auto bicubic = ApplyEvalTransform(edge, {4, 1, 1.0, Interpolation::kBicubic});
  ASSERT_TRUE(bicubic.ok()) << bicubic.status().ToString();
  row = {0, 41, 159, 218};  // Keys' cubic overshoots past the source's 200
  EXPECT_EQ(Pixels255(*bicubic), Repeat(row, 4));
  auto nearest = ApplyEvalTransform(MakeImage(2, 2, 1, {10, 20, 30, 40}),
                                    {5, 1, 1.0, Interpolation::kNearest});
  ASSERT_TRUE(nearest.ok()) << nearest.status().ToString();
  std::vector<int> want;
  for (int y = 0; y < 5; ++y) {
    const int base = y < 2 ? 10 : 30;
    want.insert(want.end(), {base, base, base + 10, base + 10, base + 10});
  }
  EXPECT_EQ(Pixels255(*nearest), want);
  // Downscaling widens the filter: 4 -> 2 bilinear reads three source pixels per output.
  std::vector<uint8_t> rows;
  for (int y = 0; y < 4; ++y) rows.insert(rows.end(), {0, 100, 200, 250});
  auto down = ApplyEvalTransform(MakeImage(4, 4, 1, rows), {2, 1, 1.0, Interpolation::kBilinear});
  ASSERT_TRUE(down.ok()) << down.status().ToString();
  EXPECT_EQ(Pixels255(*down), (std::vector<int>{71, 207, 71, 207}));
}

TEST_F(ImageIoTest, CentreCropRoundsHalfToEven) {
  // No resize (the shorter side already equals floor(2 / 1.0)); pixel value = column index.
  for (auto [width, left] : std::vector<std::pair<int, int>>{{4, 1}, {5, 2}, {7, 2}, {9, 4}}) {
    std::vector<uint8_t> v;
    for (int y = 0; y < 2; ++y) {
      for (int x = 0; x < width; ++x) v.push_back(static_cast<uint8_t>(x));
    }
    auto wide = ApplyEvalTransform(MakeImage(2, width, 1, v), {2, 1, 1.0, Interpolation::kBicubic});
    ASSERT_TRUE(wide.ok()) << wide.status().ToString();
    EXPECT_EQ(Pixels255(*wide), (std::vector<int>{left, left + 1, left, left + 1})) << width;
    // The same along the height: pixel value = row index.
    std::vector<uint8_t> t;
    for (int y = 0; y < width; ++y)
      t.insert(t.end(), {static_cast<uint8_t>(y), static_cast<uint8_t>(y)});
    auto tall = ApplyEvalTransform(MakeImage(width, 2, 1, t), {2, 1, 1.0, Interpolation::kBicubic});
    ASSERT_TRUE(tall.ok()) << tall.status().ToString();
    EXPECT_EQ(Pixels255(*tall), (std::vector<int>{left, left, left + 1, left + 1})) << width;
  }
}

TEST_F(ImageIoTest, PadsWithZerosWhenSmallerThanTheCrop) {
  // crop_pct 2: the shorter side goes to floor(6 / 2) = 3, which this 3x4 image has already; the
  // 6x6 crop pads 1 row above and 2 below, 1 column left and 1 right.
  std::vector<uint8_t> v(12);
  for (int i = 0; i < 12; ++i) v[i] = static_cast<uint8_t>(i + 1);
  auto out = ApplyEvalTransform(MakeImage(3, 4, 1, v), {6, 1, 2.0, Interpolation::kBilinear});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const std::vector<int> got = Pixels255(*out);
  for (int y = 0; y < 6; ++y) {
    for (int x = 0; x < 6; ++x) {
      const bool inside = y >= 1 && y < 4 && x >= 1 && x < 5;
      EXPECT_EQ(got[y * 6 + x], inside ? v[(y - 1) * 4 + (x - 1)] : 0) << y << "," << x;
    }
  }
}

TEST_F(ImageIoTest, ReadsAndTransformsAFile) {
  const std::string path =
      Write("photo.png", EncodePng(40, 30, PNG_COLOR_TYPE_RGB, 8, Gradient(40, 30, 3)));
  auto out = ReadEvalImage(path, {24, 3, 0.875, Interpolation::kBicubic});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->sizes(), (std::vector<int64_t>{3, 24, 24}));
  EXPECT_GE(out->min().item<float>(), 0.0f);
  EXPECT_LE(out->max().item<float>(), 1.0f);
  EXPECT_GT(out->std().item<float>(), 0.05f);
}

TEST_F(ImageIoTest, ReportsErrorsNamingTheFile) {
  auto code = [](const StatusOr<torch::Tensor>& s) { return s.status().code(); };
  EXPECT_EQ(code(DecodeImageFile(*dir_ + "/missing.jpg", 3)), StatusCode::kNotFound);

  const std::string png = EncodePng(32, 32, PNG_COLOR_TYPE_RGB, 8, Gradient(32, 32, 3));
  const std::string jpeg = JpegBytes(32, 32, 3, Gradient(32, 32, 3));
  const std::vector<std::pair<std::string, std::string>> damaged = {
      {"empty.png", ""},
      {"half.png", png.substr(0, png.size() / 2)},
      {"header.png", png.substr(0, 20)},
      {"garbage.png", png.substr(0, 8) + std::string(100, '\x5a')},
      {"half.jpg", jpeg.substr(0, jpeg.size() / 2)},
      {"header.jpg", jpeg.substr(0, 100)},
      {"garbage.jpg", jpeg.substr(0, 3) + std::string(100, '\x5a')},
  };
  for (const auto& [name, bytes] : damaged) {
    auto s = DecodeImageFile(Write(name, bytes), 3);
    EXPECT_EQ(code(s), StatusCode::kDataLoss) << name << ": " << s.status().ToString();
    EXPECT_NE(s.status().message().find(name), std::string::npos) << s.status().message();
  }

  auto gif = DecodeImageFile(Write("anim.jpg", std::string("GIF89a\x01\x00\x01\x00", 10)), 3);
  EXPECT_EQ(code(gif), StatusCode::kInvalidArgument);
  EXPECT_NE(gif.status().message().find("anim.jpg"), std::string::npos);

  // Over the size bound: only the header is read, no pixels are allocated.
  auto wide = DecodeImage(EncodePng(70000, 1, PNG_COLOR_TYPE_GRAY, 8, {}, {}, false, true), 3, "w");
  EXPECT_EQ(code(wide), StatusCode::kInvalidArgument) << wide.status().ToString();
  auto many =
      DecodeImage(EncodePng(20000, 20000, PNG_COLOR_TYPE_GRAY, 8, {}, {}, false, true), 3, "m");
  EXPECT_EQ(code(many), StatusCode::kInvalidArgument) << many.status().ToString();
}

TEST_F(ImageIoTest, RejectsBadChannelsAndTransforms) {
  const std::string png = EncodePng(4, 4, PNG_COLOR_TYPE_RGB, 8, Gradient(4, 4, 3));
  for (int64_t channels : {0, 2, 4}) {
    EXPECT_EQ(DecodeImage(png, channels, "x").status().code(), StatusCode::kInvalidArgument);
  }
  const torch::Tensor rgb = MakeImage(4, 4, 3, Gradient(4, 4, 3));
  auto mismatch = ApplyEvalTransform(rgb, {4, 1, 1.0, Interpolation::kBilinear});
  EXPECT_EQ(mismatch.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyEvalTransform(rgb.to(torch::kFloat32), {4, 3, 1.0, Interpolation::kBilinear})
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyEvalTransform(rgb[0], {4, 3, 1.0, Interpolation::kBilinear}).status().code(),
            StatusCode::kInvalidArgument);
  for (EvalTransform t : {EvalTransform{224, 2, 0.875, Interpolation::kBicubic},
                          EvalTransform{224, 4, 0.875, Interpolation::kBicubic},
                          EvalTransform{0, 3, 0.875, Interpolation::kBicubic},
                          EvalTransform{224, 3, 0.0, Interpolation::kBicubic},
                          EvalTransform{224, 3, -1.0, Interpolation::kBicubic},
                          EvalTransform{224, 3, std::nan(""), Interpolation::kBicubic},
                          EvalTransform{4, 3, 5.0, Interpolation::kBicubic}}) {
    EXPECT_EQ(CheckEvalTransform(t).code(), StatusCode::kInvalidArgument) << t.in_chans;
    EXPECT_EQ(ApplyEvalTransform(rgb, t).status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(CheckEvalTransform(EvalTransform{}).ok());
}

}  // namespace
}  // namespace qs::core

#include "core/image_io.h"

// clang-format off
#include <cstdio>  // first: jpeglib.h uses FILE and size_t without declaring them
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <vector>

#include "common/file_util.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

constexpr int64_t kMaxSide = 65535;
// PIL refuses images over twice its MAX_IMAGE_PIXELS (a decompression bomb); so does qsearch.
constexpr int64_t kMaxPixels = 178956970;
// No JPEG or PNG an image folder holds is near this; a larger file is not read at all.
constexpr uintmax_t kMaxFileBytes = uintmax_t{1} << 30;

Status CheckSize(const std::string& name, int64_t width, int64_t height) {
  if (width < 1 || height < 1) {
    return DataLossError(name + ": image has no pixels (" + std::to_string(width) + "x" +
                         std::to_string(height) + ")");
  }
  if (width > kMaxSide || height > kMaxSide || width * height > kMaxPixels) {
    return InvalidArgumentError(name + ": image of " + std::to_string(width) + "x" +
                                std::to_string(height) +
                                " pixels is over the bound (178956970 pixels as PIL's, "
                                "65535 a side)");
  }
  return OkStatus();
}

// PIL's ITU-R 601-2 luma (Convert.c, L24): 16-bit fixed point, rounded.
inline uint8_t Luma(const uint8_t* rgb) {
  return static_cast<uint8_t>((rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16);
}

// An image decoded to gray (1 channel) or RGB (3), converted to `channels` as PIL's convert("L") or
// convert("RGB") would convert it.
torch::Tensor ToChannels(torch::Tensor image, int64_t channels) {
  const int64_t have = image.size(2);
  if (have == channels) return image;
  const int64_t n = image.size(0) * image.size(1);
  torch::Tensor out = torch::empty({image.size(0), image.size(1), channels}, torch::kUInt8);
  const uint8_t* in = image.data_ptr<uint8_t>();
  uint8_t* o = out.data_ptr<uint8_t>();
  if (have == 1) {
    for (int64_t i = 0; i < n; ++i) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = in[i];
  } else {
    for (int64_t i = 0; i < n; ++i) o[i] = Luma(in + 3 * i);
  }
  return out;
}

// ---- JPEG ---------------------------------------------------------------------------------------

// libjpeg reports fatal errors through error_exit, which must not return: it longjmps back to the
// setjmp of the step that called into libjpeg. Those steps hold no C++ objects with destructors.
struct JpegError {
  jpeg_error_mgr pub;  // first, so libjpeg's pointer to it is a pointer to this
  jmp_buf jump;
  int code = 0;
  bool truncated = false;
  char message[JMSG_LENGTH_MAX] = {};
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  err->code = err->pub.msg_code;
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings (level < 0) are dropped as PIL drops them, except the memory source's "premature end of
// file", which PIL reports as a truncated image. Trace messages (level >= 0) are dropped.
void JpegEmitMessage(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  if (level < 0 && err->pub.msg_code == JWRN_JPEG_EOF) err->truncated = true;
}

struct JpegDecoder {
  jpeg_decompress_struct cinfo;
  JpegError err;

  JpegDecoder() {
    std::memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = JpegErrorExit;
    err.pub.emit_message = JpegEmitMessage;
  }
  // Safe whether or not jpeg_create_decompress ran or finished: it checks for a memory manager.
  ~JpegDecoder() { jpeg_destroy_decompress(&cinfo); }
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;
};

bool JpegReadHeader(JpegDecoder* d, const std::string* bytes) {
  if (setjmp(d->err.jump)) return false;
  jpeg_create_decompress(&d->cinfo);
  jpeg_mem_src(&d->cinfo, reinterpret_cast<const unsigned char*>(bytes->data()),
               static_cast<unsigned long>(bytes->size()));
  jpeg_read_header(&d->cinfo, TRUE);
  return true;
}

// PIL's settings are libjpeg's defaults (islow DCT, fancy upsampling); only the output colour space
// is chosen, as PIL's JpegDecode chooses it from the number of components.
bool JpegStart(JpegDecoder* d, J_COLOR_SPACE out_space) {
  if (setjmp(d->err.jump)) return false;
  d->cinfo.out_color_space = out_space;
  d->cinfo.dct_method = JDCT_ISLOW;
  d->cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&d->cinfo);
  return true;
}

bool JpegReadRows(JpegDecoder* d, uint8_t* out, size_t stride) {
  if (setjmp(d->err.jump)) return false;
  while (d->cinfo.output_scanline < d->cinfo.output_height && !d->err.truncated) {
    JSAMPROW row = out + d->cinfo.output_scanline * stride;
    jpeg_read_scanlines(&d->cinfo, &row, 1);
  }
  return true;
}

Status JpegFailure(const JpegDecoder& d, const std::string& name) {
  // Data that ends early often surfaces as a later complaint (a missing marker); say why.
  if (d.err.truncated) {
    return DataLossError(name + ": JPEG: file is truncated (" + d.err.message + ")");
  }
  const std::string what = name + ": JPEG: " + d.err.message;
  switch (d.err.code) {
    case JERR_ARITH_NOTIMPL:
    case JERR_BAD_PRECISION:
    case JERR_CONVERSION_NOTIMPL:
    case JERR_IMAGE_TOO_BIG:
    case JERR_NOTIMPL:
    case JERR_NOT_COMPILED:
    case JERR_WIDTH_OVERFLOW:
      return InvalidArgumentError(what);
    default:
      return DataLossError(what);
  }
}

StatusOr<torch::Tensor> DecodeJpeg(const std::string& bytes, const std::string& name) {
  JpegDecoder d;
  if (!JpegReadHeader(&d, &bytes)) return JpegFailure(d, name);
  if (d.err.truncated) return DataLossError(name + ": JPEG: file is truncated");
  QS_RETURN_IF_ERROR(CheckSize(name, d.cinfo.image_width, d.cinfo.image_height));
  const int components = d.cinfo.num_components;
  J_COLOR_SPACE space;
  if (components == 1) {
    space = JCS_GRAYSCALE;
  } else if (components == 3) {
    space = JCS_RGB;
  } else if (components == 4) {
    space = JCS_CMYK;  // libjpeg turns YCCK into CMYK
  } else {
    return InvalidArgumentError(name + ": JPEG with " + std::to_string(components) +
                                " components (only 1, 3 and 4 are supported)");
  }
  if (!JpegStart(&d, space)) return JpegFailure(d, name);
  const int64_t height = d.cinfo.output_height;
  const int64_t width = d.cinfo.output_width;
  const int64_t out_components = d.cinfo.output_components;
  if (out_components != components) {
    return InternalError(name + ": JPEG: libjpeg gives " + std::to_string(out_components) +
                         " components for " + std::to_string(components));
  }
  torch::Tensor pixels = torch::empty({height, width, out_components}, torch::kUInt8);
  if (!JpegReadRows(&d, pixels.data_ptr<uint8_t>(), static_cast<size_t>(width * out_components))) {
    return JpegFailure(d, name);
  }
  // A premature end fills the rest with gray; PIL refuses such a file, and so do we. What follows
  // the last row (the end marker) is not read: PIL does not need it either.
  if (d.err.truncated) return DataLossError(name + ": JPEG: file is truncated");
  if (components != 4) return pixels;

  // PIL reads 4-component JPEGs as Adobe's inverted CMYK ("CMYK;I") and converts to RGB with
  // cmyk2rgb: with k = 255 - K', each channel is k - C'k/255 (C' = 255 - stored), rounded as
  // MULDIV255 rounds.
  torch::Tensor rgb = torch::empty({height, width, 3}, torch::kUInt8);
  const uint8_t* in = pixels.data_ptr<uint8_t>();
  uint8_t* out = rgb.data_ptr<uint8_t>();
  for (int64_t i = 0; i < height * width; ++i) {
    const int nk = in[4 * i + 3];  // 255 - (255 - stored)
    for (int c = 0; c < 3; ++c) {
      const int tmp = (255 - in[4 * i + c]) * nk + 128;
      out[3 * i + c] = static_cast<uint8_t>(std::clamp(nk - (((tmp >> 8) + tmp) >> 8), 0, 255));
    }
  }
  return rgb;
}

struct JpegEncoder {
  jpeg_compress_struct cinfo;
  JpegError err;
  unsigned char* buffer = nullptr;  // jpeg_mem_dest's, freed here
  unsigned long size = 0;

  JpegEncoder() {
    std::memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = JpegErrorExit;
    err.pub.emit_message = JpegEmitMessage;
  }
  ~JpegEncoder() {
    jpeg_destroy_compress(&cinfo);
    std::free(buffer);
  }
  JpegEncoder(const JpegEncoder&) = delete;
  JpegEncoder& operator=(const JpegEncoder&) = delete;
};

bool JpegCompress(JpegEncoder* e, const uint8_t* pixels, int width, int height, int components,
                  int quality) {
  if (setjmp(e->err.jump)) return false;
  jpeg_create_compress(&e->cinfo);
  jpeg_mem_dest(&e->cinfo, &e->buffer, &e->size);
  e->cinfo.image_width = width;
  e->cinfo.image_height = height;
  e->cinfo.input_components = components;
  e->cinfo.in_color_space = components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&e->cinfo);
  jpeg_set_quality(&e->cinfo, quality, TRUE);
  jpeg_start_compress(&e->cinfo, TRUE);
  while (e->cinfo.next_scanline < e->cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(pixels) + e->cinfo.next_scanline * width * components;
    jpeg_write_scanlines(&e->cinfo, &row, 1);
  }
  jpeg_finish_compress(&e->cinfo);
  return true;
}

// ---- PNG ----------------------------------------------------------------------------------------

// libpng's errors go through PngErrorFn, which longjmps (png_longjmp) back to the setjmp of the
// step that called into libpng; those steps hold no C++ objects with destructors.
struct PngDecoder {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const unsigned char* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  char message[256] = {};

  ~PngDecoder() { png_destroy_read_struct(&png, info ? &info : nullptr, nullptr); }
};

void PngErrorFn(png_structp png, png_const_charp message) {
  auto* d = static_cast<PngDecoder*>(png_get_error_ptr(png));
  std::snprintf(d->message, sizeof(d->message), "%s", message ? message : "unknown error");
  png_longjmp(png, 1);
}

// Warnings (bad CRCs of ancillary chunks, odd chunks) are ignored, as PIL ignores such chunks.
void PngWarningFn(png_structp, png_const_charp) {}

void PngReadFn(png_structp png, png_bytep out, size_t n) {
  auto* d = static_cast<PngDecoder*>(png_get_io_ptr(png));
  if (n > d->size - d->pos) png_error(png, "file is truncated");
  std::memcpy(out, d->data + d->pos, n);
  d->pos += n;
}

bool PngReadInfo(PngDecoder* d) {
  if (setjmp(png_jmpbuf(d->png))) return false;
  png_set_read_fn(d->png, d, PngReadFn);
  // Sizes are bounded by CheckSize, with a status of our own, rather than by libpng's default.
  png_set_user_limits(d->png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  png_read_info(d->png, d->info);
  return true;
}

// Sets the transforms: samples unpacked to one byte each, gray of 1, 2 or 4 bits scaled to 8 bits
// (as PIL's "1", "L;2" and "L;4" unpackers scale them), 16-bit samples cut to their high byte (as
// PIL's ";16B" unpackers), the alpha channel dropped. tRNS is not expanded, gamma not applied.
bool PngSetTransforms(PngDecoder* d, int color_type, int bit_depth) {
  if (setjmp(png_jmpbuf(d->png))) return false;
  if (bit_depth < 8) {
    if (color_type == PNG_COLOR_TYPE_GRAY) png_set_expand_gray_1_2_4_to_8(d->png);
    png_set_packing(d->png);
  }
  if (bit_depth == 16) png_set_strip_16(d->png);
  if (color_type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(d->png);
  png_set_interlace_handling(d->png);
  png_read_update_info(d->png, d->info);
  return true;
}

bool PngReadRows(PngDecoder* d, png_bytepp rows) {
  if (setjmp(png_jmpbuf(d->png))) return false;
  png_read_image(d->png, rows);
  return true;
}

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

StatusOr<torch::Tensor> DecodePng(const std::string& bytes, const std::string& name) {
  // The size bound is checked on the header itself (when its CRC holds), before libpng reads on to
  // the first image data, so an oversized image is refused even when the rest is missing.
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() >= 33 && std::memcmp(p + 12, "IHDR", 4) == 0 &&
      crc32(crc32(0, nullptr, 0), p + 12, 17) == BigEndian32(p + 29)) {
    QS_RETURN_IF_ERROR(CheckSize(name, BigEndian32(p + 16), BigEndian32(p + 20)));
  }
  PngDecoder d;
  d.data = reinterpret_cast<const unsigned char*>(bytes.data());
  d.size = bytes.size();
  d.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &d, PngErrorFn, PngWarningFn);
  if (d.png != nullptr) d.info = png_create_info_struct(d.png);
  if (d.png == nullptr || d.info == nullptr) {
    return ResourceExhaustedError(name + ": PNG: cannot allocate the decoder");
  }
  if (!PngReadInfo(&d)) return DataLossError(name + ": PNG: " + d.message);
  const int64_t width = png_get_image_width(d.png, d.info);
  const int64_t height = png_get_image_height(d.png, d.info);
  QS_RETURN_IF_ERROR(CheckSize(name, width, height));
  const int color_type = png_get_color_type(d.png, d.info);
  const int bit_depth = png_get_bit_depth(d.png, d.info);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth == 16) {
    return InvalidArgumentError(name +
                                ": 16-bit grayscale PNG is not supported (PIL opens it as mode I "
                                "and clips it to 8 bits instead of scaling it)");
  }
  // Palette entries, copied before decoding: PIL maps indices through them (convert from "P").
  png_colorp palette = nullptr;
  int palette_size = 0;
  if (color_type == PNG_COLOR_TYPE_PALETTE &&
      png_get_PLTE(d.png, d.info, &palette, &palette_size) != PNG_INFO_PLTE) {
    return DataLossError(name + ": PNG: palette image without a palette");
  }
  if (!PngSetTransforms(&d, color_type, bit_depth)) {
    return DataLossError(name + ": PNG: " + d.message);
  }
  const int64_t channels = png_get_channels(d.png, d.info);
  const size_t row_bytes = png_get_rowbytes(d.png, d.info);
  if (channels != 1 && channels != 3) {
    return InternalError(name + ": PNG: " + std::to_string(channels) +
                         " channels after transforms");
  }
  if (row_bytes != static_cast<size_t>(width * channels)) {
    return InternalError(name + ": PNG: unexpected row size after transforms");
  }
  torch::Tensor pixels = torch::empty({height, width, channels}, torch::kUInt8);
  std::vector<png_bytep> rows(height);
  for (int64_t y = 0; y < height; ++y) rows[y] = pixels.data_ptr<uint8_t>() + y * row_bytes;
  if (!PngReadRows(&d, rows.data())) return DataLossError(name + ": PNG: " + d.message);
  // The chunks after the image data are not read: PIL stops at the last row as well.
  if (color_type != PNG_COLOR_TYPE_PALETTE) return pixels;

  // An index i past the palette's end reads as gray (i, i, i): PIL's palette holds 256 entries and
  // those the file leaves out keep its default gray ramp.
  uint8_t table[256][3];
  for (int i = 0; i < 256; ++i) table[i][0] = table[i][1] = table[i][2] = static_cast<uint8_t>(i);
  for (int i = 0; i < std::min(palette_size, 256); ++i) {
    table[i][0] = palette[i].red;
    table[i][1] = palette[i].green;
    table[i][2] = palette[i].blue;
  }
  torch::Tensor rgb = torch::empty({height, width, 3}, torch::kUInt8);
  const uint8_t* in = pixels.data_ptr<uint8_t>();
  uint8_t* out = rgb.data_ptr<uint8_t>();
  for (int64_t i = 0; i < height * width; ++i) std::memcpy(out + 3 * i, table[in[i]], 3);
  return rgb;
}

// ---- Resampling (PIL's Resample.c and Geometry.c) -----------------------------------------------

// PIL's fixed point for 8-bit resampling: 8 bits of result, 2 for overshoot and sign.
constexpr int kPrecisionBits = 32 - 8 - 2;

double BilinearFilter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

// Keys' cubic with a = -0.5, written as PIL writes it so that it rounds the same.
double BicubicFilter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// The taps of output positions [begin, end) of a resize from in_size to out_size along one axis:
// for position i, count[i] source samples from first[i] with fixed-point weights weights[i * ksize
// ...]. Each position's taps depend on that position only, so a crop window needs no others; the
// arithmetic follows PIL's precompute_coeffs and normalize_coeffs_8bpc step by step.
struct Taps {
  int64_t ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> weights;
};

Taps ComputeTaps(int64_t in_size, int64_t out_size, int64_t begin, int64_t end,
                 Interpolation interpolation) {
  double (*filter)(double) =
      interpolation == Interpolation::kBicubic ? BicubicFilter : BilinearFilter;
  const double filter_support = interpolation == Interpolation::kBicubic ? 2.0 : 1.0;
  // PIL passes the box as floats: in1 - in0 is a float, widened to double for the division.
  const float in0 = 0.0f;
  const float in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter_support * filterscale;
  Taps taps;
  taps.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  const int64_t n = end - begin;
  taps.first.resize(n);
  taps.count.resize(n);
  taps.weights.assign(n * taps.ksize, 0);
  std::vector<double> k(taps.ksize);
  for (int64_t i = 0; i < n; ++i) {
    const int xx = static_cast<int>(begin + i);
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = static_cast<int>(in_size);
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
    }
    int32_t* fixed = taps.weights.data() + i * taps.ksize;
    for (int x = 0; x < xmax; ++x) {
      const double scaled = k[x] * (1 << kPrecisionBits);
      fixed[x] = static_cast<int32_t>(k[x] < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    taps.first[i] = xmin;
    taps.count[i] = xmax;
  }
  return taps;
}

inline uint8_t Clip8(int32_t acc) {
  return static_cast<uint8_t>(std::clamp(acc >> kPrecisionBits, 0, 255));
}

// PIL's horizontal pass over one row of C-channel pixels, for the output columns of `taps`.
template <int C>
void HorizontalRow(const uint8_t* row, const Taps& taps, int64_t cols, uint8_t* out) {
  for (int64_t q = 0; q < cols; ++q) {
    const int32_t* k = taps.weights.data() + q * taps.ksize;
    const uint8_t* src = row + static_cast<int64_t>(taps.first[q]) * C;
    int32_t acc[C];
    for (int ch = 0; ch < C; ++ch) acc[ch] = 1 << (kPrecisionBits - 1);
    for (int x = 0; x < taps.count[q]; ++x) {
      for (int ch = 0; ch < C; ++ch) acc[ch] += src[x * C + ch] * k[x];
    }
    for (int ch = 0; ch < C; ++ch) out[q * C + ch] = Clip8(acc[ch]);
  }
}

// A uint8 image, rows of width * channels bytes.
struct Plane {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  const uint8_t* data = nullptr;
  const uint8_t* At(int64_t y, int64_t x) const { return data + (y * width + x) * channels; }
};

// Where the crop window of one axis lies: resized positions [begin, end) land at output positions
// [offset, offset + end - begin); the rest of the output is padding.
struct Window {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t offset = 0;
};

// torchvision's CenterCrop along one axis of length `size`: pad (crop - size) // 2 zeros before
// when the axis is short, else start at int(round((size - crop) / 2.0)) with Python's half-to-even.
Window CropWindow(int64_t size, int64_t crop) {
  Window w;
  if (crop > size) {
    w.begin = 0;
    w.end = size;
    w.offset = (crop - size) / 2;
    return w;
  }
  const int64_t d = size - crop;
  int64_t start = d / 2;
  if (d % 2 == 1 && start % 2 == 1) ++start;  // (2q + 1) / 2 = q + 0.5 rounds to the even one
  w.begin = start;
  w.end = start + crop;
  w.offset = 0;
  return w;
}

// PIL's nearest resize (ImagingScaleAffine): source index from a running double sum that starts at
// half a step, truncated; positions outside the source stay zero as PIL's fill leaves them.
std::vector<int64_t> NearestIndices(int64_t in_size, int64_t out_size, int64_t begin, int64_t end) {
  const double step = static_cast<double>(static_cast<float>(in_size)) / out_size;
  double pos = 0.0 + step * 0.5;
  std::vector<int64_t> index(end - begin, -1);
  for (int64_t x = 0; x < end; ++x) {
    if (x >= begin) {
      const int64_t xin = pos < 0.0 ? -1 : static_cast<int>(pos);
      if (xin >= 0 && xin < in_size) index[x - begin] = xin;
    }
    pos += step;
  }
  return index;
}

// Writes the window (rows wy, columns wx) of `in` resized to out_h x out_w into `out`, a zeroed
// crop x crop x channels buffer.
void ResizeWindow(const Plane& in, int64_t out_h, int64_t out_w, const Window& wy, const Window& wx,
                  Interpolation interpolation, int64_t crop, uint8_t* out) {
  const int64_t c = in.channels;  // 1 or 3, as ApplyEvalTransform checks
  const int64_t rows = wy.end - wy.begin;
  const int64_t cols = wx.end - wx.begin;
  auto dst = [&](int64_t r, int64_t q) {
    return out + ((wy.offset + r) * crop + wx.offset + q) * c;
  };

  if (out_h == in.height && out_w == in.width) {  // torchvision does not resize at all
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dst(r, 0), in.At(wy.begin + r, wx.begin), cols * c);
    }
    return;
  }
  if (interpolation == Interpolation::kNearest) {
    const std::vector<int64_t> ys = NearestIndices(in.height, out_h, wy.begin, wy.end);
    const std::vector<int64_t> xs = NearestIndices(in.width, out_w, wx.begin, wx.end);
    for (int64_t r = 0; r < rows; ++r) {
      if (ys[r] < 0) continue;
      for (int64_t q = 0; q < cols; ++q) {
        if (xs[q] >= 0) std::memcpy(dst(r, q), in.At(ys[r], xs[q]), c);
      }
    }
    return;
  }

  // Two passes as PIL makes them, each skipped when its axis keeps its size: horizontal into `mid`
  // (only the source rows the vertical taps read), then vertical.
  const bool horizontal = out_w != in.width;
  const bool vertical = out_h != in.height;
  Taps vt;
  int64_t row0 = wy.begin;
  int64_t row1 = wy.end;
  if (vertical) {
    vt = ComputeTaps(in.height, out_h, wy.begin, wy.end, interpolation);
    row0 = std::numeric_limits<int64_t>::max();
    row1 = 0;
    for (int64_t r = 0; r < rows; ++r) {
      row0 = std::min<int64_t>(row0, vt.first[r]);
      row1 = std::max<int64_t>(row1, vt.first[r] + vt.count[r]);
    }
  }
  std::vector<uint8_t> mid((row1 - row0) * cols * c);
  if (horizontal) {
    const Taps ht = ComputeTaps(in.width, out_w, wx.begin, wx.end, interpolation);
    for (int64_t y = row0; y < row1; ++y) {
      uint8_t* o = mid.data() + (y - row0) * cols * c;
      if (c == 1) {
        HorizontalRow<1>(in.At(y, 0), ht, cols, o);
      } else {
        HorizontalRow<3>(in.At(y, 0), ht, cols, o);
      }
    }
  } else {
    for (int64_t y = row0; y < row1; ++y) {
      std::memcpy(mid.data() + (y - row0) * cols * c, in.At(y, wx.begin), cols * c);
    }
  }
  if (!vertical) {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dst(r, 0), mid.data() + (wy.begin + r - row0) * cols * c, cols * c);
    }
    return;
  }
  // Row by row, not PIL's pixel by pixel: the same integer sums, in an order that vectorizes.
  const int64_t stride = cols * c;
  std::vector<int32_t> acc(stride);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* k = vt.weights.data() + r * vt.ksize;
    const uint8_t* src = mid.data() + (vt.first[r] - row0) * stride;
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < vt.count[r]; ++y) {
      const uint8_t* line = src + y * stride;
      const int32_t w = k[y];
      for (int64_t i = 0; i < stride; ++i) acc[i] += line[i] * w;
    }
    uint8_t* o = dst(r, 0);
    for (int64_t i = 0; i < stride; ++i) o[i] = Clip8(acc[i]);
  }
}

}  // namespace

StatusOr<Interpolation> ParseInterpolation(const std::string& name) {
  if (name == "nearest") return Interpolation::kNearest;
  if (name == "bilinear") return Interpolation::kBilinear;
  if (name == "bicubic") return Interpolation::kBicubic;
  return InvalidArgumentError("unknown interpolation '" + name +
                              "' (expected nearest, bilinear or bicubic)");
}

const char* InterpolationName(Interpolation interpolation) {
  switch (interpolation) {
    case Interpolation::kNearest:
      return "nearest";
    case Interpolation::kBilinear:
      return "bilinear";
    case Interpolation::kBicubic:
      return "bicubic";
  }
  return "unknown";
}

Status CheckEvalTransform(const EvalTransform& t) {
  if (t.img_size < 1 || t.img_size > kMaxSide) {
    return InvalidArgumentError("img_size " + std::to_string(t.img_size) +
                                " is outside [1, 65535]");
  }
  if (t.in_chans != 1 && t.in_chans != 3) {
    return InvalidArgumentError("in_chans " + std::to_string(t.in_chans) +
                                " is not supported for image files (1: grayscale, 3: RGB)");
  }
  if (!std::isfinite(t.crop_pct) || t.crop_pct <= 0.0) {
    return InvalidArgumentError("crop_pct " + std::to_string(t.crop_pct) +
                                " must be finite and positive");
  }
  const double scale_size = std::floor(static_cast<double>(t.img_size) / t.crop_pct);
  if (scale_size < 1.0 || scale_size > static_cast<double>(kMaxSide)) {
    return InvalidArgumentError("crop_pct " + std::to_string(t.crop_pct) + " with img_size " +
                                std::to_string(t.img_size) +
                                " resizes to a shorter side outside [1, 65535]");
  }
  return OkStatus();
}

StatusOr<torch::Tensor> DecodeImage(const std::string& bytes, int64_t channels,
                                    const std::string& name) {
  if (channels != 1 && channels != 3) {
    return InvalidArgumentError(name + ": cannot decode to " + std::to_string(channels) +
                                " channels (1: grayscale, 3: RGB)");
  }
  if (bytes.empty()) return DataLossError(name + ": empty file");
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const bool jpeg = bytes.size() >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF;
  const bool png = bytes.size() >= 8 && png_sig_cmp(p, 0, 8) == 0;
  if (!jpeg && !png) {
    return InvalidArgumentError(name + ": not a JPEG or PNG file (unrecognised first bytes)");
  }
  return GuardTorch(name, [&]() -> StatusOr<torch::Tensor> {
    QS_ASSIGN_OR_RETURN(torch::Tensor image,
                        jpeg ? DecodeJpeg(bytes, name) : DecodePng(bytes, name));
    return ToChannels(std::move(image), channels);
  });
}

StatusOr<torch::Tensor> DecodeImageFile(const std::string& path, int64_t channels) {
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > kMaxFileBytes) {
    return InvalidArgumentError(path + ": a " + std::to_string(size) +
                                "-byte file is over the 1 GiB bound for an image");
  }
  QS_ASSIGN_OR_RETURN(std::string bytes, ReadFileBytes(path));
  return DecodeImage(bytes, channels, path);
}

StatusOr<std::string> EncodeJpeg(const torch::Tensor& hwc_uint8, int quality) {
  const torch::Tensor& x = hwc_uint8;
  if (!x.defined() || x.scalar_type() != torch::kUInt8 || x.dim() != 3 ||
      (x.size(2) != 1 && x.size(2) != 3) || x.size(0) < 1 || x.size(1) < 1 ||
      x.size(0) > JPEG_MAX_DIMENSION || x.size(1) > JPEG_MAX_DIMENSION) {
    return InvalidArgumentError("EncodeJpeg: expected a uint8 [H, W, 1 or 3] image, sides up to " +
                                std::to_string(JPEG_MAX_DIMENSION));
  }
  if (quality < 1 || quality > 100) {
    return InvalidArgumentError("EncodeJpeg: quality " + std::to_string(quality) +
                                " is outside [1, 100]");
  }
  return GuardTorch("EncodeJpeg", [&]() -> StatusOr<std::string> {
    const torch::Tensor image = x.to(torch::kCPU).contiguous();
    JpegEncoder e;
    if (!JpegCompress(&e, image.data_ptr<uint8_t>(), static_cast<int>(image.size(1)),
                      static_cast<int>(image.size(0)), static_cast<int>(image.size(2)), quality)) {
      return InternalError(std::string("EncodeJpeg: libjpeg: ") + e.err.message);
    }
    return std::string(reinterpret_cast<const char*>(e.buffer), e.size);
  });
}

StatusOr<torch::Tensor> ApplyEvalTransform(const torch::Tensor& hwc_uint8,
                                           const EvalTransform& transform) {
  QS_RETURN_IF_ERROR(CheckEvalTransform(transform));
  const torch::Tensor& x = hwc_uint8;
  if (!x.defined() || x.scalar_type() != torch::kUInt8 || x.dim() != 3 ||
      x.size(2) != transform.in_chans || x.size(0) < 1 || x.size(1) < 1) {
    return InvalidArgumentError("eval transform: expected a uint8 [H, W, " +
                                std::to_string(transform.in_chans) + "] image");
  }
  return GuardTorch("eval transform", [&]() -> StatusOr<torch::Tensor> {
    const torch::Tensor image = x.to(torch::kCPU).contiguous();
    Plane in{image.size(0), image.size(1), image.size(2), image.data_ptr<uint8_t>()};
    // torchvision's Resize(int): the shorter side to `size`, the longer to int(size * long / short)
    // with Python's true division (both operands are exact in double).
    const int64_t size = static_cast<int64_t>(
        std::floor(static_cast<double>(transform.img_size) / transform.crop_pct));
    const bool wide = in.width > in.height;
    const int64_t shorter = wide ? in.height : in.width;
    const int64_t longer = wide ? in.width : in.height;
    const double scaled = static_cast<double>(size * longer) / static_cast<double>(shorter);
    if (scaled > static_cast<double>(std::numeric_limits<int32_t>::max())) {
      return InvalidArgumentError("eval transform: a " + std::to_string(in.width) + "x" +
                                  std::to_string(in.height) +
                                  " image resizes past 2^31 - 1 pixels a side");
    }
    const int64_t new_long = static_cast<int64_t>(scaled);
    const int64_t out_w = wide ? new_long : size;
    const int64_t out_h = wide ? size : new_long;

    const int64_t crop = transform.img_size;
    torch::Tensor canvas = torch::zeros({crop, crop, in.channels}, torch::kUInt8);
    ResizeWindow(in, out_h, out_w, CropWindow(out_h, crop), CropWindow(out_w, crop),
                 transform.interpolation, crop, canvas.data_ptr<uint8_t>());
    // ToTensor's own operations, so the division rounds as torchvision's does.
    return canvas.permute({2, 0, 1}).contiguous().to(torch::kFloat32).div(255);
  });
}

StatusOr<torch::Tensor> ReadEvalImage(const std::string& path, const EvalTransform& transform) {
  QS_RETURN_IF_ERROR(CheckEvalTransform(transform));
  QS_ASSIGN_OR_RETURN(torch::Tensor image, DecodeImageFile(path, transform.in_chans));
  StatusOr<torch::Tensor> out = ApplyEvalTransform(image, transform);
  if (!out.ok()) return out.status().WithContext(path);
  return out;
}

}  // namespace qs::core

// Image files to model inputs: JPEG and PNG decoding (libjpeg-turbo, libpng) and timm's evaluation
// transform, reproducing what torchvision computes on PIL images (Pillow 9.4, Debian 12):
//
//   transforms.Resize(floor(img_size / crop_pct), interpolation)   # PIL's Image.resize
//   transforms.CenterCrop(img_size)
//   transforms.ToTensor()                                          # no Normalize: the caller's
//
// applied to Image.open(path).convert("RGB") (in_chans 3) or .convert("L") (in_chans 1). The result
// equals torchvision's bit for bit (tests/reference/image_reference.py checks it).
//
// Everything here works on one image at a time, keeps no state and may be called from several
// threads at once.
//
//   EvalTransform t;  // 224, RGB, crop_pct 0.875, bicubic
//   QS_ASSIGN_OR_RETURN(torch::Tensor x, ReadEvalImage("val/n01/a.JPEG", t));  // [3, 224, 224]
#ifndef QS_CORE_IMAGE_IO_H_
#define QS_CORE_IMAGE_IO_H_

#include <cstdint>
#include <string>

#include <torch/types.h>

#include "common/status.h"

namespace qs::core {

// PIL's resampling filters, by the names timm and torchvision use.
enum class Interpolation { kNearest, kBilinear, kBicubic };

// "nearest", "bilinear" or "bicubic"; INVALID_ARGUMENT naming the accepted values otherwise.
StatusOr<Interpolation> ParseInterpolation(const std::string& name);
// The name ParseInterpolation accepts.
const char* InterpolationName(Interpolation interpolation);

// timm's evaluation transform (transforms_imagenet_eval, crop_mode "center").
struct EvalTransform {
  int64_t img_size = 224;   // the square crop's side
  int64_t in_chans = 3;     // 1: grayscale (PIL convert("L")), 3: RGB (PIL convert("RGB"))
  double crop_pct = 0.875;  // the shorter side is first resized to floor(img_size / crop_pct)
  Interpolation interpolation = Interpolation::kBicubic;
};

// OK when `transform` is usable: img_size in [1, 65535], in_chans 1 or 3, crop_pct finite and
// positive with floor(img_size / crop_pct) in [1, 65535]; INVALID_ARGUMENT naming the field
// otherwise.
Status CheckEvalTransform(const EvalTransform& transform);

// Decodes a JPEG or PNG, recognised by its first bytes (not its name), to uint8 [H, W, channels],
// channels 1 as PIL's convert("L") or 3 as PIL's convert("RGB") gives them:
//  - JPEG: libjpeg's defaults, as PIL uses them (islow DCT, fancy upsampling); grayscale,
//    YCbCr/RGB, and Adobe CMYK/YCCK converted as PIL converts CMYK to RGB. Orientation tags are
//    ignored, as PIL's open ignores them. Corrupt-data warnings are tolerated as PIL tolerates
//    them; data that ends before the last row is DATA_LOSS (PIL: "image file is truncated").
//  - PNG: gray of 1 to 8 bits, palette, gray+alpha, RGB, RGBA, interlaced or not. Alpha and tRNS
//    are dropped without compositing and gamma/colour chunks ignored, as PIL's convert does; an
//    index past the palette reads as gray (i, i, i) as in PIL. 16-bit RGB, RGBA and gray+alpha
//    keep each sample's high byte, as PIL unpacks them. 16-bit gray without alpha is refused
//    (INVALID_ARGUMENT): PIL opens it as 32-bit mode "I" and convert() clips the values to 255
//    instead of scaling them, which is no input a model was trained on.
//  - RGB to gray is PIL's ITU-R 601-2 luma, (R*19595 + G*38470 + B*7471 + 0x8000) >> 16; gray to
//    RGB replicates.
// Errors, each naming the file: NOT_FOUND (no such file); INVALID_ARGUMENT (channels not 1 or 3,
// neither JPEG nor PNG, an unsupported variant such as 12-bit JPEG, a file over 1 GiB, more than
// 178956970 pixels as PIL refuses, or a side over 65535); DATA_LOSS (empty, damaged or truncated
// data). A bad file never aborts the process.
StatusOr<torch::Tensor> DecodeImageFile(const std::string& path, int64_t channels);
// The same for bytes already in memory; `name` stands for the file in messages.
StatusOr<torch::Tensor> DecodeImage(const std::string& bytes, int64_t channels,
                                    const std::string& name);

// Encodes uint8 [H, W, 1 or 3] (gray or RGB, sides up to 65500) as a baseline JPEG at `quality`
// (1..100) with libjpeg's defaults, 4:2:0 chroma subsampling as PIL's save uses them; for writing
// test and benchmark images. INVALID_ARGUMENT for another shape, dtype or quality.
StatusOr<std::string> EncodeJpeg(const torch::Tensor& hwc_uint8, int quality);

// timm's evaluation transform of one decoded image (uint8 [H, W, in_chans], e.g. DecodeImage's):
//  1. resize as torchvision's Resize(int) does with PIL: the shorter side to s = floor(img_size /
//     crop_pct), the longer to int(s * long / short) in double precision; no resampling at all
//     when the shorter side is already s. PIL's Image.resize: separable, horizontal pass first,
//     filter support widened by the downscale factor, bicubic a = -0.5, weights normalized then
//     in 22-bit fixed point, each pass rounded and clipped to uint8; nearest takes the source pixel
//     PIL's affine scaling takes (about floor((x + 0.5) * in / out));
//  2. centre crop img_size x img_size at top int(round((h - img_size) / 2.0)) with Python's
//     round half to even, left likewise; a side shorter than img_size (only when crop_pct > 1) is
//     first padded with zeros, d // 2 before and (d + 1) // 2 after, as torchvision's CenterCrop;
//  3. ToTensor: float32 [in_chans, img_size, img_size] = pixel / 255, NOT normalized.
// Only the pixels inside the crop are computed. INVALID_ARGUMENT for a bad transform
// (CheckEvalTransform), an input that is not uint8 [H, W, in_chans] with H, W >= 1, or a resized
// side past 2^31 - 1 (PIL's limit).
StatusOr<torch::Tensor> ApplyEvalTransform(const torch::Tensor& hwc_uint8,
                                           const EvalTransform& transform);

// DecodeImageFile(path, transform.in_chans) then ApplyEvalTransform; the errors of both.
StatusOr<torch::Tensor> ReadEvalImage(const std::string& path, const EvalTransform& transform);

}  // namespace qs::core

#endif  // QS_CORE_IMAGE_IO_H_

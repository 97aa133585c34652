// Converts LibTorch exceptions into Status at core's public entry points.
//
//   return GuardTorch("quantize", [&]() -> StatusOr<Tensor> { ... });
#ifndef QS_CORE_TORCH_STATUS_H_
#define QS_CORE_TORCH_STATUS_H_

#include <exception>
#include <new>
#include <string>

#include <c10/util/Exception.h>

#include "common/status.h"

namespace qs::core {

// Runs `fn` and maps any exception to a Status prefixed with `what`: running out of memory (a
// CUDA c10::OutOfMemoryError, the CPU allocator's c10::Error, std::bad_alloc) to
// RESOURCE_EXHAUSTED, which is transient, other c10 errors (shape, dtype) to INVALID_ARGUMENT,
// anything else to INTERNAL.
template <typename Fn>
auto GuardTorch(const std::string& what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::OutOfMemoryError& e) {
    return ResourceExhaustedError(what + ": out of memory: " + e.what_without_backtrace());
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    // LibTorch's CPU allocator reports failure as a plain c10::Error.
    if (message.find("DefaultCPUAllocator") != std::string::npos) {
      return ResourceExhaustedError(what + ": out of memory: " + message);
    }
    return InvalidArgumentError(what + ": " + message);
  } catch (const std::bad_alloc& e) {
    return ResourceExhaustedError(what + ": out of memory: " + e.what());
  } catch (const std::exception& e) {
    return InternalError(what + ": " + e.what());
  }
}

}  // namespace qs::core

#endif  // QS_CORE_TORCH_STATUS_H_

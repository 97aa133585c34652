// Converts LibTorch exceptions into Status at core's public entry points.
//
//   return GuardTorch("quantize", [&]() -> StatusOr<Tensor> { ... });
#ifndef QS_CORE_TORCH_STATUS_H_
#define QS_CORE_TORCH_STATUS_H_

#include <exception>
#include <string>

#include <c10/util/Exception.h>

#include "common/status.h"

namespace qs::core {

// Runs `fn` and maps any exception to a Status prefixed with `what`: c10 out-of-memory to
// RESOURCE_EXHAUSTED, other c10 errors (shape, dtype) to INVALID_ARGUMENT, anything else to INTERNAL.
template <typename Fn>
auto GuardTorch(const std::string& what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::OutOfMemoryError& e) {
    return ResourceExhaustedError(what + ": out of memory: " + e.what_without_backtrace());
  } catch (const c10::Error& e) {
    return InvalidArgumentError(what + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return InternalError(what + ": " + e.what());
  }
}

}  // namespace qs::core

#endif  // QS_CORE_TORCH_STATUS_H_

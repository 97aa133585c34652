#include "core/kernel_choice.h"

namespace qs::core {
namespace {

thread_local int forced_tensor_ops = 0;

}  // namespace

bool UseCpuKernel(const torch::Tensor& t) { return forced_tensor_ops == 0 && t.is_cpu(); }

ForceTensorOpsForTesting::ForceTensorOpsForTesting() { ++forced_tensor_ops; }
ForceTensorOpsForTesting::~ForceTensorOpsForTesting() { --forced_tensor_ops; }

}  // namespace qs::core

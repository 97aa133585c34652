// Where core has two implementations of one step, plain loops over CPU tensors (fast on small
// operands, where a tensor op costs more to launch than to run) and tensor operations (any
// device), this picks one. Both compute the same arithmetic; tests force the tensor-op path on
// the CPU to check that the two agree bit for bit.
//
//   if (UseCpuKernel(w)) { ...loops over w.data_ptr<double>()... } else { ...tensor ops... }
//   { ForceTensorOpsForTesting scoped; ... }   // this thread takes the tensor-op path
#ifndef QS_CORE_KERNEL_CHOICE_H_
#define QS_CORE_KERNEL_CHOICE_H_

#include <torch/types.h>

namespace qs::core {

// True when `t` lives on the CPU and this thread is not forcing tensor ops.
bool UseCpuKernel(const torch::Tensor& t);

// While alive, UseCpuKernel is false on the constructing thread.
class ForceTensorOpsForTesting {
 public:
  ForceTensorOpsForTesting();
  ~ForceTensorOpsForTesting();
  ForceTensorOpsForTesting(const ForceTensorOpsForTesting&) = delete;
  ForceTensorOpsForTesting& operator=(const ForceTensorOpsForTesting&) = delete;
};

}  // namespace qs::core

#endif  // QS_CORE_KERNEL_CHOICE_H_

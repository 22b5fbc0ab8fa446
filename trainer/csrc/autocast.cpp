// tch exposes autocast on/off but not its dtype; CUDA autocast defaults to float16, and
// nasop trains in bfloat16 (no loss scaling needed).
#include <ATen/autocast_mode.h>

extern "C" void nasop_autocast_cuda_bf16() {
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
}

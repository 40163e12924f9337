// The Python module of the extension. Operators register themselves with the dispatcher
// (TORCH_LIBRARY_FRAGMENT(sgan_ext, ...) in their own files: cpu/*.cpp defines the schema and the
// CPU kernel, cuda/*.cu the CUDA kernel); importing sgan._C loads them as torch.ops.sgan_ext.*.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef SGAN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}

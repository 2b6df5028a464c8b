"""Low-precision numerics: NVFP4 and MXFP8 quantizers, the random Hadamard transform and
quantized linear layers, all emulated in float32 so that they run on any device."""

// The memory floor's yardstick, measured several ways on one 1 GiB buffer: a read stream and a
// copy, each with scalar 4-byte loads (what the bench's copy kernel issues) and with 16-byte
// vector loads (what a fast kernel's loader issues). The bench divides bytes by one of these; this
// says how far apart they are on this card.
//
// Build and run on the GPU machine: `nvcc -O3 -arch=sm_90 -o read_bandwidth read_bandwidth.cu &&
// ./read_bandwidth`. Prints GB/s (bytes read plus bytes written per second).
#include <cstdio>
#include <cuda_runtime.h>

// Sums every element (so the loads are not removed) and writes one value per thread.
template <typename T> __device__ float sum_of(T v);
template <> __device__ float sum_of(float v) { return v; }
template <> __device__ float sum_of(float4 v) { return v.x + v.y + v.z + v.w; }

template <typename T> __global__ void read_stream(const T *__restrict__ input, float *out, size_t len) {
    float total = 0.f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len; i += (size_t)gridDim.x * blockDim.x)
        total += sum_of(input[i]);
    if (total == 1234.5f) out[0] = total;  // never true for the zeroed buffer; keeps the loads
}

template <typename T> __global__ void copy_stream(const T *__restrict__ input, T *output, size_t len) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len; i += (size_t)gridDim.x * blockDim.x)
        output[i] = input[i];
}

// Best of 20 timed launches, in GB/s for `bytes` moved per launch.
template <typename Launch> double best_rate(Launch launch, double bytes) {
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    launch();
    float best = 1e30f;
    for (int repeat = 0; repeat < 20; ++repeat) {
        cudaEventRecord(start);
        launch();
        cudaEventRecord(stop);
        cudaEventSynchronize(stop);
        float ms = 0.f;
        cudaEventElapsedTime(&ms, start, stop);
        best = ms < best ? ms : best;
    }
    return bytes / (best * 1e-3) / 1e9;
}

int main() {
    const size_t bytes = (size_t)1 << 30;
    const size_t floats = bytes / sizeof(float);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    float *input, *output, *out;
    cudaMalloc(&input, bytes);
    cudaMalloc(&output, bytes);
    cudaMalloc(&out, sizeof(float));
    cudaMemset(input, 0, bytes);
    const int threads = 256;
    // The bench's copy kernel launches min(len / 256, 65535) cubes of 256 units.
    const int bench_blocks = (int)((floats + threads - 1) / threads < 65535 ? (floats + threads - 1) / threads : 65535);
    const int blocks = sms * 8;
    printf("sms %d, %zu MiB\n", sms, bytes >> 20);
    printf("copy, 4-byte loads (the bench's yardstick): %.0f GB/s\n",
           best_rate([&] { copy_stream<float><<<bench_blocks, threads>>>(input, output, floats); }, 2.0 * bytes));
    printf("copy, 16-byte loads:                        %.0f GB/s\n",
           best_rate([&] { copy_stream<float4><<<blocks, threads>>>((const float4 *)input, (float4 *)output, floats / 4); }, 2.0 * bytes));
    printf("read, 4-byte loads:                         %.0f GB/s\n",
           best_rate([&] { read_stream<float><<<blocks, threads>>>(input, out, floats); }, bytes));
    printf("read, 16-byte loads:                        %.0f GB/s\n",
           best_rate([&] { read_stream<float4><<<blocks, threads>>>((const float4 *)input, out, floats / 4); }, bytes));
    cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) {
        printf("CUDA error: %s\n", cudaGetErrorString(error));
        return 1;
    }
    return 0;
}

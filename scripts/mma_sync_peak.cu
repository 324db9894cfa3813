// The ceiling of `mma.sync` on this GPU: bf16 m16n8k16 MMAs with f32 accumulators, the
// instruction every tensor-core kernel of this workspace issues (CubeCL 0.10 has no wgmma).
// Each warp keeps `CHAINS` independent accumulators in registers and multiplies the same
// fragments into them; no memory traffic inside the loop, so the rate is the tensor pipe's.
//
// Build and run on the GPU machine: `nvcc -O3 -arch=sm_90 -o mma_sync_peak mma_sync_peak.cu &&
// ./mma_sync_peak`. Prints TFLOP/s for several warps per SM; docs/PERF.md has the numbers.
#include <cstdio>
#include <cuda_runtime.h>

constexpr int CHAINS = 8;
constexpr int ITERATIONS = 1 << 14;

__global__ void mma_chains(const unsigned *seed, float *out, int iterations) {
    unsigned a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = seed[(threadIdx.x + i) % 64];
    for (int i = 0; i < 2; ++i) b[i] = seed[(threadIdx.x + 7 * i) % 64];
    float acc[CHAINS][4] = {};
    for (int it = 0; it < iterations; ++it) {
#pragma unroll
        for (int c = 0; c < CHAINS; ++c) {
            asm volatile(
                "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                : "+f"(acc[c][0]), "+f"(acc[c][1]), "+f"(acc[c][2]), "+f"(acc[c][3])
                : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
        }
    }
    float total = 0.f;
    for (int c = 0; c < CHAINS; ++c)
        for (int i = 0; i < 4; ++i) total += acc[c][i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = total;
}

int main() {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    unsigned host_seed[64];
    for (int i = 0; i < 64; ++i) host_seed[i] = 0x3c003c00u ^ (i * 0x00010001u);  // bf16 ~1.0
    unsigned *seed;
    float *out;
    cudaMalloc(&seed, sizeof host_seed);
    cudaMemcpy(seed, host_seed, sizeof host_seed, cudaMemcpyHostToDevice);
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    printf("sms %d, %d chains per warp, %d iterations\n", sms, CHAINS, ITERATIONS);
    for (int warps_per_sm : {4, 8, 16, 32}) {
        int warps_per_block = 4;
        int blocks = sms * warps_per_sm / warps_per_block;
        int threads = warps_per_block * 32;
        cudaMalloc(&out, sizeof(float) * blocks * threads);
        mma_chains<<<blocks, threads>>>(seed, out, 64);  // warm-up
        float best = 1e30f;
        for (int repeat = 0; repeat < 5; ++repeat) {
            cudaEventRecord(start);
            mma_chains<<<blocks, threads>>>(seed, out, ITERATIONS);
            cudaEventRecord(stop);
            cudaEventSynchronize(stop);
            float ms = 0.f;
            cudaEventElapsedTime(&ms, start, stop);
            best = ms < best ? ms : best;
        }
        double flops = 2.0 * 16 * 8 * 16 * CHAINS * (double)ITERATIONS * blocks * warps_per_block;
        printf("warps/SM %2d: %.3f ms, %.0f TFLOP/s\n", warps_per_sm, best, flops / best / 1e9);
        cudaFree(out);
    }
    cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) {
        printf("CUDA error: %s\n", cudaGetErrorString(error));
        return 1;
    }
    return 0;
}

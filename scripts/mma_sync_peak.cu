// The ceilings of `mma.sync` on this GPU, one per operand type the kernels can issue (CubeCL 0.10
// has no wgmma):
// - bf16 m16n8k16 with f32 accumulators, the instruction of every bf16/f16 kernel here;
// - e4m3 m16n8k32 with f32 accumulators (FP8, sm_89+), what a W8A8 FP8 prefill would issue;
// - s8 m16n8k32 with s32 accumulators (INT8), what a W8A8 INT8 path would issue.
// Each warp keeps `CHAINS` independent accumulators in registers and multiplies the same
// fragments into them; no memory traffic inside the loop, so the rate is the tensor pipe's.
//
// Build and run on the GPU machine: `nvcc -O3 -arch=sm_90 -o mma_sync_peak mma_sync_peak.cu &&
// ./mma_sync_peak`. Prints TFLOP/s (TOP/s for s8) for several warps per SM; docs/PERF.md has the
// numbers.
#include <cstdio>
#include <cuda_runtime.h>

constexpr int CHAINS = 8;
constexpr int ITERATIONS = 1 << 14;

enum class Operands { Bf16, E4m3, S8 };

// Multiply-adds per instruction: m * n * k.
template <Operands O> constexpr int mma_k() { return O == Operands::Bf16 ? 16 : 32; }

template <Operands O> __device__ void mma(float (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    if constexpr (O == Operands::Bf16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else if constexpr (O == Operands::E4m3) {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        // s32 accumulators live in the same registers, reinterpreted.
        int *c = reinterpret_cast<int *>(acc);
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

template <Operands O> __global__ void mma_chains(const unsigned *seed, float *out, int iterations) {
    unsigned a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = seed[(threadIdx.x + i) % 64];
    for (int i = 0; i < 2; ++i) b[i] = seed[(threadIdx.x + 7 * i) % 64];
    float acc[CHAINS][4] = {};
    for (int it = 0; it < iterations; ++it) {
#pragma unroll
        for (int c = 0; c < CHAINS; ++c) mma<O>(acc[c], a, b);
    }
    float total = 0.f;
    for (int c = 0; c < CHAINS; ++c)
        for (int i = 0; i < 4; ++i) total += acc[c][i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = total;
}

// Times the instruction at 4 to 32 warps per SM and prints the rate of each.
template <Operands O> void measure(const char *name, const unsigned *seed, int sms) {
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (int warps_per_sm : {4, 8, 16, 32}) {
        int warps_per_block = 4;
        int blocks = sms * warps_per_sm / warps_per_block;
        int threads = warps_per_block * 32;
        float *out;
        cudaMalloc(&out, sizeof(float) * blocks * threads);
        mma_chains<O><<<blocks, threads>>>(seed, out, 64);  // warm-up
        float best = 1e30f;
        for (int repeat = 0; repeat < 5; ++repeat) {
            cudaEventRecord(start);
            mma_chains<O><<<blocks, threads>>>(seed, out, ITERATIONS);
            cudaEventRecord(stop);
            cudaEventSynchronize(stop);
            float ms = 0.f;
            cudaEventElapsedTime(&ms, start, stop);
            best = ms < best ? ms : best;
        }
        double flops = 2.0 * 16 * 8 * mma_k<O>() * CHAINS * (double)ITERATIONS * blocks * warps_per_block;
        printf("%-5s warps/SM %2d: %.3f ms, %.0f TFLOP/s\n", name, warps_per_sm, best, flops / best / 1e9);
        cudaFree(out);
    }
}

int main() {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    // Operand bits near 1.0 in bf16 pairs; as e4m3 or s8 bytes they are small finite values.
    unsigned host_seed[64];
    for (int i = 0; i < 64; ++i) host_seed[i] = 0x3c003c00u ^ (i * 0x00010001u);
    unsigned *seed;
    cudaMalloc(&seed, sizeof host_seed);
    cudaMemcpy(seed, host_seed, sizeof host_seed, cudaMemcpyHostToDevice);
    printf("sms %d, %d chains per warp, %d iterations\n", sms, CHAINS, ITERATIONS);
    measure<Operands::Bf16>("bf16", seed, sms);
    measure<Operands::E4m3>("e4m3", seed, sms);
    measure<Operands::S8>("s8", seed, sms);
    cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) {
        printf("CUDA error: %s\n", cudaGetErrorString(error));
        return 1;
    }
    return 0;
}

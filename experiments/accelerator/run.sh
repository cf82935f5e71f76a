#!/usr/bin/env bash
# Every accelerator figure of BENCHMARKS.md in one call, within 8 minutes on one GPU:
#
#   bash experiments/accelerator/run.sh [OUT]          # OUT: experiments/accelerator/results
#   bash experiments/accelerator/run.sh --smoke [OUT]  # a CPU check at tiny sizes, OUT in /tmp
#
# Parts, most wanted first; each runs under `timeout` with its own cap, all under one deadline
# (TOTAL_S, default 450 s), and a part that fails or runs out of time is recorded and the next
# one runs. Writes OUT/env.json (device, versions), OUT/<part>.jsonl (the benchmark's JSON
# lines), OUT/<part>.log (its stderr), OUT/parts.jsonl (status and seconds of each part) and
# OUT/summary.md (tables to paste into BENCHMARKS.md). Exit status 1 if any part failed.
#
# Estimated on one H200 (989 TFLOP/s bf16 dense, 4.8 TB/s), each part being a fresh process
# (~10-15 s of start-up and device set-up):
#   env             device and versions                                        ~10 s
#   train cudnn     train_speed, configs/llada_100m.py (114M, 32 x 1024 tokens,
#                   0.79 GFLOP/token: 26 TFLOP/step, 66 ms at 40% MFU), 23 steps
#                   ~2 s + compile 20-40 s                                  ~60 s (cap 120)
#   sample 1b       sample_speed, configs/llada_1b.py (1.03B) at batch 1 and 16: a step is
#                   4.7 TFLOP at 16 (4.8 ms roofline), memory-bound at 1 (4.1 GB of float32
#                   parameters: >= 0.9 ms); 4 methods x 4 rounds x 128 steps ~30 s, 8
#                   compiles of a 1B model 60-120 s                        ~150 s (cap 190)
#   sample small    sample_speed, configs/llada_small.py (3.6M): the per-step loop's
#                   dispatch dominates (~0.5 s a run, 48 runs), compiles ~30 s  ~60 s (cap 80)
#   train xla       as train cudnn with XLA attention, for comparison    ~60 s (the rest, <= 90)
#   summary                                                                      ~2 s
# About 5.5 minutes expected, 8 at most.
set -euo pipefail
cd "$(dirname "$0")/../.."

smoke=0
if [[ "${1:-}" == --smoke ]]; then
  smoke=1
  shift
fi
out=${1:-experiments/accelerator/results}
if (( smoke )); then
  out=${1:-/tmp/accelerator_smoke}
fi
total_s=${TOTAL_S:-450}
python=${PYTHON:-python}
mkdir -p "$out"
: > "$out/parts.jsonl"
start=$SECONDS

train_args=(--steps=20 --warmup=3)
sample_args=()
big_sample_args=(--repeats=3)
shrink=()
label=''
if (( smoke )); then  # the same configs and commands, shrunk to seconds on a CPU
  shrink=(--config.model.d_model=64 --config.model.n_layers=2 --config.model.n_heads=4
          --config.model.n_kv_heads=4 --config.model.mlp_dim=128)
  train_args=(--steps=2 --warmup=1 --config.data.seq_len=32 --config.train.batch_size=8)
  sample_args=(--gen_length=8 --steps=8 --block_length=4 --batch_sizes=1,2 --repeats=1)
  big_sample_args=()
  label=' (smoke: shrunk)'
fi

json_string() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# record NAME KIND CONFIG ATTENTION STATUS SECONDS BUDGET COMMAND
record() {
  printf '{"part": %s, "kind": %s, "config": %s, "attention": %s, "status": %s, ' \
    "$(json_string "$1")" "$(json_string "$2")" "$(json_string "$3")" "$(json_string "$4")" \
    "$(json_string "$5")" >> "$out/parts.jsonl"
  printf '"seconds": %d, "budget_s": %d, "command": %s}\n' "$6" "$7" "$(json_string "$8")" \
    >> "$out/parts.jsonl"
  echo "== $1: $5 ($6 s)" >&2
}

failed=0
# part NAME KIND CONFIG ATTENTION CAP_S COMMAND...: COMMAND's stdout to OUT/NAME.jsonl.
part() {
  local name=$1 kind=$2 config=$3 attention=$4 cap=$5
  shift 5
  local left=$(( total_s - (SECONDS - start) )) rc=0 t0=$SECONDS status
  if (( left < cap )); then
    cap=$left
  fi
  if (( cap < 15 )); then
    status='skipped: no time left'
  else
    echo "== $name (up to $cap s): $*" >&2
    timeout -k 10 "$cap" "$@" > "$out/$name.jsonl" 2> "$out/$name.log" || rc=$?
    case $rc in
      0) status=ok ;;
      124|137) status="timed out after $cap s"; failed=1 ;;
      *) status="failed (exit $rc; see $name.log)"; failed=1 ;;
    esac
  fi
  record "$name" "$kind" "$config$label" "$attention" "$status" $(( SECONDS - t0 )) "$cap" "$*"
}

backend=$(timeout -k 10 60 "$python" -m dllm_jax.benchmarks.accelerator --out="$out" \
          --write=env 2> "$out/env.log" | tail -n 1) || backend=unknown
echo "== backend: $backend" >&2

train=("$python" -m dllm_jax.benchmarks.train_speed --config=configs/llada_100m.py
       "${shrink[@]}" "${train_args[@]}")
if [[ $backend == gpu ]]; then
  part train_llada_100m_cudnn train llada_100m.py cudnn 120 \
    "${train[@]}" --config.model.attention_impl=cudnn
else  # cuDNN attention exists only on NVIDIA GPUs
  record train_llada_100m_cudnn train "llada_100m.py$label" cudnn \
    "skipped: needs an NVIDIA GPU (backend: $backend)" 0 0 \
    "${train[*]} --config.model.attention_impl=cudnn"
fi
part sample_llada_1b sample llada_1b.py xla 190 \
  "$python" -m dllm_jax.benchmarks.sample_speed --config=configs/llada_1b.py "${shrink[@]}" \
  "${sample_args[@]}" "${big_sample_args[@]}"
part sample_llada_small sample llada_small.py xla 80 \
  "$python" -m dllm_jax.benchmarks.sample_speed --config=configs/llada_small.py "${shrink[@]}" \
  "${sample_args[@]}"
part train_llada_100m_xla train llada_100m.py xla 90 \
  "${train[@]}" --config.model.attention_impl=xla

"$python" -m dllm_jax.benchmarks.accelerator --out="$out" --write=summary > /dev/null \
  || { echo "== summary failed" >&2; failed=1; }
echo "== wrote $out/summary.md in $(( SECONDS - start )) s" >&2
exit "$failed"

# Helpers the shell tests source (from the runfiles root):
#   source tests/testlib.sh
#   python="$(venv_python)" || exit 1
#   write_tiny_run "$work" "parallel: {tp: 2}"   # $work/{config.json,text.txt,run.yaml}

# The project's venv python (tools/setup.sh), found through the
# site-packages path Bazel was configured with.
venv_python() {
  local site python
  site="$(cat .deps/site-packages.path)"
  python="$(readlink -f "$site/../../..")/bin/python"
  [[ -x "$python" ]] || { echo "no venv python at $python (run tools/setup.sh)" >&2; return 1; }
  echo "$python"
}

# A tiny byte-level Llama run in DIR: config.json, text.txt and run.yaml
# (6 steps, global batch 4, output_dir DIR/run); EXTRA is added to run.yaml.
write_tiny_run() {
  local dir="$1" extra="${2:-}"
  cat >"$dir/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
 "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32"}
JSON
  for i in $(seq 1 60); do echo "To be, or not to be, that is the question $i."; done >"$dir/text.txt"
  cat >"$dir/run.yaml" <<YAML
model: {config: $dir/config.json}
data: {text: $dir/text.txt, seq_len: 32}
train: {steps: 6, global_batch: 4, device: cpu}
optimizer: {lr: 3.0e-3}
output_dir: $dir/run
$extra
YAML
}

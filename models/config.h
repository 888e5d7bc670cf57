// ModelConfig: a Hugging Face config.json with transformers' semantics.
//
// Defaults follow the architecture's Config class when a key is absent (as
// save_pretrained leaves out values equal to the defaults):
// num_key_value_heads = num_attention_heads, head_dim = hidden_size /
// num_attention_heads, rope_theta 10000, rms_norm_eps 1e-6, ...
//
//   ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig("/models/llama"));
//   config.architecture == "LlamaForCausalLM";
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/json.h"

namespace weft {

struct RopeScaling {
  /// "default", "linear", "dynamic", "llama3" or "yarn".
  std::string type = "default";
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  // yarn
  std::optional<double> attention_factor;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  /// yarn: round the correction range outward to whole dims (transformers'
  /// default; gpt-oss sets false).
  bool truncate = true;
};

struct ModelConfig {
  std::string architecture;  // architectures[0], e.g. "LlamaForCausalLM"
  std::string model_type;    // e.g. "llama"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  /// Standard deviation of the normal initialisation (models/init.h).
  double initializer_range = 0.02;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v/o biases (Qwen2: q/k/v always)
  bool mlp_bias = false;
  std::string hidden_act = "silu";
  std::string torch_dtype = "float32";
  /// Attention window in tokens; nullopt: full causal attention.
  std::optional<int64_t> sliding_window;
  /// Token ids: any non-negative id (0 included), or absent for null.
  std::optional<int64_t> bos_token_id;
  /// The first end-of-sequence id; `eos_token_ids` holds all of them (a
  /// list in transformers' config.json: generation stops at any).
  std::optional<int64_t> eos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  /// The parsed file, for architecture-specific keys.
  JsonValue json;
};

/// Parses `text` (a config.json); errors name the key and the value.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view text);

/// Reads `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

/// The scalar type config.json's torch_dtype names; error:
/// `config.json: torch_dtype int8 is not supported (expected float32, ...)`.
absl::StatusOr<at::ScalarType> ModelDtype(const ModelConfig& config);

/// transformers 5's rope_parameters object, or one per-layer-type entry of
/// it (Gemma 3's "full_attention" / "sliding_attention"): rope_theta (left
/// as it is when absent) and the scaling.
absl::Status ParseRopeParameters(const JsonValue& params, double& rope_theta, RopeScaling& scaling);

// Keys one architecture reads beyond ModelConfig's. They throw a one-line
// c10::Error naming the key, the value and what was expected: model
// constructors run inside compute, where errors are exceptions.

/// A number; `fallback` when absent or null.
double ConfigNumber(const ModelConfig& c, absl::string_view key, double fallback);
/// A boolean; `fallback` when absent or null.
bool ConfigBool(const ModelConfig& c, absl::string_view key, bool fallback);
/// A string; `fallback` when absent or null.
std::string ConfigString(const ModelConfig& c, absl::string_view key, const std::string& fallback);
/// A list of integers; `fallback` when absent or null.
std::vector<int64_t> ConfigInts(const ModelConfig& c, absl::string_view key,
                                const std::vector<int64_t>& fallback);
/// config.json's layer_types ("full_attention" or "sliding_attention" per
/// layer, as transformers 5 writes it), else `fallback(layer)` per layer.
std::vector<std::string> LayerTypes(const ModelConfig& c,
                                    const std::function<std::string(int64_t layer)>& fallback);

}  // namespace weft

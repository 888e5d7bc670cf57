#include "models/config.h"

#include <c10/util/Exception.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "base/dtype.h"
#include "base/status.h"
#include "base/text_file.h"

namespace weft {
namespace {

absl::Status Bad(absl::string_view key, const JsonValue& v, absl::string_view expected) {
  std::string found = v.is_string() ? JsonQuote(v.text) : v.is_number() ? v.text : "a non-scalar";
  if (v.type == JsonValue::Type::kNull) found = "null";
  if (v.type == JsonValue::Type::kBool) found = v.boolean ? "true" : "false";
  return absl::InvalidArgumentError(
      absl::StrCat("config.json: ", key, " is ", found, " (expected ", expected, ")"));
}

absl::Status Int(const JsonValue& root, absl::string_view key, int64_t& out, bool required) {
  const JsonValue* v = root.Find(key);
  if (v == nullptr || v->type == JsonValue::Type::kNull) {
    if (required) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: ", key, " is missing (expected a positive integer)"));
    }
    return absl::OkStatus();
  }
  auto value = v->AsUint64();
  if (!value || *value == 0 || *value > static_cast<uint64_t>(INT64_MAX)) {
    return Bad(key, *v, "a positive integer");
  }
  out = static_cast<int64_t>(*value);
  return absl::OkStatus();
}

// A token id: any non-negative integer (0 included), or null; with `list`
// also a list of them (transformers' eos_token_id). `first` is the first id.
absl::Status TokenIds(const JsonValue& root, absl::string_view key, bool list,
                      std::optional<int64_t>& first, std::vector<int64_t>* all) {
  const JsonValue* v = root.Find(key);
  if (v == nullptr || v->type == JsonValue::Type::kNull) return absl::OkStatus();
  const char* expected =
      list ? "a non-negative token id, a list of them, or null" : "a non-negative token id or null";
  std::vector<const JsonValue*> items;
  if (list && v->is_array()) {
    for (const JsonValue& item : v->items) items.push_back(&item);
  } else {
    items.push_back(v);
  }
  std::vector<int64_t> ids;
  for (const JsonValue* item : items) {
    auto value = item->AsUint64();
    if (!value || *value > static_cast<uint64_t>(INT64_MAX)) return Bad(key, *item, expected);
    ids.push_back(static_cast<int64_t>(*value));
  }
  if (!ids.empty()) first = ids.front();
  if (all != nullptr) *all = ids;
  return absl::OkStatus();
}

absl::Status Double(const JsonValue& root, absl::string_view key, double& out) {
  const JsonValue* v = root.Find(key);
  if (v == nullptr || v->type == JsonValue::Type::kNull) return absl::OkStatus();
  if (!v->is_number()) return Bad(key, *v, "a number");
  out = *v->AsDouble();
  return absl::OkStatus();
}

absl::Status Bool(const JsonValue& root, absl::string_view key, bool& out) {
  const JsonValue* v = root.Find(key);
  if (v == nullptr || v->type == JsonValue::Type::kNull) return absl::OkStatus();
  if (v->type != JsonValue::Type::kBool) return Bad(key, *v, "true or false");
  out = v->boolean;
  return absl::OkStatus();
}

absl::Status String(const JsonValue& root, absl::string_view key, std::string& out) {
  const JsonValue* v = root.Find(key);
  if (v == nullptr || v->type == JsonValue::Type::kNull) return absl::OkStatus();
  if (!v->is_string()) return Bad(key, *v, "a string");
  out = v->text;
  return absl::OkStatus();
}

absl::Status ParseRopeScaling(const JsonValue* v, RopeScaling& out) {
  if (v == nullptr || v->type == JsonValue::Type::kNull) return absl::OkStatus();
  if (!v->is_object()) return Bad("rope_scaling", *v, "an object or null");
  // transformers reads "rope_type", falling back to the legacy "type".
  std::string type;
  RETURN_IF_ERROR(String(*v, "type", type));
  RETURN_IF_ERROR(String(*v, "rope_type", type));
  if (type.empty()) type = "default";
  if (type != "default" && type != "linear" && type != "dynamic" && type != "llama3" &&
      type != "yarn") {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: rope_scaling.rope_type is \"", type,
                     "\" (expected default, linear, dynamic, llama3 or yarn)"));
  }
  out.type = type;
  RETURN_IF_ERROR(Double(*v, "factor", out.factor));
  RETURN_IF_ERROR(Double(*v, "low_freq_factor", out.low_freq_factor));
  RETURN_IF_ERROR(Double(*v, "high_freq_factor", out.high_freq_factor));
  RETURN_IF_ERROR(
      Int(*v, "original_max_position_embeddings", out.original_max_position_embeddings, false));
  RETURN_IF_ERROR(Double(*v, "beta_fast", out.beta_fast));
  RETURN_IF_ERROR(Double(*v, "beta_slow", out.beta_slow));
  RETURN_IF_ERROR(Bool(*v, "truncate", out.truncate));
  if (const JsonValue* a = v->Find("attention_factor"); a && a->is_number()) {
    out.attention_factor = *a->AsDouble();
  }
  if (type != "default" && out.factor <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: rope_scaling.factor is ", out.factor, " (expected > 0)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseRopeParameters(const JsonValue& params, double& rope_theta,
                                 RopeScaling& scaling) {
  RETURN_IF_ERROR(Double(params, "rope_theta", rope_theta));
  return ParseRopeScaling(&params, scaling);
}

namespace {

const JsonValue* Present(const ModelConfig& c, absl::string_view key) {
  const JsonValue* v = c.json.Find(key);
  return v == nullptr || v->type == JsonValue::Type::kNull ? nullptr : v;
}

[[noreturn]] void ThrowBad(absl::string_view key, const JsonValue& v, absl::string_view expected) {
  TORCH_CHECK(false, std::string(Bad(key, v, expected).message()));
}

}  // namespace

double ConfigNumber(const ModelConfig& c, absl::string_view key, double fallback) {
  const JsonValue* v = Present(c, key);
  if (v == nullptr) return fallback;
  if (!v->is_number()) ThrowBad(key, *v, "a number");
  return *v->AsDouble();
}

bool ConfigBool(const ModelConfig& c, absl::string_view key, bool fallback) {
  const JsonValue* v = Present(c, key);
  if (v == nullptr) return fallback;
  if (v->type != JsonValue::Type::kBool) ThrowBad(key, *v, "true or false");
  return v->boolean;
}

std::string ConfigString(const ModelConfig& c, absl::string_view key, const std::string& fallback) {
  const JsonValue* v = Present(c, key);
  if (v == nullptr) return fallback;
  if (!v->is_string()) ThrowBad(key, *v, "a string");
  return v->text;
}

std::vector<int64_t> ConfigInts(const ModelConfig& c, absl::string_view key,
                                const std::vector<int64_t>& fallback) {
  const JsonValue* v = Present(c, key);
  if (v == nullptr) return fallback;
  if (!v->is_array()) ThrowBad(key, *v, "a list of integers");
  std::vector<int64_t> out;
  for (const JsonValue& item : v->items) {
    if (!item.is_number() || !item.AsUint64()) ThrowBad(key, item, "a list of integers");
    out.push_back(static_cast<int64_t>(*item.AsUint64()));
  }
  return out;
}

std::vector<std::string> LayerTypes(const ModelConfig& c,
                                    const std::function<std::string(int64_t layer)>& fallback) {
  std::vector<std::string> out;
  const JsonValue* v = Present(c, "layer_types");
  if (v == nullptr) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) out.push_back(fallback(i));
    return out;
  }
  TORCH_CHECK(v->is_array() && static_cast<int64_t>(v->items.size()) == c.num_hidden_layers,
              "config.json: layer_types has ", v->is_array() ? v->items.size() : 0,
              " entries (expected a list of num_hidden_layers ", c.num_hidden_layers, " strings)");
  for (const JsonValue& item : v->items) {
    if (!item.is_string() || (item.text != "full_attention" && item.text != "sliding_attention")) {
      ThrowBad("layer_types", item, "full_attention or sliding_attention");
    }
    out.push_back(item.text);
  }
  return out;
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view text) {
  auto json = ParseJson(text);
  if (!json.ok())
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", json.status().message()));
  if (!json->is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
  ModelConfig c;
  const JsonValue& root = *json;
  if (const JsonValue* arch = root.Find("architectures");
      arch && arch->is_array() && !arch->items.empty() && arch->items[0].is_string()) {
    c.architecture = arch->items[0].text;
  }
  RETURN_IF_ERROR(String(root, "model_type", c.model_type));
  RETURN_IF_ERROR(Int(root, "hidden_size", c.hidden_size, true));
  RETURN_IF_ERROR(Int(root, "intermediate_size", c.intermediate_size, true));
  RETURN_IF_ERROR(Int(root, "num_hidden_layers", c.num_hidden_layers, true));
  RETURN_IF_ERROR(Int(root, "num_attention_heads", c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  RETURN_IF_ERROR(Int(root, "num_key_value_heads", c.num_key_value_heads, false));
  RETURN_IF_ERROR(Int(root, "vocab_size", c.vocab_size, true));
  RETURN_IF_ERROR(Int(root, "max_position_embeddings", c.max_position_embeddings, false));
  c.head_dim = c.hidden_size / c.num_attention_heads;
  RETURN_IF_ERROR(Int(root, "head_dim", c.head_dim, false));
  const JsonValue* head_dim = root.Find("head_dim");
  if ((head_dim == nullptr || head_dim->type == JsonValue::Type::kNull) &&
      c.hidden_size % c.num_attention_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ",
        c.num_attention_heads, " (expected a multiple, or an explicit head_dim)"));
  }
  RETURN_IF_ERROR(Double(root, "rms_norm_eps", c.rms_norm_eps));
  RETURN_IF_ERROR(Double(root, "rope_theta", c.rope_theta));
  RETURN_IF_ERROR(Double(root, "initializer_range", c.initializer_range));
  RETURN_IF_ERROR(ParseRopeScaling(root.Find("rope_scaling"), c.rope_scaling));
  // transformers 5 writes rope_parameters (rope_theta and the scaling together).
  if (const JsonValue* params = root.Find("rope_parameters"); params && params->is_object()) {
    RETURN_IF_ERROR(Double(*params, "rope_theta", c.rope_theta));
    RETURN_IF_ERROR(ParseRopeScaling(params, c.rope_scaling));
  }
  RETURN_IF_ERROR(Bool(root, "tie_word_embeddings", c.tie_word_embeddings));
  RETURN_IF_ERROR(Bool(root, "attention_bias", c.attention_bias));
  RETURN_IF_ERROR(Bool(root, "mlp_bias", c.mlp_bias));
  RETURN_IF_ERROR(String(root, "hidden_act", c.hidden_act));
  RETURN_IF_ERROR(String(root, "torch_dtype", c.torch_dtype));
  RETURN_IF_ERROR(String(root, "dtype", c.torch_dtype));
  bool use_sliding_window = true;
  RETURN_IF_ERROR(Bool(root, "use_sliding_window", use_sliding_window));
  int64_t window = 0;
  RETURN_IF_ERROR(Int(root, "sliding_window", window, false));
  if (window > 0 && use_sliding_window) c.sliding_window = window;
  RETURN_IF_ERROR(TokenIds(root, "bos_token_id", false, c.bos_token_id, nullptr));
  RETURN_IF_ERROR(TokenIds(root, "eos_token_id", true, c.eos_token_id, &c.eos_token_ids));
  RETURN_IF_ERROR(TokenIds(root, "pad_token_id", false, c.pad_token_id, nullptr));
  double partial_rotary = 1.0;
  RETURN_IF_ERROR(Double(root, "partial_rotary_factor", partial_rotary));
  if (const JsonValue* params = root.Find("rope_parameters"); params && params->is_object()) {
    RETURN_IF_ERROR(Double(*params, "partial_rotary_factor", partial_rotary));
  }
  if (partial_rotary != 1.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: partial_rotary_factor is ", partial_rotary,
                     " (expected 1.0: partial rotary embeddings are not supported yet)"));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: num_attention_heads ", c.num_attention_heads,
                     " is not a multiple of num_key_value_heads ", c.num_key_value_heads));
  }
  if (c.hidden_act != "silu" && c.hidden_act != "gelu" && c.hidden_act != "gelu_pytorch_tanh" &&
      c.hidden_act != "relu") {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: hidden_act is \"", c.hidden_act,
                     "\" (expected silu, gelu, gelu_pytorch_tanh or relu)"));
  }
  c.json = std::move(json).value();
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, " is a file (expected a Hugging Face checkpoint directory holding config.json)"));
  }
  std::string path = dir + "/config.json";
  auto text = ReadTextFile(path);
  if (absl::IsInvalidArgument(text.status())) return text.status();  // a directory, a FIFO
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot read (expected a config.json)"));
  }
  auto config = ParseModelConfig(*text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(dir, "/", config.status().message()));
  }
  return config;
}

absl::StatusOr<at::ScalarType> ModelDtype(const ModelConfig& config) {
  auto type = ScalarTypeFromTorchName(config.torch_dtype);
  if (!type.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: torch_dtype ", type.status().message()));
  }
  return *type;
}

}  // namespace weft

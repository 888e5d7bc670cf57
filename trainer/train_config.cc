#include "trainer/train_config.h"

#include <cmath>

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <variant>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "base/text_file.h"

namespace weft {
namespace {

using Member =
    std::variant<std::string TrainConfig::*, int TrainConfig::*, int64_t TrainConfig::*,
                 double TrainConfig::*, bool TrainConfig::*, std::vector<double> TrainConfig::*,
                 std::vector<std::string> TrainConfig::*>;

struct Field {
  const char* key;
  Member member;
};

// Every key, in the order ToYaml writes them.
const std::vector<Field>& Fields() {
  static const auto* fields = new std::vector<Field>{
      {"model.pretrained", &TrainConfig::model_pretrained},
      {"model.config", &TrainConfig::model_config},
      {"model.attn_implementation", &TrainConfig::attn_implementation},
      {"parallel.tp", &TrainConfig::tp},
      {"parallel.dp", &TrainConfig::dp},
      {"parallel.plan", &TrainConfig::plan},
      {"parallel.loss_parallel", &TrainConfig::loss_parallel},
      {"parallel.pp", &TrainConfig::pp},
      {"parallel.pp_plan", &TrainConfig::pp_plan},
      {"parallel.pp_schedule", &TrainConfig::pp_schedule},
      {"parallel.pp_microbatches", &TrainConfig::pp_microbatches},
      {"parallel.pp_stages_per_rank", &TrainConfig::pp_stages_per_rank},
      {"parallel.pp_timeout", &TrainConfig::pp_timeout},
      {"parallel.pp_trace", &TrainConfig::pp_trace},
      {"parallel.dp_shard", &TrainConfig::dp_shard},
      {"parallel.reduce_dtype", &TrainConfig::reduce_dtype},
      {"parallel.reshard_after_forward", &TrainConfig::reshard_after_forward},
      {"data.path", &TrainConfig::data_path},
      {"data.text", &TrainConfig::data_text},
      {"data.seq_len", &TrainConfig::seq_len},
      {"data.shuffle", &TrainConfig::shuffle},
      {"data.packing", &TrainConfig::packing},
      {"data.eval_path", &TrainConfig::data_eval_path},
      {"data.eval_fraction", &TrainConfig::eval_fraction},
      {"eval.every", &TrainConfig::eval_every},
      {"eval.batches", &TrainConfig::eval_batches},
      {"optimizer.lr", &TrainConfig::lr},
      {"optimizer.betas", &TrainConfig::betas},
      {"optimizer.eps", &TrainConfig::eps},
      {"optimizer.weight_decay", &TrainConfig::weight_decay},
      {"optimizer.grad_clip", &TrainConfig::grad_clip},
      {"schedule.warmup_steps", &TrainConfig::warmup_steps},
      {"schedule.decay", &TrainConfig::decay},
      {"schedule.min_lr_ratio", &TrainConfig::min_lr_ratio},
      {"train.steps", &TrainConfig::steps},
      {"train.global_batch", &TrainConfig::global_batch},
      {"train.micro_batch", &TrainConfig::micro_batch},
      {"train.precision", &TrainConfig::precision},
      {"train.activation_checkpointing", &TrainConfig::activation_checkpointing},
      {"train.seed", &TrainConfig::seed},
      {"train.resume", &TrainConfig::resume},
      {"train.device", &TrainConfig::device},
      {"checkpoint.every", &TrainConfig::checkpoint_every},
      {"checkpoint.keep", &TrainConfig::checkpoint_keep},
      {"checkpoint.export", &TrainConfig::checkpoint_export},
      {"checkpoint.merge_lora", &TrainConfig::merge_lora},
      {"lora.r", &TrainConfig::lora_r},
      {"lora.alpha", &TrainConfig::lora_alpha},
      {"lora.dropout", &TrainConfig::lora_dropout},
      {"lora.target_modules", &TrainConfig::lora_target_modules},
      {"lora.use_rslora", &TrainConfig::lora_use_rslora},
      {"logging.every", &TrainConfig::log_every},
      {"sample.prompt", &TrainConfig::sample_prompt},
      {"sample.max_new_tokens", &TrainConfig::sample_max_new_tokens},
      {"output_dir", &TrainConfig::output_dir},
  };
  return *fields;
}

// One name per concept across the CLI and the config: the CLI's names are
// accepted for the keys they mean (--tp-plan: parallel.plan, --dtype:
// train.precision).
const std::map<std::string, std::string>& KeyAliases() {
  static const auto* aliases = new std::map<std::string, std::string>{
      {"parallel.tp_plan", "parallel.plan"},
      {"train.dtype", "train.precision"},
  };
  return *aliases;
}

const Field* FindField(const std::string& key) {
  auto alias = KeyAliases().find(key);
  const std::string& name = alias == KeyAliases().end() ? key : alias->second;
  for (const Field& f : Fields())
    if (name == f.key) return &f;
  return nullptr;
}

std::string Section(const std::string& key) {
  size_t dot = key.rfind('.');
  return dot == std::string::npos ? "" : key.substr(0, dot);
}

absl::Status UnknownKey(const std::string& source, const std::string& key) {
  const std::string section = Section(key);
  std::vector<std::string> known;
  for (const Field& f : Fields()) {
    if (Section(f.key) == section)
      known.push_back(section.empty() ? f.key : std::string(f.key).substr(section.size() + 1));
  }
  if (section.empty() || known.empty()) {
    known.clear();
    for (const Field& f : Fields()) {
      std::string top = std::string(f.key).substr(0, std::string(f.key).find('.'));
      if (known.empty() || known.back() != top) known.push_back(top);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": unknown key '", key,
                     "' (known sections and keys: ", absl::StrJoin(known, ", "), ")"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": unknown key '", key, "' (known keys",
                   section.empty() ? "" : absl::StrCat(" under ", section), ": ",
                   absl::StrJoin(known, ", "), ")"));
}

std::string Shown(const YAML::Node& node) {
  if (node.IsScalar()) return absl::StrCat("'", node.Scalar(), "'");
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "null";
}

absl::Status Set(TrainConfig& config, const Field& field, const YAML::Node& node,
                 const std::string& source) {
  auto wrong = [&](const char* expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", field.key, " is ", Shown(node), " (expected ", expected, ")"));
  };
  if (auto* m = std::get_if<std::vector<double> TrainConfig::*>(&field.member)) {
    if (!node.IsSequence()) return wrong("a list of numbers");
    std::vector<double> values;
    for (const YAML::Node& item : node) {
      double v;
      if (!item.IsScalar() || !YAML::convert<double>::decode(item, v)) {
        return wrong("a list of numbers");
      }
      if (!std::isfinite(v)) return wrong("a list of finite numbers");
      values.push_back(v);
    }
    config.*(*m) = values;
    return absl::OkStatus();
  }
  if (auto* m = std::get_if<std::vector<std::string> TrainConfig::*>(&field.member)) {
    // A list of strings, or one string (PEFT's target_modules may be either).
    std::vector<std::string> values;
    if (node.IsScalar()) {
      values.push_back(node.Scalar());
    } else if (node.IsSequence()) {
      for (const YAML::Node& item : node) {
        if (!item.IsScalar()) return wrong("a list of strings");
        values.push_back(item.Scalar());
      }
    } else {
      return wrong("a list of strings");
    }
    config.*(*m) = values;
    return absl::OkStatus();
  }
  if (!node.IsScalar()) {
    if (node.IsNull() && std::holds_alternative<std::string TrainConfig::*>(field.member)) {
      config.*(std::get<std::string TrainConfig::*>(field.member)) = "";
      return absl::OkStatus();
    }
    return wrong(std::visit(
        [](auto m) -> const char* {
          using T = std::remove_reference_t<decltype(TrainConfig().*m)>;
          if constexpr (std::is_same_v<T, std::string>) return "a string";
          if constexpr (std::is_same_v<T, bool>) return "true or false";
          if constexpr (std::is_same_v<T, double>) return "a number";
          return "an integer";
        },
        field.member));
  }
  return std::visit(
      [&](auto m) -> absl::Status {
        using T = std::remove_reference_t<decltype(config.*m)>;
        if constexpr (std::is_same_v<T, std::vector<double>> ||
                      std::is_same_v<T, std::vector<std::string>>) {
          return absl::OkStatus();  // handled above
        } else if constexpr (std::is_same_v<T, std::string>) {
          config.*m = node.Scalar();
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, bool>) {
          bool v;
          if (!YAML::convert<bool>::decode(node, v)) return wrong("true or false");
          config.*m = v;
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, double>) {
          double v;
          if (!YAML::convert<double>::decode(node, v)) return wrong("a number");
          if (!std::isfinite(v)) return wrong("a finite number");
          config.*m = v;
          return absl::OkStatus();
        } else {
          T v;
          if (!YAML::convert<T>::decode(node, v)) return wrong("an integer");
          config.*m = v;
          return absl::OkStatus();
        }
      },
      field.member);
}

absl::Status Walk(TrainConfig& config, const YAML::Node& node, const std::string& prefix,
                  const std::string& source) {
  for (const auto& item : node) {
    if (!item.first.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": a key under '", prefix, "' is not a string"));
    }
    const std::string key =
        prefix.empty() ? item.first.Scalar() : absl::StrCat(prefix, ".", item.first.Scalar());
    const Field* field = FindField(key);
    if (field == nullptr && item.second.IsMap()) {
      // A section: known when some key starts with it.
      bool section = false;
      for (const Field& f : Fields()) section = section || Section(f.key) == key;
      if (!section) return UnknownKey(source, key);
      RETURN_IF_ERROR(Walk(config, item.second, key, source));
      continue;
    }
    if (field == nullptr) return UnknownKey(source, key);
    RETURN_IF_ERROR(Set(config, *field, item.second, source));
  }
  return absl::OkStatus();
}

absl::Status Invalid(const std::string& source, const std::string& key, const std::string& found,
                     const std::string& expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": ", key, " is ", found, " (expected ", expected, ")"));
}

absl::Status Validate(const TrainConfig& c, const std::string& s) {
  if (c.model_pretrained.empty() == c.model_config.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        s,
        ": set exactly one of model.pretrained (a checkpoint to fine-tune) and model.config "
        "(a config.json to train from scratch)"));
  }
  if (c.data_path.empty() == c.data_text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        s,
        ": set exactly one of data.path (a token file prefix) and data.text (a text file, "
        "byte-level)"));
  }
  if (c.tp < 1) return Invalid(s, "parallel.tp", std::to_string(c.tp), ">= 1");
  if (c.dp < 0) return Invalid(s, "parallel.dp", std::to_string(c.dp), ">= 1, or 0 for auto");
  if (c.pp < 1) return Invalid(s, "parallel.pp", std::to_string(c.pp), ">= 1");
  if (c.dp_shard < 1) return Invalid(s, "parallel.dp_shard", std::to_string(c.dp_shard), ">= 1");
  if (c.reduce_dtype != "float32" && c.reduce_dtype != "bfloat16" && c.reduce_dtype != "fp32" &&
      c.reduce_dtype != "bf16") {
    return Invalid(s, "parallel.reduce_dtype", absl::StrCat("'", c.reduce_dtype, "'"),
                   "float32 or bfloat16");
  }
  if (c.dp_shard > 1 && c.pp > 1 && absl::AsciiStrToLower(c.pp_schedule) == "zb1p") {
    return absl::InvalidArgumentError(absl::StrCat(
        s, ": parallel.pp_schedule zb1p with parallel.dp_shard ", c.dp_shard,
        " is not supported yet (zero-bubble defers weight gradients past the reduce-scatter; "
        "expected gpipe, 1f1b or interleaved_1f1b with dp_shard)"));
  }
  if (c.pp_microbatches < 0)
    return Invalid(s, "parallel.pp_microbatches", std::to_string(c.pp_microbatches),
                   ">= 1, or 0 for auto");
  if (c.pp_stages_per_rank < 0)
    return Invalid(s, "parallel.pp_stages_per_rank", std::to_string(c.pp_stages_per_rank),
                   ">= 1, or 0 for auto");
  if (c.pp_timeout < 1)
    return Invalid(s, "parallel.pp_timeout", std::to_string(c.pp_timeout), ">= 1 (seconds)");
  if (c.seq_len < 2) return Invalid(s, "data.seq_len", std::to_string(c.seq_len), ">= 2");
  if (!(c.eval_fraction >= 0 && c.eval_fraction < 1))
    return Invalid(s, "data.eval_fraction", absl::StrCat(c.eval_fraction), "in [0, 1)");
  if (c.eval_fraction > 0 && !c.data_eval_path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(s,
                     ": set at most one of data.eval_path (a token file to evaluate on) and "
                     "data.eval_fraction (documents of data.path held out)"));
  }
  if (c.lora_r < 0) return Invalid(s, "lora.r", std::to_string(c.lora_r), ">= 1, or 0 for no LoRA");
  if (c.lora_r > 0) {
    if (!(c.lora_alpha > 0)) return Invalid(s, "lora.alpha", absl::StrCat(c.lora_alpha), "> 0");
    if (!(c.lora_dropout >= 0 && c.lora_dropout < 1))
      return Invalid(s, "lora.dropout", absl::StrCat(c.lora_dropout), "in [0, 1)");
    if (c.lora_target_modules.empty())
      return Invalid(s, "lora.target_modules", "empty",
                     "PEFT names like [q_proj, v_proj], weft patterns, or all-linear");
  } else if (c.merge_lora) {
    return absl::InvalidArgumentError(
        absl::StrCat(s, ": checkpoint.merge_lora needs lora.r >= 1 (a LoRA run)"));
  }
  if (c.eval_every < 0)
    return Invalid(s, "eval.every", std::to_string(c.eval_every), ">= 1, or 0 for only at the end");
  if (c.eval_batches < 0)
    return Invalid(s, "eval.batches", std::to_string(c.eval_batches),
                   ">= 1, or 0 for the whole eval set");
  if (!(c.lr > 0)) return Invalid(s, "optimizer.lr", absl::StrCat(c.lr), "> 0");
  if (c.betas.size() != 2 || !(c.betas[0] >= 0 && c.betas[0] < 1) ||
      !(c.betas[1] >= 0 && c.betas[1] < 1)) {
    return Invalid(s, "optimizer.betas", absl::StrCat("[", absl::StrJoin(c.betas, ", "), "]"),
                   "two numbers in [0, 1)");
  }
  if (!(c.eps > 0)) return Invalid(s, "optimizer.eps", absl::StrCat(c.eps), "> 0");
  if (!(c.weight_decay >= 0))
    return Invalid(s, "optimizer.weight_decay", absl::StrCat(c.weight_decay), ">= 0");
  if (!(c.grad_clip >= 0))
    return Invalid(s, "optimizer.grad_clip", absl::StrCat(c.grad_clip), ">= 0 (0: off)");
  if (c.warmup_steps < 0)
    return Invalid(s, "schedule.warmup_steps", std::to_string(c.warmup_steps), ">= 0");
  if (c.decay != "cosine" && c.decay != "linear" && c.decay != "constant")
    return Invalid(s, "schedule.decay", absl::StrCat("'", c.decay, "'"),
                   "cosine, linear or constant");
  if (!(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1))
    return Invalid(s, "schedule.min_lr_ratio", absl::StrCat(c.min_lr_ratio), "in [0, 1]");
  if (c.steps < 1) return Invalid(s, "train.steps", std::to_string(c.steps), ">= 1");
  if (c.global_batch < 1)
    return Invalid(s, "train.global_batch", std::to_string(c.global_batch), ">= 1");
  if (c.micro_batch < 0)
    return Invalid(s, "train.micro_batch", std::to_string(c.micro_batch),
                   ">= 1, or 0 for global_batch / dp");
  if (c.precision != "fp32" && c.precision != "bf16")
    return Invalid(s, "train.precision", absl::StrCat("'", c.precision, "'"),
                   "fp32 or bf16 (float32 or bfloat16)");
  if (c.device != "cpu" && c.device != "cuda" && c.device != "auto")
    return Invalid(s, "train.device", absl::StrCat("'", c.device, "'"), "cpu, cuda or auto");
  if (c.checkpoint_every < 0)
    return Invalid(s, "checkpoint.every", std::to_string(c.checkpoint_every),
                   ">= 1, or 0 for only at the end");
  if (c.checkpoint_keep < 1)
    return Invalid(s, "checkpoint.keep", std::to_string(c.checkpoint_keep), ">= 1");
  if (c.log_every < 1) return Invalid(s, "logging.every", std::to_string(c.log_every), ">= 1");
  if (c.sample_max_new_tokens < 0)
    return Invalid(s, "sample.max_new_tokens", std::to_string(c.sample_max_new_tokens), ">= 0");
  if (c.output_dir.empty()) return Invalid(s, "output_dir", "empty", "a directory");
  return absl::OkStatus();
}

}  // namespace

std::string TrainConfig::ToYaml() const {
  YAML::Emitter out;
  // 15 significant digits: every decimal a user writes (up to 15 digits)
  // comes back as written (0.003, not 0.0030000000000000001).
  out.SetDoublePrecision(15);
  out << YAML::BeginMap;
  std::string open;
  for (const Field& f : Fields()) {
    const std::string key = f.key;
    const std::string section = Section(key);
    if (section != open) {
      if (!open.empty()) out << YAML::EndMap;
      if (!section.empty()) out << YAML::Key << section << YAML::Value << YAML::BeginMap;
      open = section;
    }
    out << YAML::Key << (section.empty() ? key : key.substr(section.size() + 1)) << YAML::Value;
    std::visit(
        [&](auto m) {
          using T = std::remove_reference_t<decltype(this->*m)>;
          if constexpr (std::is_same_v<T, std::vector<double>>) {
            out << YAML::Flow << YAML::BeginSeq;
            for (double v : this->*m) out << v;
            out << YAML::EndSeq;
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            out << YAML::Flow << YAML::BeginSeq;
            for (const std::string& v : this->*m) out << YAML::DoubleQuoted << v;
            out << YAML::EndSeq;
          } else if constexpr (std::is_same_v<T, std::string>) {
            out << YAML::DoubleQuoted << this->*m;
          } else {
            out << this->*m;
          }
        },
        f.member);
  }
  if (!open.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

absl::StatusOr<TrainConfig> ParseTrainConfig(absl::string_view text, const std::string& source,
                                             const std::vector<std::string>& overrides) {
  TrainConfig config;
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid YAML: ", e.what()));
  }
  if (!root.IsNull()) {
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": the top level is ", Shown(root), " (expected a mapping)"));
    }
    try {
      RETURN_IF_ERROR(Walk(config, root, "", source));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
    }
  }
  for (const std::string& item : overrides) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--set ", item, ": expected key=value (e.g. --set optimizer.lr=3e-4)"));
    }
    const std::string key = item.substr(0, eq);
    const Field* field = FindField(key);
    if (field == nullptr) return UnknownKey("--set", key);
    YAML::Node value;
    try {
      value = YAML::Load(item.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("--set ", item, ": not a YAML value"));
    }
    RETURN_IF_ERROR(Set(config, *field, value, "--set"));
  }
  // --dtype's names mean the same precision (float32, bfloat16).
  if (config.precision == "float32") config.precision = "fp32";
  if (config.precision == "bfloat16") config.precision = "bf16";
  RETURN_IF_ERROR(Validate(config, source));
  return config;
}

absl::StatusOr<TrainConfig> LoadTrainConfig(const std::string& path,
                                            const std::vector<std::string>& overrides) {
  auto text = ReadTextFile(path);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("config ", text.status().message()));
  return ParseTrainConfig(*text, path, overrides);
}

}  // namespace weft

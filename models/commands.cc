#include "models/commands.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/safetensors.h"
#include "models/generate.h"
#include "models/pretrained.h"
#include "models/trace.h"
#include "parallel/runtime.h"
#include "parallel/status.h"
#include "plans/engine.h"
#include "plans/shipped_plans.h"

namespace weft {
namespace {

absl::StatusOr<at::ScalarType> ComputeDtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype ", name, " is not supported (expected float32 or bfloat16)"));
}

int Fail(std::ostream& err, const char* command, absl::string_view message) {
  err << "weft " << command << ": " << message << std::endl;
  return 2;
}

// The model, whole or (with a tp plan) this rank's shard; `runtime` keeps
// the process groups alive as long as the model.
struct Loaded {
  std::unique_ptr<Runtime> runtime;
  std::shared_ptr<CausalLM> model;
  bool writer = true;  // rank 0 (or the only process) writes the output
};

absl::StatusOr<Loaded> Load(const std::string& dir, const PretrainedOptions& options,
                            const std::string& tp_plan) {
  Loaded loaded;
  if (tp_plan.empty()) {
    ASSIGN_OR_RETURN(loaded.model, FromPretrained(dir, options));
    return loaded;
  }
  RuntimeOptions runtime_options;
  runtime_options.device = options.device.is_cuda() ? "cuda" : "cpu";
  ASSIGN_OR_RETURN(loaded.runtime, Runtime::Init(runtime_options));
  ASSIGN_OR_RETURN(Plan plan, ResolvePlanArgument(tp_plan, dir));
  ASSIGN_OR_RETURN(loaded.model,
                   FromPretrainedTensorParallel(dir, options, plan, loaded.runtime->world()));
  loaded.writer = loaded.runtime->rank() == 0;
  return loaded;
}

}  // namespace

int RunForward(const ForwardCommand& c, std::ostream& err) {
  try {
    auto dtype = ComputeDtype(c.dtype);
    if (!dtype.ok()) return Fail(err, "forward", dtype.status().message());
    auto input = SafetensorsFile::Open(c.input);
    if (!input.ok()) return Fail(err, "forward", input.status().message());
    const TensorEntry* ids = (*input)->Find("input_ids");
    if (ids == nullptr || ids->dtype != at::kLong || ids->shape.size() != 2) {
      return Fail(err, "forward", absl::StrCat(c.input, ": no int64 [B, T] tensor 'input_ids'"));
    }
    PretrainedOptions options;
    options.dtype = *dtype;
    options.attn_implementation = c.attn;
    auto loaded = Load(c.model, options, c.tp_plan);
    if (!loaded.ok()) return Fail(err, "forward", loaded.status().message());
    std::shared_ptr<CausalLM>* model = &loaded->model;

    CausalLMInputs inputs;
    inputs.input_ids = (*input)->Get(*ids).clone();
    if (const TensorEntry* mask = (*input)->Find("attention_mask")) {
      inputs.attention_mask = (*input)->Get(*mask).clone();
    }
    inputs.output_hidden_states = c.hidden_states;
    std::unique_ptr<Tracer> tracer;
    if (!c.trace.empty()) tracer = std::make_unique<Tracer>(**model);
    at::NoGradGuard no_grad;
    CausalLMOutput out = (*model)->Forward(inputs);
    std::vector<std::pair<std::string, at::Tensor>> tensors = {
        {"logits", out.logits.to(at::kFloat)}};
    for (size_t i = 0; c.hidden_states && i < out.hidden_states.size(); ++i) {
      tensors.emplace_back(absl::StrCat("hidden_states_", i), out.hidden_states[i].to(at::kFloat));
    }
    if (!loaded->writer) return 0;
    if (absl::Status s = WriteSafetensors(c.output, tensors); !s.ok()) {
      return Fail(err, "forward", s.message());
    }
    if (tracer) {
      std::ofstream trace(c.trace);
      trace << tracer->Json();
      if (!trace) return Fail(err, "forward", absl::StrCat("cannot write ", c.trace));
    }
    return 0;
  } catch (const std::exception& e) {
    std::string what = e.what();
    return Fail(err, "forward", what.substr(0, what.find('\n')));
  }
}

int RunGenerate(const GenerateCommand& c, std::ostream& out, std::ostream& err) {
  try {
    std::vector<int64_t> prompt;
    for (absl::string_view piece : absl::StrSplit(c.prompt_ids, ',')) {
      int64_t id;
      if (!absl::SimpleAtoi(piece, &id) || id < 0) {
        return Fail(
            err, "generate",
            absl::StrCat("--prompt-ids: '", piece, "' is not a token id (expected e.g. 1,2,3)"));
      }
      prompt.push_back(id);
    }
    auto dtype = ComputeDtype(c.dtype);
    if (!dtype.ok()) return Fail(err, "generate", dtype.status().message());
    PretrainedOptions options;
    options.dtype = *dtype;
    options.attn_implementation = c.attn;
    auto loaded = Load(c.model, options, c.tp_plan);
    if (!loaded.ok()) return Fail(err, "generate", loaded.status().message());
    std::shared_ptr<CausalLM>* model = &loaded->model;
    for (int64_t id : prompt) {
      if (id >= (*model)->config.vocab_size) {
        return Fail(err, "generate",
                    absl::StrCat("--prompt-ids: ", id, " is not below vocab_size ",
                                 (*model)->config.vocab_size));
      }
    }
    GenerateOptions g;
    g.max_new_tokens = c.max_new_tokens;
    g.greedy = c.greedy;
    g.temperature = c.temperature;
    g.top_k = c.top_k;
    g.top_p = c.top_p;
    g.seed = c.seed;
    at::Tensor ids = at::tensor(prompt, at::kLong).view({1, -1});
    at::Tensor result = Generate(**model, ids, g);
    std::vector<int64_t> all(result.data_ptr<int64_t>(),
                             result.data_ptr<int64_t>() + result.numel());
    if (loaded->writer) out << absl::StrJoin(all, ",") << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::string what = e.what();
    return Fail(err, "generate", what.substr(0, what.find('\n')));
  }
}

}  // namespace weft

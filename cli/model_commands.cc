#include "cli/model_commands.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/dtype.h"
#include "base/status.h"
#include "base/text_file.h"
#include "checkpoint/safetensors.h"
#include "models/config.h"
#include "models/generate.h"
#include "models/pretrained.h"
#include "models/trace.h"
#include "parallel/cuda_plugin.h"
#include "parallel/device_mesh.h"
#include "parallel/runtime.h"
#include "plans/engine.h"
#include "plans/pipeline_stages.h"
#include "plans/shipped_plans.h"
#include "trainer/data_loader.h"
#include "trainer/evaluate.h"
#include "trainer/lora.h"
#include "trainer/token_file.h"

namespace weft {
namespace {

// --device: cpu, cuda or cuda:N.
absl::StatusOr<c10::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "cuda") return c10::Device(c10::kCUDA, 0);
  if (absl::StartsWith(name, "cuda:")) {
    int index = 0;
    if (absl::SimpleAtoi(name.substr(5), &index) && index >= 0) {
      return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device '", name, "' (expected cpu, cuda or cuda:N)"));
}

absl::StatusOr<at::ScalarType> ComputeDtype(const std::string& name) {
  auto type = ScalarTypeFromTorchName(name, {at::kFloat, at::kBFloat16});
  if (!type.ok())
    return absl::InvalidArgumentError(absl::StrCat("--dtype ", type.status().message()));
  return type;
}

// The model, whole or (with a tp plan) this rank's shard; `runtime` keeps
// the process groups alive as long as the model.
struct Loaded {
  std::unique_ptr<Runtime> runtime;
  std::unique_ptr<DeviceMesh> mesh;  // with pipeline stages: {pp, tp}
  std::shared_ptr<CausalLM> model;
  bool writer = true;  // rank 0 (or the only process) writes the output
};

// Pipeline stages (and tensor parallelism inside each) over the world:
// `pp` ranks hold one stage each, tp = WORLD_SIZE / pp.
absl::StatusOr<Loaded> LoadPipelined(const std::string& dir, PretrainedOptions options,
                                     const std::string& tp_plan, const std::string& pp_plan, int pp,
                                     const std::string& adapter, Loaded loaded) {
  const int world = loaded.runtime->world_size();
  if (pp <= 0) {
    if (!tp_plan.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--pp-plan with --tp-plan needs --pp N (the pipeline ranks; tp = WORLD_SIZE ", world,
          " / N)"));
    }
    pp = world;
  }
  if (world % pp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--pp ", pp, " does not divide WORLD_SIZE ", world,
                     " (expected tp = ", "WORLD_SIZE / pp ranks per stage)"));
  }
  const int tp = world / pp;
  if (tp > 1 && tp_plan.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--pp ", pp, " on WORLD_SIZE ", world, " leaves ", tp,
                     " ranks per stage (expected --tp-plan, or --pp ", world, ")"));
  }
  ASSIGN_OR_RETURN(DeviceMesh mesh, DeviceMesh::Create(*loaded.runtime, {{"pp", pp}, {"tp", tp}}));
  loaded.mesh = std::make_unique<DeviceMesh>(std::move(mesh));
  ASSIGN_OR_RETURN(std::string config_json, ReadTextFile(dir + "/config.json"));
  ASSIGN_OR_RETURN(Plan stage_plan, ResolvePpPlanForConfig(pp_plan, config_json));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_json));
  ModelOptions model_options;
  model_options.attn_implementation = options.attn_implementation;
  if (options.dtype) model_options.dtype = *options.dtype;
  ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> meta, CreateCausalLM(config, model_options));
  ASSIGN_OR_RETURN(PipelineStages stages, PartitionModel(*meta, stage_plan, pp));
  const int me = loaded.mesh->coordinate("pp");
  auto keep = [stages, me](const std::string& name) { return stages.StageOf(name) == me; };
  std::shared_ptr<CausalLM> model;
  if (tp > 1) {
    ASSIGN_OR_RETURN(Plan plan, ResolvePlanArgument(tp_plan, dir));
    TensorParallelOptions tp_options;
    tp_options.keep = keep;
    ASSIGN_OR_RETURN(model, FromPretrainedTensorParallel(dir, options, plan,
                                                         loaded.mesh->group("tp"), tp_options));
  } else {
    LoadHooks hooks;
    hooks.keep = keep;
    ASSIGN_OR_RETURN(model, FromPretrained(dir, options, hooks));
  }
  if (!adapter.empty()) {
    RETURN_IF_ERROR(
        LoadPeftAdapter(*model, adapter, tp > 1 ? loaded.mesh->group("tp") : nullptr).status());
  }
  loaded.model = PipelinedCausalLM(std::move(model), stages, loaded.mesh->group("pp"));
  loaded.writer = loaded.runtime->rank() == 0;
  return loaded;
}

// A PEFT LoRA adapter (--adapter DIR) on top of the base model.
absl::Status AddAdapter(Loaded& loaded, const std::string& adapter,
                        std::shared_ptr<const ProcessGroup> tp) {
  if (adapter.empty()) return absl::OkStatus();
  return LoadPeftAdapter(*loaded.model, adapter, std::move(tp)).status();
}

absl::StatusOr<Loaded> Load(const std::string& dir, PretrainedOptions options,
                            const std::string& tp_plan, const std::string& pp_plan = "", int pp = 0,
                            const std::string& adapter = "") {
  Loaded loaded;
  if (options.device.is_cuda()) options.device_memory = CudaDeviceMemory();
  if (pp > 0 && pp_plan.empty()) {
    return absl::InvalidArgumentError("--pp needs --pp-plan (a plan file with a pp_plan, or auto)");
  }
  if (!adapter.empty()) RETURN_IF_ERROR(ReadPeftAdapterConfig(adapter).status());  // fail early
  if (tp_plan.empty() && pp_plan.empty()) {
    ASSIGN_OR_RETURN(loaded.model, FromPretrained(dir, options));
    RETURN_IF_ERROR(AddAdapter(loaded, adapter, nullptr));
    return loaded;
  }
  RuntimeOptions runtime_options;
  runtime_options.device = options.device.is_cuda() ? "cuda" : "cpu";
  ASSIGN_OR_RETURN(loaded.runtime, Runtime::Init(runtime_options));
  if (!pp_plan.empty()) {
    return LoadPipelined(dir, options, tp_plan, pp_plan, pp, adapter, std::move(loaded));
  }
  ASSIGN_OR_RETURN(Plan plan, ResolvePlanArgument(tp_plan, dir));
  ASSIGN_OR_RETURN(loaded.model,
                   FromPretrainedTensorParallel(dir, options, plan, loaded.runtime->world_group()));
  RETURN_IF_ERROR(AddAdapter(loaded, adapter, loaded.runtime->world_group()));
  loaded.writer = loaded.runtime->rank() == 0;
  return loaded;
}

// "1,2,3" -> the ids; the error names the flag and the piece.
absl::StatusOr<std::vector<int64_t>> ParseIds(const std::string& text) {
  std::vector<int64_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    int64_t id;
    if (!absl::SimpleAtoi(piece, &id) || id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--prompt-ids: '", piece, "' is not a token id (expected e.g. 1,2,3)"));
    }
    ids.push_back(id);
  }
  return ids;
}

// Every id below the model's vocab_size (torch would say only "index out of
// range in self").
absl::Status CheckIds(const at::Tensor& ids, const ModelConfig& config, const std::string& what) {
  if (ids.numel() == 0) return absl::OkStatus();
  const int64_t lowest = ids.min().item<int64_t>(), highest = ids.max().item<int64_t>();
  if (lowest < 0 || highest >= config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": token id ",
                                                   lowest < 0 ? lowest : highest,
                                                   " is outside the vocabulary (expected 0 <= id "
                                                   "< vocab_size ",
                                                   config.vocab_size, ")"));
  }
  return absl::OkStatus();
}

// The sampling flags, and the length the model can attend to.
absl::Status CheckGenerateFlags(const GenerateCommand& c) {
  if (c.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-new-tokens ", c.max_new_tokens, " is negative (expected >= 0)"));
  }
  if (c.greedy) return absl::OkStatus();
  if (!(c.temperature > 0) || !std::isfinite(c.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--temperature ", c.temperature, " is not a temperature (expected > 0)"));
  }
  if (c.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--top-k ", c.top_k, " is negative (expected >= 0; 0 keeps every token)"));
  }
  if (!(c.top_p > 0 && c.top_p <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--top-p ", c.top_p, " is not a probability mass (expected 0 < p <= 1)"));
  }
  return absl::OkStatus();
}

// Forward's inputs: from a safetensors file, or from --prompt-ids.
absl::StatusOr<CausalLMInputs> ForwardInputs(const ForwardCommand& c) {
  CausalLMInputs inputs;
  if (c.input.empty() == c.prompt_ids.empty()) {
    return absl::InvalidArgumentError(
        "give exactly one of --input (a safetensors file with input_ids) and --prompt-ids");
  }
  if (!c.prompt_ids.empty()) {
    ASSIGN_OR_RETURN(std::vector<int64_t> ids, ParseIds(c.prompt_ids));
    inputs.input_ids = at::tensor(ids, at::kLong).view({1, -1});
    return inputs;
  }
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> input, SafetensorsFile::Open(c.input));
  const TensorEntry* ids = input->Find("input_ids");
  if (ids == nullptr || ids->dtype != at::kLong || ids->shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(c.input, ": no int64 [B, T] tensor 'input_ids'"));
  }
  inputs.input_ids = input->Get(*ids).clone();
  if (const TensorEntry* mask = input->Find("attention_mask")) {
    inputs.attention_mask = input->Get(*mask).clone();
  }
  return inputs;
}

absl::Status Forward(const ForwardCommand& c) {
  ASSIGN_OR_RETURN(at::ScalarType dtype, ComputeDtype(c.dtype));
  ASSIGN_OR_RETURN(CausalLMInputs inputs, ForwardInputs(c));
  PretrainedOptions options;
  options.dtype = dtype;
  options.attn_implementation = c.attn;
  options.zero_copy = c.zero_copy;  // inference: nothing writes the weights
  ASSIGN_OR_RETURN(options.device, ParseDevice(c.device));
  if (!c.pp_plan.empty() && (c.hidden_states || !c.trace.empty())) {
    return absl::InvalidArgumentError(
        "--hidden-states and --trace are not available with --pp-plan (each rank runs one stage)");
  }
  ASSIGN_OR_RETURN(Loaded loaded, Load(c.model, options, c.tp_plan, c.pp_plan, c.pp, c.adapter));
  CausalLM& model = *loaded.model;

  RETURN_IF_ERROR(CheckIds(inputs.input_ids, model.config,
                           c.input.empty() ? "--prompt-ids" : c.input + ": input_ids"));
  inputs.output_hidden_states = c.hidden_states;
  std::unique_ptr<Tracer> tracer;
  if (!c.trace.empty()) tracer = std::make_unique<Tracer>(model);
  at::NoGradGuard no_grad;
  inputs.input_ids = inputs.input_ids.to(options.device);
  if (inputs.attention_mask.defined())
    inputs.attention_mask = inputs.attention_mask.to(options.device);
  CausalLMOutput out = model.Forward(inputs);
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"logits", out.logits.to(at::kFloat).cpu()}};
  for (size_t i = 0; c.hidden_states && i < out.hidden_states.size(); ++i) {
    tensors.emplace_back(absl::StrCat("hidden_states_", i),
                         out.hidden_states[i].to(at::kFloat).cpu());
  }
  if (!loaded.writer) return absl::OkStatus();
  RETURN_IF_ERROR(WriteSafetensors(c.output, tensors));
  if (tracer) RETURN_IF_ERROR(WriteTextFileAtomically(c.trace, tracer->Json()));
  return absl::OkStatus();
}

absl::Status Generate(const GenerateCommand& c, std::ostream& out) {
  ASSIGN_OR_RETURN(std::vector<int64_t> prompt, ParseIds(c.prompt_ids));
  RETURN_IF_ERROR(CheckGenerateFlags(c));
  ASSIGN_OR_RETURN(at::ScalarType dtype, ComputeDtype(c.dtype));
  PretrainedOptions options;
  options.dtype = dtype;
  options.attn_implementation = c.attn;
  options.zero_copy = c.zero_copy;  // inference: nothing writes the weights
  ASSIGN_OR_RETURN(options.device, ParseDevice(c.device));
  ASSIGN_OR_RETURN(Loaded loaded, Load(c.model, options, c.tp_plan, c.pp_plan, c.pp, c.adapter));
  CausalLM& model = *loaded.model;
  const int64_t length = static_cast<int64_t>(prompt.size()) + c.max_new_tokens;
  if (length > model.config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-new-tokens ", c.max_new_tokens, " with a prompt of ", prompt.size(),
        " tokens makes ", length, " positions (expected at most max_position_embeddings ",
        model.config.max_position_embeddings, ")"));
  }
  for (int64_t id : prompt) {
    if (id >= model.config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("--prompt-ids: ", id, " is not below vocab_size ", model.config.vocab_size));
    }
  }
  GenerateOptions g;
  g.max_new_tokens = c.max_new_tokens;
  g.greedy = c.greedy;
  g.temperature = c.temperature;
  g.top_k = c.top_k;
  g.top_p = c.top_p;
  g.seed = c.seed;
  at::Tensor ids = at::tensor(prompt, at::kLong).view({1, -1}).to(options.device);
  at::Tensor result = weft::Generate(model, ids, g).cpu();
  std::vector<int64_t> all(result.data_ptr<int64_t>(), result.data_ptr<int64_t>() + result.numel());
  if (loaded.writer) out << absl::StrJoin(all, ",") << std::endl;
  return absl::OkStatus();
}

absl::Status Eval(const EvalCommand& c, std::ostream& out) {
  ASSIGN_OR_RETURN(at::ScalarType dtype, ComputeDtype(c.dtype));
  if (c.batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--batch ", c.batch, " (expected >= 1)"));
  }
  if (c.batches < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batches ", c.batches, " (expected >= 1, or 0 for the whole file)"));
  }
  // The data first: a bad file fails before the model is loaded.
  ASSIGN_OR_RETURN(std::shared_ptr<TokenFile> tokens, TokenFile::Open(c.data));
  ASSIGN_OR_RETURN(std::string config_json, ReadTextFile(c.model + "/config.json"));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_json));
  if (tokens->vocab_size() > config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("--data ", c.data, " has vocab_size ", tokens->vocab_size(),
                     " (expected at most the model's vocab_size ", config.vocab_size, ")"));
  }
  const int64_t seq_len =
      c.seq_len > 0 ? c.seq_len : std::min<int64_t>(config.max_position_embeddings, 1024);
  if (seq_len < 2 || seq_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--seq-len ", seq_len,
                                                   " (expected 2 to max_position_embeddings ",
                                                   config.max_position_embeddings, ")"));
  }
  DataLoaderOptions data;
  data.seq_len = seq_len;
  data.global_batch = c.batch;  // every rank of a tp job reads the same rows
  data.shuffle = false;
  data.allow_partial = true;
  data.packing = c.packing;
  ASSIGN_OR_RETURN(std::unique_ptr<DataLoader> loader, DataLoader::Create(tokens, data));
  PretrainedOptions options;
  options.dtype = dtype;
  options.attn_implementation = c.attn;
  options.zero_copy = c.zero_copy;  // inference: nothing writes the weights
  ASSIGN_OR_RETURN(options.device, ParseDevice(c.device));
  ASSIGN_OR_RETURN(Loaded loaded, Load(c.model, options, c.tp_plan, "", 0, c.adapter));
  EvalOptions eval;
  eval.batches = c.batches;
  eval.device = options.device;
  EvalResult r = Evaluate(*loaded.model, *loader, eval);
  if (loaded.writer) {
    out << absl::StrFormat("eval: loss %.6f, perplexity %.4f over %d tokens (%d samples of %d%s)",
                           r.loss, r.perplexity, r.tokens,
                           std::min(loader->num_samples(), r.batches * c.batch), seq_len,
                           c.packing ? ", packed" : "")
        << std::endl;
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// --model, --dtype, --device, --attn, --tp-plan, --adapter, --zero-copy.
void AddModelFlags(CLI::App* cmd, ModelFlags& c) {
  cmd->add_option("--model", c.model, "checkpoint directory")->required();
  cmd->add_option("--dtype", c.dtype, "float32 or bfloat16");
  cmd->add_option("--device", c.device, "cpu, cuda or cuda:N");
  cmd->add_option("--attn", c.attn, "attention implementation: eager or sdpa");
  cmd->add_option("--tp-plan", c.tp_plan,
                  "tensor parallelism over the world: a plan file, or auto");
  cmd->add_option("--adapter", c.adapter,
                  "a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors)");
  cmd->add_flag("--zero-copy,!--no-zero-copy", c.zero_copy,
                "weights whose bytes fit are views of the mapped files (default; --no-zero-copy "
                "copies them)");
}

}  // namespace

int RunEval(const EvalCommand& command, std::ostream& out, std::ostream& err) {
  return RunCommand("eval", err, [&] { return Eval(command, out); });
}

int RunForward(const ForwardCommand& command, std::ostream& err) {
  return RunCommand("forward", err, [&] { return Forward(command); });
}

int RunGenerate(const GenerateCommand& command, std::ostream& out, std::ostream& err) {
  return RunCommand("generate", err, [&] { return Generate(command, out); });
}

Subcommand AddForward(CLI::App& app) {
  auto c = std::make_shared<ForwardCommand>();
  CLI::App* cmd = app.add_subcommand(
      "forward", "Run a Hugging Face checkpoint on input_ids; write logits (and hidden states).");
  AddModelFlags(cmd, *c);
  cmd->add_option("--input", c->input,
                  "safetensors with input_ids [B, T] (int64) and optionally attention_mask");
  cmd->add_option("--prompt-ids", c->prompt_ids,
                  "comma-separated ids of one sequence (instead of --input)");
  cmd->add_option("--output", c->output, "safetensors to write logits to")->required();
  cmd->add_flag("--hidden-states", c->hidden_states,
                "also write hidden_states_0..N (transformers' order)");
  cmd->add_option("--trace", c->trace, "write every module call as JSON here");
  cmd->add_option("--pp-plan", c->pp_plan,
                  "pipeline stages over the world: a plan file with a pp_plan, or auto");
  cmd->add_option("--pp", c->pp,
                  "pipeline ranks (one stage each); default: the world without --tp-plan");
  return {cmd, [c] { return RunForward(*c, std::cerr); }};
}

Subcommand AddEval(CLI::App& app) {
  auto c = std::make_shared<EvalCommand>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Mean loss and perplexity of a checkpoint over a token file's counted labels.");
  AddModelFlags(cmd, *c);
  cmd->add_option("--data", c->data, "token file prefix (PREFIX.bin, .idx, optional .mask)")
      ->required();
  cmd->add_option("--seq-len", c->seq_len,
                  "tokens per sample; 0: min(max_position_embeddings, 1024)");
  cmd->add_option("--batch", c->batch, "samples per forward");
  cmd->add_option("--batches", c->batches, "batches at most; 0: the whole file");
  cmd->add_flag("--packing", c->packing, "pack whole documents per row (as data.packing)");
  return {cmd, [c] { return RunEval(*c, std::cout, std::cerr); }};
}

Subcommand AddGenerate(CLI::App& app) {
  auto c = std::make_shared<GenerateCommand>();
  auto greedy_flag = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("generate", "Generate token ids from a prompt of token ids.");
  AddModelFlags(cmd, *c);
  cmd->add_option("--prompt-ids", c->prompt_ids, "comma-separated ids")->required();
  cmd->add_option("--max-new-tokens", c->max_new_tokens, "new tokens at most");
  cmd->add_flag("--greedy", *greedy_flag, "argmax decoding (the default)");
  std::vector<CLI::Option*> sampling = {
      cmd->add_option("--temperature", c->temperature, "sampling temperature"),
      cmd->add_option("--top-k", c->top_k, "keep the k most likely tokens"),
      cmd->add_option("--top-p", c->top_p, "nucleus sampling mass"),
      cmd->add_option("--seed", c->seed, "sampling seed"),
  };
  cmd->add_option("--pp-plan", c->pp_plan,
                  "pipeline stages over the world: a plan file with a pp_plan, or auto");
  cmd->add_option("--pp", c->pp,
                  "pipeline ranks (one stage each); default: the world without --tp-plan");
  return {cmd, [c, greedy_flag, sampling] {
            bool sample = false;
            for (CLI::Option* o : sampling) sample = sample || o->count() > 0;
            if (sample && *greedy_flag) {
              return RunCommand("generate", std::cerr, [] {
                return absl::InvalidArgumentError(
                    "--greedy cannot be combined with --temperature, --top-k, --top-p or --seed");
              });
            }
            c->greedy = !sample;
            return RunGenerate(*c, std::cout, std::cerr);
          }};
}

}  // namespace weft

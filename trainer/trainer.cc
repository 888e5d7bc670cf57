#include "trainer/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "base/text_file.h"
#include "models/generate.h"
#include "models/init.h"
#include "models/pretrained.h"
#include "parallel/cuda_plugin.h"
#include "parallel/data_parallel.h"
#include "parallel/device_mesh.h"
#include "parallel/runtime.h"
#include "plans/engine.h"
#include "plans/shipped_plans.h"
#include "trainer/activation_checkpointing.h"
#include "trainer/checkpointing.h"
#include "trainer/data_loader.h"
#include "trainer/optimizer.h"
#include "trainer/plot.h"
#include "trainer/token_file.h"

namespace weft {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

std::string Rate(double tokens_per_s) {
  if (tokens_per_s >= 1e6) return absl::StrFormat("%.2fM", tokens_per_s / 1e6);
  if (tokens_per_s >= 1e3) return absl::StrFormat("%.1fk", tokens_per_s / 1e3);
  return absl::StrFormat("%.0f", tokens_per_s);
}

// model.config: a JSON file, or a directory holding config.json.
std::string ConfigFile(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) ? path + "/config.json" : path;
}

// The ranks of the tp group holding identical copies of each parameter's
// gradient: tp for replicated parameters, tp / kv_heads for replicated KV
// heads, 1 for shards.
int Replication(const std::string& name, const std::map<std::string, ShardSpec>& shards, int tp) {
  if (tp == 1) return 1;
  auto it = shards.find(name);
  if (it == shards.end() || it->second.slice.empty()) return tp;
  if (it->second.kv_head >= 0) return tp / static_cast<int>(it->second.kv_heads);
  return 1;
}

std::string Decode(const at::Tensor& ids) {
  std::string out;
  at::Tensor row = ids.to(at::kCPU).contiguous();
  for (int64_t i = 0; i < row.numel(); ++i) {
    int64_t id = row.data_ptr<int64_t>()[i];
    out.push_back(static_cast<char>(id & 0xff));
  }
  return out;
}

struct Setup {
  std::unique_ptr<Runtime> runtime;
  std::unique_ptr<DeviceMesh> mesh;
  std::shared_ptr<CausalLM> model;
  std::vector<std::map<std::string, ShardSpec>> all_shards;  // per tp rank; empty at tp = 1
  std::string config_json;
  int tp = 1, dp = 1, tp_rank = 0, dp_rank = 0;
};

absl::Status BuildModel(const TrainConfig& c, Setup& s) {
  const at::ScalarType dtype = c.precision == "bf16" ? at::kBFloat16 : at::kFloat;
  const std::string dir = c.model_pretrained;
  const std::string config_path = dir.empty() ? ConfigFile(c.model_config) : dir + "/config.json";
  ASSIGN_OR_RETURN(s.config_json, ReadTextFile(config_path));
  ASSIGN_OR_RETURN(ModelConfig model_config, ParseModelConfig(s.config_json));
  ModelOptions model_options;
  model_options.dtype = dtype;
  model_options.attn_implementation = c.attn_implementation;
  Plan plan;
  TensorParallelOptions tp_options;
  tp_options.loss_parallel = c.loss_parallel;
  if (s.tp > 1) {
    ASSIGN_OR_RETURN(plan, ResolvePlanForConfig(c.plan, s.config_json));
    // Every rank's shards, from a model built on the meta device.
    ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> meta, CreateCausalLM(model_config, model_options));
    for (int r = 0; r < s.tp; ++r) {
      ASSIGN_OR_RETURN(auto shards, PlanShards(*meta, plan, s.tp, r, tp_options.resolve));
      s.all_shards.push_back(std::move(shards));
    }
  } else if (c.loss_parallel) {
    return absl::InvalidArgumentError("parallel.loss_parallel needs parallel.tp > 1");
  }
  const c10::Device device = s.runtime->device();
  if (!dir.empty()) {
    PretrainedOptions options;
    options.dtype = dtype;
    options.device = device;
    if (device.is_cuda()) options.device_memory = CudaDeviceMemory();
    options.attn_implementation = c.attn_implementation;
    if (s.tp > 1) {
      ASSIGN_OR_RETURN(
          s.model, FromPretrainedTensorParallel(dir, options, plan, (*s.mesh)["tp"], tp_options));
    } else {
      ASSIGN_OR_RETURN(s.model, FromPretrained(dir, options));
    }
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(s.model, CreateCausalLM(model_config, model_options));
  InitOptions init;
  init.seed = static_cast<uint64_t>(c.seed);
  init.device = device;
  if (s.tp > 1) {
    const auto* shards = &s.all_shards[s.tp_rank];
    init.slice_of = [shards](const std::string& name) {
      auto it = shards->find(name);
      return it == shards->end() ? Slice{} : it->second.slice;
    };
  }
  RETURN_IF_ERROR(InitializeWeights(*s.model, init));
  if (s.tp > 1) {
    RETURN_IF_ERROR(
        ApplyTensorParallel(*s.model, s.all_shards[s.tp_rank], (*s.mesh)["tp"], tp_options));
  }
  return absl::OkStatus();
}

std::string Sample(CausalLM& model, const std::string& prompt, int64_t max_new_tokens,
                   c10::Device device) {
  at::NoGradGuard no_grad;
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  for (int64_t& id : ids) id &= 0xff;
  at::Tensor input = at::tensor(ids, at::kLong).view({1, -1}).to(device);
  GenerateOptions options;
  options.max_new_tokens = max_new_tokens;
  options.greedy = true;
  options.eos_token_id = -1;  // byte-level: no end-of-text token
  at::Tensor out = Generate(model, input, options);
  return Decode(out[0]);
}

}  // namespace

absl::StatusOr<TrainResult> Train(const TrainConfig& c, std::ostream& log) {
  Setup s;
  RuntimeOptions runtime_options;
  runtime_options.device = c.device;
  ASSIGN_OR_RETURN(s.runtime, Runtime::Init(runtime_options));
  const int world = s.runtime->world_size(), rank = s.runtime->rank();
  const bool lead = rank == 0;
  s.tp = c.tp;
  s.dp = c.dp > 0 ? c.dp : std::max(1, world / c.tp);
  RETURN_IF_ERROR(ValidateMeshShape({{"dp", s.dp}, {"tp", s.tp}}, world));
  ASSIGN_OR_RETURN(DeviceMesh mesh, DeviceMesh::Create(*s.runtime, {{"dp", s.dp}, {"tp", s.tp}}));
  s.mesh = std::make_unique<DeviceMesh>(std::move(mesh));
  s.tp_rank = s.mesh->coordinate("tp");
  s.dp_rank = s.mesh->coordinate("dp");

  // Batch arithmetic, validated before anything large is built.
  if (c.global_batch % s.dp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.global_batch ", c.global_batch, " is not divisible by dp ", s.dp));
  }
  const int64_t local_batch = c.global_batch / s.dp;
  const int64_t micro = c.micro_batch > 0 ? c.micro_batch : local_batch;
  if (local_batch % micro != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.micro_batch ", micro, " does not divide the per-rank batch ",
                     local_batch, " (global_batch ", c.global_batch, " / dp ", s.dp, ")"));
  }
  const int64_t accumulation = local_batch / micro;

  // A fresh run never mixes its checkpoints with an earlier run's (keeping
  // the last K by step would delete the new ones).
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  const std::optional<std::string> earlier = LatestCheckpoint(c.output_dir);
  const bool restarted = restarts != nullptr && std::string(restarts) != "0" && earlier;
  if (!c.resume && !restarted && earlier) {
    return absl::FailedPreconditionError(
        absl::StrCat("output_dir ", c.output_dir, " already holds checkpoints (latest ", *earlier,
                     "): pass --resume to continue that run, or choose another output_dir"));
  }

  // Data: a token file, or a text tokenised byte-level by rank 0.
  std::string prefix = c.data_path;
  bool byte_level = false;
  if (!c.data_text.empty()) {
    prefix = absl::StrCat(c.output_dir, "/data/", fs::path(c.data_text).stem().string());
    byte_level = true;
    absl::Status written = absl::OkStatus();
    if (lead) {
      std::error_code ec;
      fs::create_directories(c.output_dir + "/data", ec);
      written = WriteByteLevelTokenFile(c.data_text, prefix);
    }
    s.runtime->world().Barrier();
    RETURN_IF_ERROR(written);
  }
  ASSIGN_OR_RETURN(std::shared_ptr<TokenFile> tokens, TokenFile::Open(prefix));
  byte_level = byte_level || tokens->vocab_size() == 256;
  DataLoaderOptions data_options;
  data_options.seq_len = c.seq_len;
  data_options.global_batch = c.global_batch;
  data_options.dp_rank = s.dp_rank;
  data_options.dp_size = s.dp;
  data_options.seed = static_cast<uint64_t>(c.seed);
  data_options.shuffle = c.shuffle;
  ASSIGN_OR_RETURN(std::unique_ptr<DataLoader> loader, DataLoader::Create(tokens, data_options));
  if (!c.sample_prompt.empty() && c.sample_max_new_tokens > 0 && !byte_level) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample.prompt needs byte-level data (vocab_size 256); ", prefix, " has vocab_size ",
        tokens->vocab_size(), " (weft has no tokenizer: leave sample.prompt empty)"));
  }

  at::manual_seed(static_cast<uint64_t>(c.seed));
  RETURN_IF_ERROR(BuildModel(c, s));
  CausalLM& model = *s.model;
  if (tokens->vocab_size() > model.config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("data ", prefix, " has vocab_size ", tokens->vocab_size(),
                     ", larger than the model's vocab_size ", model.config.vocab_size));
  }
  model.train();
  if (c.activation_checkpointing) EnableActivationCheckpointing(model);

  // Parameters, once each (tied embeddings are one tensor).
  static const std::map<std::string, ShardSpec> kNoShards;
  const auto& my_shards = s.tp > 1 ? s.all_shards[s.tp_rank] : kNoShards;
  std::vector<AdamW::Param> opt_params;
  std::vector<at::Tensor> params;
  std::vector<int> replication;
  std::vector<std::pair<std::string, at::Tensor>> named;
  std::set<const void*> seen;
  for (const auto& item : model.named_parameters()) {
    if (!seen.insert(item.value().unsafeGetTensorImpl()).second) continue;
    const std::string& name = item.key();
    auto it = my_shards.find(name);
    const size_t global_dims =
        it == my_shards.end() ? item.value().dim() : it->second.global_shape.size();
    const bool decay = global_dims >= 2;  // not norms, not biases
    opt_params.push_back({name, item.value(), decay});
    params.push_back(item.value());
    replication.push_back(Replication(name, my_shards, s.tp));
    named.emplace_back(name, item.value());
  }
  AdamW optimizer(opt_params, {c.betas[0], c.betas[1], c.eps, c.weight_decay});
  ScheduleOptions schedule{c.lr, c.warmup_steps, c.steps, c.decay, c.min_lr_ratio};

  TrainResult result;
  int64_t step = 0;  // optimizer steps done
  // A restarted attempt under weftrun/torchrun continues from the latest
  // checkpoint, if there is one (torchelastic's contract for restarts).
  if (c.resume || restarted) {
    std::optional<std::string> latest = LatestCheckpoint(c.output_dir);
    if (!latest) {
      return absl::NotFoundError(
          absl::StrCat("train.resume: no checkpoint under ", c.output_dir, "/checkpoints"));
    }
    ASSIGN_OR_RETURN(LoadedCheckpoint ckpt,
                     LoadCheckpointDir(*latest, s.tp, s.tp_rank, s.tp > 1 ? &my_shards : nullptr));
    {
      at::NoGradGuard no_grad;
      for (auto& [name, tensor] : named) {
        auto it = ckpt.params.find(name);
        if (it == ckpt.params.end() || it->second.sizes() != tensor.sizes()) {
          return absl::InvalidArgumentError(
              absl::StrCat(*latest, ": parameter '", name, "' is missing or has another shape"));
        }
        tensor.detach().copy_(it->second);
      }
    }
    RETURN_IF_ERROR(optimizer.LoadState(ckpt.optimizer, ckpt.state.step));
    RETURN_IF_ERROR(loader->Restore(ckpt.state.data));
    step = ckpt.state.step;
    if (lead && (ckpt.state.tp != s.tp || ckpt.state.dp != s.dp)) {
      log << "[train] resharded from dp " << ckpt.state.dp << " x tp " << ckpt.state.tp << " to dp "
          << s.dp << " x tp " << s.tp << "\n";
    }
    if (!ckpt.state.rng_state_hex.empty()) {
      const std::string& hex = ckpt.state.rng_state_hex;
      at::Tensor state = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
      for (size_t i = 0; i + 1 < hex.size(); i += 2) {
        state.data_ptr<uint8_t>()[i / 2] =
            static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16));
      }
      at::Generator generator = at::detail::getDefaultCPUGenerator();
      generator.set_state(state);
    }
    if (lead) log << "[train] resumed from " << *latest << " at step " << step << "\n";
  }
  result.first_step = step + 1;

  const c10::Device device = s.runtime->device();
  const bool sample = !c.sample_prompt.empty() && c.sample_max_new_tokens > 0;
  if (sample) {
    result.sample_before = Sample(model, c.sample_prompt, c.sample_max_new_tokens, device);
    if (lead) log << "[train] sample before training:\n" << result.sample_before << "\n---\n";
  }
  if (lead) {
    int64_t n = 0;
    for (const at::Tensor& p : params) n += p.numel();
    log << absl::StrFormat(
        "[train] %s, %d layers, %.2fM parameters on this rank; mesh dp %d x tp %d; global batch "
        "%d x %d tokens (%d micro-batches of %d per rank); %d steps\n",
        model.config.architecture, model.config.num_hidden_layers, n / 1e6, s.dp, s.tp,
        c.global_batch, c.seq_len, accumulation, micro, c.steps);
    log.flush();
  }

  std::error_code ec;
  if (lead) fs::create_directories(c.output_dir, ec);
  const std::string metrics_path = c.output_dir + "/metrics.jsonl";
  std::ofstream metrics;
  if (lead) {
    metrics.open(metrics_path, c.resume ? std::ios::app : std::ios::trunc);
    if (!metrics) return absl::InternalError(absl::StrCat(metrics_path, ": cannot be written"));
  }
  ProcessGroup* tp_group = s.tp > 1 ? &(*s.mesh)["tp"] : nullptr;
  ProcessGroup* dp_group = s.dp > 1 ? &(*s.mesh)["dp"] : nullptr;

  auto save = [&](int64_t at_step) -> absl::Status {
    SaveRequest request;
    request.output_dir = c.output_dir;
    request.keep = c.checkpoint_keep;
    request.state.step = at_step;
    request.state.data = loader->position();
    request.state.tp = s.tp;
    request.state.dp = s.dp;
    request.state.seed = c.seed;
    at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
    std::string hex;
    for (int64_t i = 0; i < rng.numel(); ++i)
      hex += absl::StrFormat("%02x", rng.data_ptr<uint8_t>()[i]);
    request.state.rng_state_hex = hex;
    request.config_yaml = c.ToYaml();
    for (auto& [name, t] : named) request.params.emplace_back(name, t.detach());
    request.optimizer = optimizer.StateTensors();
    request.shards = s.tp > 1 ? &s.all_shards[s.tp_rank] : nullptr;
    return SaveCheckpoint(request, *s.mesh, rank);
  };

  const Clock::time_point start = Clock::now();
  Clock::time_point window = start;
  double window_comm = ProcessGroup::CollectiveSeconds();
  int64_t window_steps = 0;
  const int64_t tokens_per_step = c.global_batch * c.seq_len;
  const int64_t first = step;
  while (step < c.steps) {
    const double lr = LearningRate(schedule, step);
    at::Tensor batch = loader->Next();
    double loss_sum = 0;  // sum over this rank's counted tokens
    double counted = 0;
    for (int64_t m = 0; m < accumulation; ++m) {
      at::Tensor ids = batch.narrow(0, m * micro, micro).to(device);
      CausalLMInputs inputs;
      inputs.input_ids = ids;
      inputs.labels = ids;
      CausalLMOutput out = model.Forward(inputs);
      const double n = static_cast<double>(micro * (c.seq_len - 1));
      // The mean over this rank's tokens; the dp average makes it the mean
      // over the global batch (every micro-batch counts the same tokens).
      (out.loss * (n / static_cast<double>(local_batch * (c.seq_len - 1)))).backward();
      loss_sum += out.loss.item<double>() * n;
      counted += n;
    }
    at::Tensor totals = at::tensor({loss_sum, counted}, at::kDouble);
    if (dp_group != nullptr) {
      AllReduceGradients(params, *dp_group);
      dp_group->AllReduce(totals);
    }
    const double loss = totals[0].item<double>() / totals[1].item<double>();
    const double grad_norm = ClipGradNorm(params, replication, tp_group, c.grad_clip);
    optimizer.Step(lr);
    optimizer.ZeroGrad();
    ++step;
    ++window_steps;
    result.losses.emplace_back(step, loss);
    result.grad_norms.push_back(grad_norm);

    if (step % c.log_every == 0 || step == c.steps || step == first + 1) {
      const double elapsed = Seconds(start);
      const double window_s = std::max(1e-9, Seconds(window));
      const double rate = tokens_per_step * window_steps / window_s;
      // The share of the window this rank spent inside collectives.
      const double comm = (ProcessGroup::CollectiveSeconds() - window_comm) / window_s;
      const double eta =
          elapsed / static_cast<double>(step - first) * static_cast<double>(c.steps - step);
      if (lead) {
        log << absl::StrFormat(
                   "[train] step %*d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %s tok/s%s | "
                   "elapsed %s | eta %s",
                   static_cast<int>(std::to_string(c.steps).size()), step, c.steps, loss, lr,
                   grad_norm, Rate(rate),
                   world > 1 ? absl::StrFormat(" (comm %.0f%%)", 100 * comm) : std::string(),
                   Duration(elapsed), Duration(eta))
            << "\n";
        log.flush();
        metrics << absl::StrFormat(
                       "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, "
                       "\"tokens_per_s\": %.1f, \"comm_share\": %.4f, \"elapsed_s\": %.3f}",
                       step, loss, lr, grad_norm, rate, comm, elapsed)
                << "\n";
        metrics.flush();
      }
      window = Clock::now();
      window_comm = ProcessGroup::CollectiveSeconds();
      window_steps = 0;
    }
    if (c.checkpoint_every > 0 && step % c.checkpoint_every == 0 && step < c.steps) {
      RETURN_IF_ERROR(save(step));
      if (lead) log << "[train] checkpoint " << CheckpointDir(c.output_dir, step) << "\n";
    }
  }
  if (step > first) {
    RETURN_IF_ERROR(save(step));
    if (lead) log << "[train] checkpoint " << CheckpointDir(c.output_dir, step) << "\n";
  }
  if (c.checkpoint_export) {
    result.export_dir = c.output_dir + "/hf";
    std::vector<std::pair<std::string, at::Tensor>> exported;
    for (auto& [name, t] : named) {
      if (name == "lm_head.weight" && model.config.tie_word_embeddings) continue;
      exported.emplace_back(name, t);
    }
    RETURN_IF_ERROR(
        ExportHuggingFace(result.export_dir, s.config_json, exported, s.all_shards, *s.mesh, rank));
    s.runtime->world().Barrier();
    if (lead) log << "[train] exported a Hugging Face checkpoint to " << result.export_dir << "\n";
  }
  if (lead) {
    // The whole run's curve, earlier attempts included (metrics.jsonl).
    metrics.close();
    std::map<int64_t, double> curve;
    std::ifstream in(metrics_path);
    std::string line;
    while (std::getline(in, line)) {
      int64_t at_step = 0;
      double at_loss = 0;
      if (std::sscanf(line.c_str(), "{\"step\": %ld, \"loss\": %lf", &at_step, &at_loss) == 2) {
        if (at_step <= step) curve[at_step] = at_loss;
      }
    }
    for (const auto& [at_step, at_loss] : result.losses) curve[at_step] = at_loss;
    std::vector<std::pair<int64_t, double>> points(curve.begin(), curve.end());
    const std::string svg = c.output_dir + "/loss.svg";
    RETURN_IF_ERROR(
        WriteLossCurveSvg(svg, points,
                          absl::StrFormat("%s, dp %d x tp %d, %d steps", model.config.architecture,
                                          s.dp, s.tp, c.steps)));
    log << "[train] metrics " << metrics_path << ", loss curve " << svg << "\n";
  }
  if (sample) {
    model.eval();
    result.sample_after = Sample(model, c.sample_prompt, c.sample_max_new_tokens, device);
    if (lead) log << "[train] sample after training:\n" << result.sample_after << "\n---\n";
  }
  log.flush();
  return result;
}

}  // namespace weft

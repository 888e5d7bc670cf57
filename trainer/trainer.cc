#include "trainer/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/dtype.h"
#include "base/json.h"
#include "base/status.h"
#include "base/syscall.h"
#include "base/text_file.h"
#include "launcher/heartbeat.h"
#include "models/deferred_weight_grads.h"
#include "models/generate.h"
#include "models/init.h"
#include "models/layers.h"
#include "models/module.h"
#include "models/pretrained.h"
#include "parallel/cuda_plugin.h"
#include "parallel/data_parallel.h"
#include "parallel/device_mesh.h"
#include "parallel/parallel_dims.h"
#include "parallel/pipeline_runtime.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/runtime.h"
#include "plans/engine.h"
#include "plans/explain.h"
#include "plans/fully_shard.h"
#include "plans/pipeline_stages.h"
#include "plans/shipped_plans.h"
#include "trainer/activation_checkpointing.h"
#include "trainer/checkpointing.h"
#include "trainer/data_loader.h"
#include "trainer/evaluate.h"
#include "trainer/lora.h"
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

std::string Decode(const at::Tensor& ids) {
  std::string out;
  at::Tensor row = ids.to(at::kCPU).contiguous();
  for (int64_t i = 0; i < row.numel(); ++i) {
    int64_t id = row.data_ptr<int64_t>()[i];
    out.push_back(static_cast<char>(id & 0xff));
  }
  return out;
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

std::string RngStateHex() {
  at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  std::string hex;
  for (int64_t i = 0; i < rng.numel(); ++i) {
    hex += absl::StrFormat("%02x", rng.data_ptr<uint8_t>()[i]);
  }
  return hex;
}

void RestoreRngState(const std::string& hex) {
  at::Tensor state = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    state.data_ptr<uint8_t>()[i / 2] =
        static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(state);
}

// Everything one run holds; Train builds it step by step.
struct Run {
  Run(const TrainConfig& config, std::ostream& out) : c(config), log(out) {}
  const TrainConfig& c;
  std::ostream& log;

  // The job.
  std::unique_ptr<Runtime> runtime;
  std::unique_ptr<DeviceMesh> mesh;
  std::unique_ptr<ParallelDims> dims;
  int tp_rank = 0, dp_rank = 0, pp_rank = 0;
  bool lead = false;       // world rank 0 logs and writes the run's files
  bool restarted = false;  // a restarted attempt under weftrun/torchrun
  UniqueFd output_lock;    // rank 0: the flock on <output_dir>/.weft.lock

  // The data.
  std::string data_prefix;
  std::shared_ptr<TokenFile> tokens;
  std::unique_ptr<DataLoader> loader;
  std::unique_ptr<DataLoader> eval_loader;  // with data.eval_path or data.eval_fraction
  // LoRA (lora.r > 0): the adapters attached and their options.
  std::optional<LoraSummary> lora;
  LoraOptions lora_options;

  // The model, every tp rank's placements (empty at tp = 1), its parameters
  // once each (tied embeddings are one tensor) and the optimizer.
  std::string config_json;
  std::shared_ptr<CausalLM> model;
  std::vector<Placements> all_placements;
  std::vector<std::pair<std::string, at::Tensor>> named;
  std::vector<at::Tensor> params;
  std::vector<GradCopies> replication;  // per parameter: ranks holding the same gradient
  std::vector<size_t> fsdp_index;       // dp_shard: named[i] is fsdp->parameters()[fsdp_index[i]]
  std::unique_ptr<AdamW> optimizer;
  ScheduleOptions schedule;

  // Pipeline parallelism (pp > 1): the schedule, the stages, this rank's
  // stages and their parameters, the gates, and for a tied embedding held by
  // the first and the last stage on two ranks, the group that sums its
  // gradient.
  std::unique_ptr<PipelineSchedule> pipeline;
  PipelineStages stages;
  std::set<int> my_stages;
  std::map<int, std::vector<at::Tensor>> stage_params;
  std::shared_ptr<StageGate> gate;
  std::shared_ptr<CausalLM> pipelined;  // the model through every stage (samples)
  std::shared_ptr<ProcessGroup> tie_group;
  at::Tensor tied;         // the tied embedding this rank holds (pp > 1)
  std::ofstream pp_trace;  // parallel.pp_trace: every action's timing

  // Sharded data parallelism (dp_shard > 1): the pieces the optimizer updates.
  std::shared_ptr<FullyShardedModel> fsdp;

  int64_t step = 0;  // optimizer steps done
  std::string metrics_path;
  std::ofstream metrics;
  TrainResult result;

  const Placements* placements() const { return dims->tp_enabled() ? &model->placements : nullptr; }
  bool sampling() const { return !c.sample_prompt.empty() && c.sample_max_new_tokens > 0; }
  ProcessGroup* pp_group() const { return dims->pp_enabled() ? &(*mesh)["pp"] : nullptr; }
  // A tied lm_head's weight saved under the embedding's name.
  bool tied_head(const std::string& name) const {
    return name == "lm_head.weight" && model->config.tie_word_embeddings;
  }
};

// 1. Join the job and lay out the mesh (validated before anything large).
absl::Status JoinJob(Run& run) {
  RuntimeOptions runtime_options;
  runtime_options.device = run.c.device;
  ASSIGN_OR_RETURN(run.runtime, Runtime::Init(runtime_options));
  run.lead = run.runtime->rank() == 0;
  ParallelDimsOptions dims;
  dims.dp = run.c.dp;
  dims.tp = run.c.tp;
  dims.pp = run.c.pp;
  dims.pp_microbatches = run.c.pp_microbatches;
  dims.dp_shard = run.c.dp_shard;
  dims.global_batch = run.c.global_batch;
  dims.micro_batch = run.c.micro_batch;
  ASSIGN_OR_RETURN(ParallelDims parallel_dims,
                   ParallelDims::Create(dims, run.runtime->world_size()));
  run.dims = std::make_unique<ParallelDims>(parallel_dims);
  ASSIGN_OR_RETURN(DeviceMesh mesh, DeviceMesh::Create(*run.runtime, run.dims->mesh_axes()));
  run.mesh = std::make_unique<DeviceMesh>(std::move(mesh));
  run.tp_rank = run.mesh->coordinate("tp");
  run.dp_rank = run.mesh->coordinate("dp");
  if (run.dims->pp_enabled()) run.pp_rank = run.mesh->coordinate("pp");
  // The data-parallel index: replicas times the shards of one replica.
  if (run.dims->dp_shard_enabled()) {
    run.dp_rank = run.dp_rank * run.dims->dp_shard() + run.mesh->coordinate("dp_shard");
  }
  return absl::OkStatus();
}

// 2. One run per output_dir: rank 0 holds an exclusive lock on
// <output_dir>/.weft.lock (with its pid inside) for the run's lifetime, and
// every rank learns whether it got it (two runs would overwrite each
// other's checkpoints and export).
absl::Status LockOutputDir(Run& run) {
  const std::string path = run.c.output_dir + "/.weft.lock";
  std::string error;
  if (run.lead) {
    std::error_code ec;
    fs::create_directories(run.c.output_dir, ec);
    UniqueFd fd(ec ? -1 : ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (ec) {
      error = absl::StrCat("output_dir ", run.c.output_dir, " cannot be created: ", ec.message(),
                           " (expected a directory this user can write, or a path where one "
                           "can be made)");
    } else if (!fd.ok()) {
      error =
          absl::StrCat("output_dir ", run.c.output_dir, " is not writable: ", std::strerror(errno),
                       " (expected a directory this user can write)");
    } else if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      const std::string holder = ReadTextFile(path).value_or("");
      error = absl::StrCat("output_dir ", run.c.output_dir, " is in use by another run (", path,
                           " is locked", holder.empty() ? "" : " by pid " + holder,
                           "; expected one run per output_dir)");
    } else {
      const std::string pid = std::to_string(::getpid());
      if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), pid.data(), pid.size(), 0) < 0) {
        error = std::string(WEFT_SYSCALL_ERROR("write", path).message());
      }
      run.output_lock = std::move(fd);
    }
  }
  at::Tensor failed = at::tensor({error.empty() ? 0.0 : 1.0}, at::kFloat);
  run.runtime->world().AllReduce(failed, ReduceOp::kMax);
  if (failed.item<float>() == 0) return absl::OkStatus();
  if (error.empty()) {
    error = absl::StrCat("output_dir ", run.c.output_dir,
                         " is in use by another run (rank 0 could not lock ", path, ")");
  }
  return absl::FailedPreconditionError(error);
}

// 3. Every checkpoint directory is one weft wrote whole, and a fresh run
// never mixes its checkpoints with an earlier run's (keeping the last K by
// step would delete the new ones).
absl::Status CheckOutputDir(Run& run) {
  RETURN_IF_ERROR(CheckCheckpointDirs(run.c.output_dir));
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  const std::optional<std::string> earlier = LatestCheckpoint(run.c.output_dir);
  run.restarted = restarts != nullptr && std::string(restarts) != "0" && earlier;
  if (!run.c.resume && !run.restarted && earlier) {
    return absl::FailedPreconditionError(absl::StrCat(
        "output_dir ", run.c.output_dir, " already holds checkpoints (latest ", *earlier,
        "): pass --resume to continue that run, or choose another output_dir"));
  }
  return absl::OkStatus();
}

// 4. Data: a token file, or a text tokenised byte-level by rank 0.
absl::Status OpenData(Run& run) {
  const TrainConfig& c = run.c;
  run.data_prefix = c.data_path;
  bool byte_level = false;
  if (!c.data_text.empty()) {
    run.data_prefix = absl::StrCat(c.output_dir, "/data/", fs::path(c.data_text).stem().string());
    byte_level = true;
    absl::Status written = absl::OkStatus();
    if (run.lead) {
      std::error_code ec;
      fs::create_directories(c.output_dir + "/data", ec);
      written = WriteByteLevelTokenFile(c.data_text, run.data_prefix);
    }
    run.runtime->world().Barrier();
    RETURN_IF_ERROR(written);
  }
  ASSIGN_OR_RETURN(run.tokens, TokenFile::Open(run.data_prefix));
  byte_level = byte_level || run.tokens->vocab_size() == 256;
  DataLoaderOptions data_options;
  data_options.seq_len = c.seq_len;
  data_options.global_batch = c.global_batch;
  data_options.dp_rank = run.dp_rank;
  data_options.dp_size = run.dims->data_parallel();
  data_options.seed = static_cast<uint64_t>(c.seed);
  data_options.shuffle = c.shuffle;
  data_options.packing = c.packing;
  DataLoaderOptions eval_options = data_options;
  eval_options.shuffle = false;
  eval_options.allow_partial = true;
  std::shared_ptr<TokenFile> eval_tokens;
  if (c.eval_fraction > 0) {
    // Held out: a seeded choice of ceil(fraction * documents), the same on
    // every rank and every resume; both lists keep the file's order.
    const int64_t docs = run.tokens->num_documents();
    const int64_t held = static_cast<int64_t>(std::ceil(c.eval_fraction * docs));
    if (held < 1 || held >= docs) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.eval_fraction ", c.eval_fraction, " of the ", docs, " documents of ",
                       run.data_prefix, " holds out ", held,
                       " (expected at least one document for evaluation and one for training)"));
    }
    std::vector<int64_t> order = EpochPermutation(docs, static_cast<uint64_t>(c.seed), -1);
    std::vector<int64_t> eval_docs(order.begin(), order.begin() + held);
    std::vector<int64_t> train_docs(order.begin() + held, order.end());
    std::sort(eval_docs.begin(), eval_docs.end());
    std::sort(train_docs.begin(), train_docs.end());
    data_options.documents = std::move(train_docs);
    eval_options.documents = std::move(eval_docs);
    eval_tokens = run.tokens;
  } else if (!c.data_eval_path.empty()) {
    ASSIGN_OR_RETURN(eval_tokens, TokenFile::Open(c.data_eval_path));
    if (eval_tokens->vocab_size() != run.tokens->vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data.eval_path ", c.data_eval_path, " has vocab_size ", eval_tokens->vocab_size(),
          " (expected data.path's ", run.tokens->vocab_size(), ")"));
    }
  }
  ASSIGN_OR_RETURN(run.loader, DataLoader::Create(run.tokens, data_options));
  if (eval_tokens) {
    ASSIGN_OR_RETURN(run.eval_loader, DataLoader::Create(eval_tokens, eval_options));
  }
  if (run.sampling() && !byte_level) {
    return absl::InvalidArgumentError(
        absl::StrCat("sample.prompt needs byte-level data (vocab_size 256); ", run.data_prefix,
                     " has vocab_size ", run.tokens->vocab_size(),
                     " (weft has no tokenizer: leave sample.prompt empty)"));
  }
  return absl::OkStatus();
}

// 5a. Pipeline parallelism: the schedule and the stages, decided from the
// config and a model on the meta device, before any memory is allocated.
absl::Status PlanPipeline(Run& run, const ModelConfig& model_config,
                          const ModelOptions& model_options) {
  const TrainConfig& c = run.c;
  ASSIGN_OR_RETURN(Plan pp_plan, ResolvePpPlanForConfig(c.pp_plan, run.config_json));
  std::string schedule_name = c.pp_schedule;
  const bool interleaved = absl::AsciiStrToLower(schedule_name) == "interleaved_1f1b" ||
                           absl::AsciiStrToLower(schedule_name) == "interleaved1f1b";
  const int v = c.pp_stages_per_rank > 0               ? c.pp_stages_per_rank
                : pp_plan.pp_split.stages_per_rank > 0 ? pp_plan.pp_split.stages_per_rank
                : interleaved                          ? 2
                                                       : 1;
  PipelineShape shape;
  shape.schedule = schedule_name;
  shape.ranks = run.dims->pp();
  shape.stages_per_rank = v;
  shape.microbatches = static_cast<int>(run.dims->accumulation());
  auto made = MakeSchedule(shape);
  if (!made.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.pp_schedule ", c.pp_schedule, ": ", made.status().message()));
  }
  run.pipeline = std::make_unique<PipelineSchedule>(std::move(*made));
  if (!pp_plan.pp_split.stage_to_rank.empty() &&
      (pp_plan.pp_split.stage_to_rank == "v") != (run.pipeline->mapping == StageMapping::kV)) {
    return absl::InvalidArgumentError(
        absl::StrCat("pp_split.stage_to_rank ", pp_plan.pp_split.stage_to_rank,
                     " does not fit schedule ", c.pp_schedule, " (it maps stages to ranks ",
                     run.pipeline->mapping == StageMapping::kV ? "v" : "loop", ")"));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> meta, CreateCausalLM(model_config, model_options));
  ASSIGN_OR_RETURN(run.stages, PartitionModel(*meta, pp_plan, run.pipeline->num_stages()));
  for (int s = 0; s < run.pipeline->num_stages(); ++s) {
    if (run.pipeline->RankOf(s) == run.pp_rank) run.my_stages.insert(s);
  }
  // A tied embedding on two pp ranks: one group per (dp, tp) coordinate
  // holds the first and the last stage's copies (made by every rank, in order).
  const int first = run.pipeline->RankOf(0),
            last = run.pipeline->RankOf(run.stages.num_stages() - 1);
  if (model_config.tie_word_embeddings && first != last) {
    for (int d = 0; d < run.dims->dp(); ++d) {
      for (int t = 0; t < run.dims->tp(); ++t) {
        std::vector<int> ranks = {run.mesh->RankAt({first, d, t}), run.mesh->RankAt({last, d, t})};
        ASSIGN_OR_RETURN(std::shared_ptr<ProcessGroup> group,
                         run.runtime->NewGroup(ranks, absl::StrCat("tied_embedding_", d, "_", t)));
        if (group) run.tie_group = group;
      }
    }
  }
  return absl::OkStatus();
}

// 5b. The gates that run one stage at a time through the model's forward,
// and FSDP's sharding over dp_shard.
absl::Status GatePipeline(Run& run, const PieceSource& source) {
  if (run.dims->dp_shard_enabled()) {
    FullyShardOptions options;
    // The model was built on meta: each rank reads only its pieces.
    const ProcessGroup& shard_group = *run.mesh->group("dp_shard");
    ASSIGN_OR_RETURN(options.pieces, ReadPieces(source, shard_group.size(), shard_group.rank()));
    options.reduce_dtype = run.c.reduce_dtype == "bfloat16" || run.c.reduce_dtype == "bf16"
                               ? at::kBFloat16
                               : at::kFloat;
    options.reshard_after_forward = run.c.reshard_after_forward;
    ASSIGN_OR_RETURN(run.fsdp, FullyShard(*run.model, run.mesh->group("dp_shard"), options));
    if (run.lora) {  // what this rank holds of the frozen weights: its pieces
      run.lora->frozen = 0;
      run.lora->trainable = 0;
      for (const FullyShardedModel::Param& p : run.fsdp->parameters()) {
        (p.piece.requires_grad() ? run.lora->trainable : run.lora->frozen) += p.piece.numel();
      }
    }
  }
  if (!run.dims->pp_enabled()) return absl::OkStatus();
  run.gate = GatePipelineStages(*run.model, run.stages);
  // Samples (and anything else that calls Forward) go through the stages.
  std::vector<int> rank_of;
  for (int s = 0; s < run.stages.num_stages(); ++s) rank_of.push_back(run.pipeline->RankOf(s));
  run.pipelined = PipelinedCausalLM(run.model, run.gate, rank_of, run.mesh->group("pp"));
  return absl::OkStatus();
}

// 5. The model: a Hugging Face checkpoint (each rank loads only its shards)
// or transformers' initialisation from a config (the same values at any tp).
// LoRA: adapters on the targeted Linear modules (after tensor parallelism,
// so they follow each base weight's placement), every other weight frozen.
absl::Status AttachLora(Run& run, const std::function<bool(const std::string&)>& keep) {
  const TrainConfig& c = run.c;
  if (c.lora_r == 0) return absl::OkStatus();
  if (run.dims->dp_shard_enabled()) {
    // The model is on meta until fully_shard cuts it: the adapters are made
    // whole on the device (this stage's), then cut like every parameter.
    run.lora_options.device = run.runtime->device();
    run.lora_options.keep = keep;
  }
  LoraOptions& o = run.lora_options;
  o.r = c.lora_r;
  o.alpha = c.lora_alpha;
  o.dropout = c.lora_dropout;
  o.target_modules = c.lora_target_modules;
  o.use_rslora = c.lora_use_rslora;
  o.seed = static_cast<uint64_t>(c.seed);
  std::shared_ptr<const ProcessGroup> tp = run.dims->tp_enabled() ? run.mesh->group("tp") : nullptr;
  ASSIGN_OR_RETURN(run.lora, ApplyLora(*run.model, o, tp));
  return absl::OkStatus();
}

absl::Status BuildModel(Run& run) {
  Heartbeat::Get().Progress(0, "loading the model");
  const TrainConfig& c = run.c;
  // dp_shard on the CPU frees and regathers every layer each step; glibc's
  // dynamic mmap threshold would keep those blocks in its heap after the
  // first free (a 124.7M Llama at dp_shard 2 peaked 44 % above the estimate).
  // A fixed 8 MiB threshold returns them (+16 % instead, bench/README.md); an
  // explicit MALLOC_MMAP_THRESHOLD_ wins.
  if (run.dims->dp_shard_enabled() && run.runtime->device().is_cpu() &&
      std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) {
    ::mallopt(M_MMAP_THRESHOLD, 8 << 20);
  }
  const at::ScalarType dtype = c.precision == "bf16" ? at::kBFloat16 : at::kFloat;
  const std::string dir = c.model_pretrained;
  const std::string config_path = dir.empty() ? ConfigFile(c.model_config) : dir + "/config.json";
  ASSIGN_OR_RETURN(run.config_json, ReadTextFile(config_path));
  ASSIGN_OR_RETURN(ModelConfig model_config, ParseModelConfig(run.config_json));
  ModelOptions model_options;
  model_options.dtype = dtype;
  model_options.attn_implementation = c.attn_implementation;
  const c10::Device device = run.runtime->device();
  PretrainedOptions pretrained;
  pretrained.dtype = dtype;
  pretrained.device = device;
  if (device.is_cuda()) pretrained.device_memory = CudaDeviceMemory();
  pretrained.attn_implementation = c.attn_implementation;
  // LoRA freezes every base weight: nothing writes them, so on the CPU they
  // may be views of the checkpoint's mapped files (shared by the node's ranks).
  pretrained.zero_copy = c.lora_r > 0;
  InitOptions init(static_cast<uint64_t>(c.seed));
  init.device = device;
  at::manual_seed(static_cast<uint64_t>(c.seed));
  std::function<bool(const std::string&)> keep;
  if (run.dims->pp_enabled()) {
    RETURN_IF_ERROR(PlanPipeline(run, model_config, model_options));
    keep = [&run](const std::string& name) {
      return run.my_stages.count(run.stages.StageOf(name)) > 0;
    };
  }
  // With dp_shard the model's parameters stay on meta and each rank reads
  // (or initialises) only its pieces of what it keeps (GatePipeline).
  PieceSource pieces;
  pieces.dir = dir;
  pieces.pretrained = pretrained;
  pieces.config = model_config;
  pieces.model_options = model_options;
  pieces.init = init;
  pieces.keep = keep;
  if (run.dims->dp_shard_enabled()) keep = [](const std::string&) { return false; };
  if (!run.dims->tp_enabled()) {
    if (c.loss_parallel) {
      return absl::InvalidArgumentError("parallel.loss_parallel needs parallel.tp > 1");
    }
    if (!dir.empty()) {
      LoadHooks hooks;
      hooks.keep = keep;
      ASSIGN_OR_RETURN(run.model, FromPretrained(dir, pretrained, hooks));
    } else {
      ASSIGN_OR_RETURN(run.model, CreateCausalLM(model_config, model_options));
      init.keep = keep;
      RETURN_IF_ERROR(InitializeWeights(*run.model, init));
    }
    RETURN_IF_ERROR(AttachLora(run, pieces.keep));
    return GatePipeline(run, pieces);
  }
  ASSIGN_OR_RETURN(Plan plan, ResolvePlanForConfig(c.plan, run.config_json));
  TensorParallelOptions tp_options;
  tp_options.loss_parallel = c.loss_parallel;
  tp_options.keep = keep;
  // Every tp rank's placements, for checkpoints and the export.
  ASSIGN_OR_RETURN(run.all_placements, PlanPlacements(model_config, model_options, plan,
                                                      run.dims->tp(), tp_options.resolve));
  if (!dir.empty()) {
    ASSIGN_OR_RETURN(run.model, FromPretrainedTensorParallel(dir, pretrained, plan,
                                                             run.mesh->group("tp"), tp_options));
  } else {
    ASSIGN_OR_RETURN(run.model, InitTensorParallel(model_config, model_options, init, plan,
                                                   run.mesh->group("tp"), tp_options));
  }
  if (run.dims->dp_shard_enabled()) {
    ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> meta, CreateCausalLM(model_config, model_options));
    ASSIGN_OR_RETURN(
        pieces.tp_shards,
        PlanShards(*meta, plan, run.dims->tp(), run.mesh->group("tp")->rank(), tp_options.resolve));
  }
  RETURN_IF_ERROR(AttachLora(run, pieces.keep));
  return GatePipeline(run, pieces);
}

// 6. The parameters, once each, and the optimizer over them.
absl::Status SetUpOptimizer(Run& run) {
  CausalLM& model = *run.model;
  if (run.tokens->vocab_size() > model.config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("data ", run.data_prefix, " has vocab_size ", run.tokens->vocab_size(),
                     ", larger than the model's vocab_size ", model.config.vocab_size));
  }
  if (run.sampling()) {
    const int64_t length =
        static_cast<int64_t>(run.c.sample_prompt.size()) + run.c.sample_max_new_tokens;
    if (length > model.config.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample.max_new_tokens ", run.c.sample_max_new_tokens, " with a prompt of ",
                       run.c.sample_prompt.size(), " bytes makes ", length,
                       " positions (expected at most max_position_embeddings ",
                       model.config.max_position_embeddings, ")"));
    }
  }
  model.train();
  if (run.c.activation_checkpointing) EnableActivationCheckpointing(model);
  std::vector<AdamW::Param> opt_params;
  std::set<const void*> seen;
  const bool pipelined = run.dims->pp_enabled();
  if (run.fsdp) {
    // The pieces: each rank updates 1/dp_shard of every parameter.
    for (size_t index = 0; index < run.fsdp->parameters().size(); ++index) {
      const FullyShardedModel::Param& p = run.fsdp->parameters()[index];
      if (!p.piece.requires_grad()) continue;  // frozen (LoRA's base)
      run.fsdp_index.push_back(index);
      const DTensorSpec* spec = ParameterPlacement(model, p.name);
      const size_t global_dims = spec == nullptr ? p.full_shape.size() : spec->global_shape.size();
      opt_params.push_back({p.name, p.piece, global_dims >= 2});
      run.params.push_back(p.piece);
      int replication = run.dims->GradReplication(spec);
      // A packed q | k | v's replicated KV rows, as rows of this piece.
      std::vector<Range> rows;
      if (spec != nullptr && replication > 1) {
        for (const Range& r : spec->replicated_rows)
          rows.push_back({r.start - p.offset, r.end - p.offset});
      }
      if (pipelined) {
        const int stage = run.stages.StageOf(p.name);
        run.stage_params[stage].push_back(p.piece);
        const bool tied = model.config.tie_word_embeddings &&
                          (p.name == "model.embed_tokens.weight" || p.name == "lm_head.weight");
        if (tied) {
          run.tied = p.piece;
          if (run.tie_group) replication *= 2;  // the first and the last stage hold it
        }
      }
      run.replication.push_back({replication, std::move(rows)});
      run.named.emplace_back(p.name, p.piece);
    }
  }
  for (const auto& item :
       run.fsdp ? torch::OrderedDict<std::string, at::Tensor>() : model.named_parameters()) {
    if (!seen.insert(item.value().unsafeGetTensorImpl()).second) continue;
    // Frozen (LoRA's base): no gradient, no optimizer state, not checkpointed.
    if (!item.value().requires_grad()) continue;
    const std::string& name = item.key();
    if (pipelined) {
      // Only this rank's stages (the others' parameters stay on meta).
      const int stage = run.stages.StageOf(name);
      if (!run.my_stages.count(stage) || item.value().is_meta()) continue;
      run.stage_params[stage].push_back(item.value());
    }
    const DTensorSpec* spec = ParameterPlacement(model, name);
    const size_t global_dims = spec == nullptr ? item.value().dim() : spec->global_shape.size();
    const bool decay = global_dims >= 2;  // not norms, not biases
    opt_params.push_back({name, item.value(), decay});
    run.params.push_back(item.value());
    int replication = run.dims->GradReplication(spec);
    const bool tied = model.config.tie_word_embeddings &&
                      (name == "model.embed_tokens.weight" || name == "lm_head.weight");
    if (pipelined && tied) {
      run.tied = item.value();
      if (run.tie_group) replication *= 2;  // the first and the last stage hold it
      // The last stage's head uses it too (one rank holding both stages).
      if (name == "model.embed_tokens.weight") {
        run.stage_params[run.stages.num_stages() - 1].push_back(item.value());
      }
    }
    run.replication.push_back({replication, spec != nullptr && replication > 1
                                                ? spec->replicated_rows
                                                : std::vector<Range>{}});
    run.named.emplace_back(name, item.value());
  }
  AdamWOptions options;
  options.beta1 = run.c.betas[0];
  options.beta2 = run.c.betas[1];
  options.eps = run.c.eps;
  options.weight_decay = run.c.weight_decay;
  run.optimizer = std::make_unique<AdamW>(opt_params, options);
  run.schedule.lr = run.c.lr;
  run.schedule.warmup_steps = run.c.warmup_steps;
  run.schedule.total_steps = run.c.steps;
  run.schedule.decay = run.c.decay;
  run.schedule.min_lr_ratio = run.c.min_lr_ratio;
  return absl::OkStatus();
}

// Exact resume needs what decided the data order and the batches to stay
// as the checkpoint had them; more steps, another lr or logging are fine.
absl::Status CheckResumable(const TrainConfig& now, const std::string& checkpoint,
                            int64_t saved_step) {
  if (now.steps < saved_step) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.steps ", now.steps, " is below the step of ", checkpoint, " (",
                     saved_step, "): there is nothing to train (expected more steps)"));
  }
  const std::string path = checkpoint + "/config.yaml";
  if (!fs::exists(path)) return absl::OkStatus();  // written by an older weft
  ASSIGN_OR_RETURN(TrainConfig saved, LoadTrainConfig(path, {}));
  struct Key {
    const char* name;
    std::string saved, now;
  };
  const Key keys[] = {
      {"train.global_batch", std::to_string(saved.global_batch), std::to_string(now.global_batch)},
      {"data.seq_len", std::to_string(saved.seq_len), std::to_string(now.seq_len)},
      {"train.seed", std::to_string(saved.seed), std::to_string(now.seed)},
      {"data.path", saved.data_path, now.data_path},
      {"data.text", saved.data_text, now.data_text},
      {"data.shuffle", saved.shuffle ? "true" : "false", now.shuffle ? "true" : "false"},
  };
  for (const Key& k : keys) {
    if (k.saved != k.now) {
      return absl::InvalidArgumentError(
          absl::StrCat("train.resume: ", k.name, " is '", k.now, "' but ", checkpoint,
                       " was trained with '", k.saved,
                       "' (expected the same value to resume exactly; use another output_dir for a "
                       "new run)"));
    }
  }
  return absl::OkStatus();
}

// Each parameter's slice as this rank holds it: its tp placement, cut
// further to its dp_shard piece (dim-0 rows of the tp-local tensor).
std::map<std::string, TensorSlice> HeldSlices(const Run& run) {
  std::map<std::string, TensorSlice> out;
  for (size_t i = 0; i < run.named.size(); ++i) {
    const std::string& name = run.named[i].first;
    const DTensorSpec* spec = ParameterPlacement(*run.model, name);
    TensorSlice t;
    t.global_shape = spec != nullptr ? spec->global_shape : run.named[i].second.sizes().vec();
    if (spec != nullptr) t.slice = spec->ranges;
    if (run.fsdp) {
      const FullyShardedModel::Param& p = run.fsdp->parameters()[run.fsdp_index[i]];
      if (spec == nullptr) t.global_shape = p.full_shape;
      // The tp-local dim-0 rows, as global indices, then this piece's run of them.
      std::vector<int64_t> rows;
      if (!t.slice.empty() && !t.slice[0].empty()) {
        for (const Range& r : t.slice[0])
          for (int64_t k = r.start; k < r.end; ++k) rows.push_back(k);
      } else {
        for (int64_t k = 0; k < t.global_shape[0]; ++k) rows.push_back(k);
      }
      std::vector<Range> mine;
      for (int64_t k = p.offset; k < p.offset + p.rows; ++k) {
        if (!mine.empty() && mine.back().end == rows[k]) {
          ++mine.back().end;
        } else {
          mine.push_back({rows[k], rows[k] + 1});
        }
      }
      if (mine.empty()) mine.push_back({0, 0});  // an empty piece
      if (t.slice.empty()) t.slice.resize(t.global_shape.size());
      t.slice[0] = mine;
    }
    out[name] = std::move(t);
  }
  return out;
}

// 7. Resume: --resume, or a restarted attempt under weftrun/torchrun that
// finds a checkpoint (torchelastic's contract for restarts).
absl::Status Resume(Run& run) {
  Heartbeat::Get().Progress(0, "resuming from a checkpoint");
  const TrainConfig& c = run.c;
  if (!c.resume && !run.restarted) return absl::OkStatus();
  std::optional<std::string> latest = LatestCheckpoint(c.output_dir);
  if (!latest) {
    return absl::NotFoundError(
        absl::StrCat("train.resume: no checkpoint under ", c.output_dir, "/checkpoints"));
  }
  // The checkpoint holds a tied head under the embedding's name (one tensor).
  auto saved_name = [&run](const std::string& name) {
    return run.tied_head(name) ? std::string("model.embed_tokens.weight") : name;
  };
  std::set<std::string> wanted;
  for (const auto& [name, tensor] : run.named) wanted.insert(saved_name(name));
  LoadLayout layout;
  layout.tp = run.dims->tp();
  layout.tp_rank = run.tp_rank;
  layout.dp_shard = run.dims->dp_shard();
  layout.dp_shard_rank = run.fsdp ? run.fsdp->group().rank() : 0;
  for (auto& [name, slice] : HeldSlices(run)) layout.targets[saved_name(name)] = std::move(slice);
  layout.wanted = [&wanted](const std::string& name) { return wanted.count(name) > 0; };
  const PeakRssMeter meter;
  ASSIGN_OR_RETURN(LoadedCheckpoint ckpt, LoadCheckpointSlices(*latest, layout));
  // Resharding's own peak memory against its bound (what the rank got plus
  // the largest tensor), from every rank; the log names the worst.
  at::Tensor measured =
      at::tensor({static_cast<double>(meter.Peak()), static_cast<double>(ckpt.bytes()),
                  static_cast<double>(ckpt.largest_tensor_bytes)},
                 at::kDouble);
  measured = run.runtime->world_group()
                 ->AllGather(measured.view({1, 3}).to(run.runtime->device()), 0)
                 .cpu();
  RETURN_IF_ERROR(CheckResumable(c, *latest, ckpt.state.step));
  for (const auto& [name, tensor] : run.named) {
    if (saved_name(name) == name) continue;
    for (const char* kind : {"exp_avg.", "exp_avg_sq.", "master."}) {
      auto it = ckpt.optimizer.find(kind + saved_name(name));
      if (it != ckpt.optimizer.end()) ckpt.optimizer[kind + name] = it->second;
    }
  }
  {
    at::NoGradGuard no_grad;
    for (auto& [name, tensor] : run.named) {
      auto it = ckpt.params.find(saved_name(name));
      if (it == ckpt.params.end() || it->second.sizes() != tensor.sizes()) {
        return absl::InvalidArgumentError(
            absl::StrCat(*latest, ": parameter '", name, "' is missing or has another shape"));
      }
      tensor.detach().copy_(it->second);
    }
  }
  RETURN_IF_ERROR(run.optimizer->LoadState(ckpt.optimizer, ckpt.state.step));
  RETURN_IF_ERROR(run.loader->Restore(ckpt.state.data));
  run.step = ckpt.state.step;
  if (run.lead &&
      (ckpt.state.tp != run.dims->tp() || ckpt.state.dp != run.dims->dp() ||
       ckpt.state.pp != run.dims->pp() || ckpt.state.dp_shard != run.dims->dp_shard())) {
    auto mesh_text = [](int pp, int dp, int dp_shard, int tp) {
      return absl::StrCat(pp > 1 ? absl::StrCat("pp ", pp, " x ") : "", "dp ", dp,
                          dp_shard > 1 ? absl::StrCat(" x dp_shard ", dp_shard) : "", " x tp ", tp);
    };
    run.log << "[train] resharded from "
            << mesh_text(ckpt.state.pp, ckpt.state.dp, ckpt.state.dp_shard, ckpt.state.tp) << " to "
            << mesh_text(run.dims->pp(), run.dims->dp(), run.dims->dp_shard(), run.dims->tp())
            << "\n";
    int worst = 0;
    auto excess = [&measured](int r) {
      return measured[r][0].item<double>() - measured[r][1].item<double>() -
             measured[r][2].item<double>();
    };
    for (int r = 1; r < measured.size(0); ++r) worst = excess(r) > excess(worst) ? r : worst;
    if (measured[worst][0].item<double>() >= 0) {
      run.log << absl::StrFormat(
          "[train] resharding's peak memory, highest over its bound on rank %d: +%.2f MB "
          "(its slices %.2f MB + the largest tensor %.2f MB = %.2f MB)\n",
          worst, measured[worst][0].item<double>() / 1e6, measured[worst][1].item<double>() / 1e6,
          measured[worst][2].item<double>() / 1e6,
          (measured[worst][1].item<double>() + measured[worst][2].item<double>()) / 1e6);
    }
  }
  if (!ckpt.state.rng_state_hex.empty()) RestoreRngState(ckpt.state.rng_state_hex);
  if (run.lead) run.log << "[train] resumed from " << *latest << " at step " << run.step << "\n";
  return absl::OkStatus();
}

// metrics.jsonl's records by step (a later line for the same step wins).
// One metrics.jsonl record: its line as written and its loss.
struct MetricsRecord {
  std::string line;
  std::optional<double> loss;
  std::optional<double> eval_loss;
};

std::map<int64_t, MetricsRecord> MetricsByStep(const std::string& path) {
  std::map<int64_t, MetricsRecord> records;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto record = ParseJson(line);
    if (!record.ok() || !record->is_object()) continue;
    const JsonValue* step = record->Find("step");
    if (step == nullptr || !step->AsUint64()) continue;
    const JsonValue* loss = record->Find("loss");
    const JsonValue* eval_loss = record->Find("eval_loss");
    records[static_cast<int64_t>(*step->AsUint64())] = {
        line, loss == nullptr ? std::nullopt : loss->AsDouble(),
        eval_loss == nullptr ? std::nullopt : eval_loss->AsDouble()};
  }
  return records;
}

// Rewrites metrics.jsonl with the records of steps 1..`step` only.
absl::Status KeepMetricsUpTo(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return absl::OkStatus();
  std::string kept;
  for (const auto& [at_step, record] : MetricsByStep(path)) {
    if (at_step <= step) absl::StrAppend(&kept, record.line, "\n");
  }
  return WriteTextFileAtomically(path, kept);
}

// 8. Before the first step: a sample, the header line, metrics.jsonl.
absl::Status Start(Run& run) {
  const TrainConfig& c = run.c;
  CausalLM& model = *run.model;
  run.result.first_step = run.step + 1;
  if (run.sampling()) {
    run.result.sample_before = Sample(run.pipelined ? *run.pipelined : model, c.sample_prompt,
                                      c.sample_max_new_tokens, run.runtime->device());
    if (run.fsdp) run.fsdp->Reshard();
    if (run.lead) {
      run.log << "[train] sample before training:\n" << run.result.sample_before << "\n---\n";
    }
  }
  if (run.lead) {
    int64_t local = 0, total = 0;  // parameters on this rank, and in the whole model
    for (const auto& [name, p] : run.named) local += p.numel();
    if (run.lora) local += run.lora->frozen;  // held, though not trained
    for (const auto& item : model.named_parameters()) {
      if (run.tied_head(item.key())) continue;  // one tensor with the embedding
      const DTensorSpec* spec = ParameterPlacement(model, item.key());
      int64_t n = 1;
      for (int64_t d : spec == nullptr ? item.value().sizes().vec() : spec->global_shape) n *= d;
      total += n;
    }
    const double epochs = static_cast<double>(c.steps) / static_cast<double>(std::max<int64_t>(
                                                             1, run.loader->batches_per_epoch()));
    run.log << absl::StrFormat(
        "[train] %s, %d layers, %.2fM parameters (%.2fM on this rank); %s, %s, plan %s; mesh %sdp "
        "%s x tp %d; global batch %d x %d = %d tokens per step (%d micro-batches of %d per "
        "rank); %d steps = %.2f epochs\n",
        model.config.architecture, model.config.num_hidden_layers, total / 1e6, local / 1e6,
        run.runtime->device().str(), c.precision, run.dims->tp_enabled() ? c.plan : "none",
        run.dims->pp_enabled() ? absl::StrCat("pp ", run.dims->pp(), " x ") : std::string(),
        run.dims->dp_shard_enabled()
            ? absl::StrCat(run.dims->dp(), " x dp_shard ", run.dims->dp_shard())
            : absl::StrCat(run.dims->dp()),
        run.dims->tp(), c.global_batch, c.seq_len, c.global_batch * c.seq_len,
        run.dims->accumulation(), run.dims->micro_batch(), c.steps, epochs);
    // What this rank holds in a step, before it allocates activations.
    MemoryShape shape;
    shape.dtype = run.params.empty() ? at::kFloat : run.params[0].scalar_type();
    for (const auto& [name, p] : run.named) shape.local_parameters += p.numel();
    if (run.fsdp) {
      std::vector<std::pair<std::string, int64_t>> tp_local;
      for (const FullyShardedModel::Param& p : run.fsdp->parameters()) {
        int64_t n = 1;
        for (int64_t d : p.full_shape) n *= d;
        tp_local.emplace_back(p.name, n);
      }
      shape.gathered_parameters = GatheredElements(tp_local, c.reshard_after_forward);
    }
    shape.layers = model.config.num_hidden_layers;
    if (run.dims->pp_enabled()) {
      shape.layers = 0;
      for (int s : run.my_stages) {
        for (const std::string& unit : run.stages.stages[s]) {
          shape.layers += unit.find(".layers.") != std::string::npos;
        }
      }
      auto sim = Simulate(*run.pipeline);
      if (sim.ok()) shape.microbatches_in_flight = sim->peak_activations[run.pp_rank];
    }
    shape.tp = run.dims->tp();
    shape.micro_batch = run.dims->micro_batch();
    shape.seq_len = c.seq_len;
    shape.activation_checkpointing = c.activation_checkpointing;
    if (run.lora) shape.frozen_parameters = run.lora->frozen;
    run.log << "[train] memory per rank (estimate, rank 0): "
            << EstimateMemory(model.config, shape).ToString() << "\n";
    if (run.lora) {
      // A frozen weight needs no gradient, no AdamW moments (2 x fp32) and,
      // in bf16, no fp32 master copy.
      const double per_frozen = static_cast<double>(c10::elementSize(shape.dtype)) + 8.0 +
                                (shape.dtype == at::kFloat ? 0.0 : 4.0);
      const LoraSummary& l = *run.lora;
      std::vector<std::string> kinds;
      for (const std::string& m : l.modules) {
        const std::string last = m.substr(m.rfind('.') + 1);
        if (std::find(kinds.begin(), kinds.end(), last) == kinds.end()) kinds.push_back(last);
      }
      run.log << absl::StrFormat(
          "[train] lora: r %d, alpha %g (scale %g%s), dropout %g on %d modules (%s): %.3fM "
          "trainable of %.2fM parameters on this rank (%.2f%%); the frozen ones keep no "
          "gradient, optimizer state or fp32 master: %.1f MB less per rank\n",
          run.lora_options.r, run.lora_options.alpha, run.lora_options.scale(),
          run.lora_options.use_rslora ? ", rsLoRA" : "", run.lora_options.dropout, l.modules.size(),
          absl::StrJoin(kinds, ", "), l.trainable / 1e6, (l.trainable + l.frozen) / 1e6,
          100.0 * static_cast<double>(l.trainable) / static_cast<double>(l.trainable + l.frozen),
          per_frozen * static_cast<double>(l.frozen) / 1e6);
    }
    const DataLoader& data = *run.loader;
    if (c.packing || run.tokens->has_loss_mask()) {
      run.log << absl::StrFormat(
          "[train] data: %s%s, %d samples of %d tokens%s\n", run.data_prefix,
          run.tokens->has_loss_mask() ? " with a loss mask (labels -100 where it is 0)" : "",
          data.num_samples(), c.seq_len,
          c.packing ? absl::StrFormat(" packed by best-fit decreasing, documents apart (%d "
                                      "tokens cut from documents longer than seq_len)",
                                      data.truncated_tokens())
                    : std::string());
    }
    if (run.eval_loader) {
      run.log << absl::StrFormat(
          "[train] eval: %s, %d samples = %d global batches%s, every %s\n",
          c.eval_fraction > 0
              ? absl::StrFormat("%d documents of %s held out (data.eval_fraction %g)",
                                run.eval_loader->options().documents.size(), run.data_prefix,
                                c.eval_fraction)
              : c.data_eval_path,
          run.eval_loader->num_samples(), run.eval_loader->eval_batches(),
          c.eval_batches > 0 ? absl::StrFormat(" (%d per evaluation)", c.eval_batches)
                             : std::string(),
          c.eval_every > 0 ? absl::StrFormat("%d steps and at the end", c.eval_every)
                           : std::string("run: at the end"));
    }
    if (run.dims->pp_enabled()) {
      const PipelineSchedule& p = *run.pipeline;
      std::vector<std::string> cuts;
      for (int s = 0; s < run.stages.num_stages(); ++s) {
        const auto& units = run.stages.stages[s];
        cuts.push_back(absl::StrCat(s, "@", p.RankOf(s), ": ", units.front(),
                                    units.size() > 1 ? absl::StrCat("..", units.back()) : ""));
      }
      auto sim = Simulate(p);
      run.log << absl::StrFormat(
          "[train] pipeline pp %d, schedule %s, %d stages (%d per rank), %d micro-batches of %d, "
          "bubble %.3f (unit-time simulation); stages %s\n",
          run.dims->pp(), p.shape.schedule, p.num_stages(), p.shape.stages_per_rank,
          p.shape.microbatches, run.dims->micro_batch(), sim.ok() ? sim->bubble : -1.0,
          absl::StrJoin(cuts, "; "));
    }
    run.log.flush();
  }
  std::error_code ec;
  if (run.lead) fs::create_directories(c.output_dir, ec);
  run.metrics_path = c.output_dir + "/metrics.jsonl";
  // A resumed run (--resume or a restarted attempt) keeps the steps up to its
  // checkpoint, once each and in order, and appends the new ones.
  const bool resuming = c.resume || run.restarted;
  if (run.lead && resuming) RETURN_IF_ERROR(KeepMetricsUpTo(run.metrics_path, run.step));
  if (run.lead) {
    run.metrics.open(run.metrics_path, resuming ? std::ios::app : std::ios::trunc);
    if (!run.metrics) {
      return absl::InternalError(absl::StrCat(run.metrics_path, ": cannot be written"));
    }
  }
  return absl::OkStatus();
}

// A checkpoint of the state after `at_step` steps (collective).
absl::Status Save(Run& run, int64_t at_step) {
  Heartbeat::Get().Progress(at_step, "saving a checkpoint");
  SaveRequest request;
  request.output_dir = run.c.output_dir;
  request.keep = run.c.checkpoint_keep;
  request.state.step = at_step;
  request.state.data = run.loader->position();
  request.state.tp = run.dims->tp();
  request.state.dp = run.dims->dp();
  request.state.pp = run.dims->pp();
  request.state.dp_shard = run.dims->dp_shard();
  request.state.seed = run.c.seed;
  request.state.rng_state_hex = RngStateHex();
  request.config_yaml = run.c.ToYaml();
  // A tied head's copy (the last stage's) is the embedding: saved once.
  // With dp_shard every rank writes its pieces, each with its slice.
  for (auto& [name, t] : run.named) {
    if (!run.tied_head(name)) request.params.emplace_back(name, t.detach());
  }
  for (auto& [key, t] : run.optimizer->StateTensors()) {
    if (!run.tied_head(key.substr(key.find('.') + 1))) request.optimizer.emplace_back(key, t);
  }
  std::map<std::string, TensorSlice> slices;
  if (run.fsdp) {
    slices = HeldSlices(run);
    request.slices = &slices;
  }
  request.shards = run.placements();
  RETURN_IF_ERROR(SaveCheckpoint(request, *run.mesh, run.runtime->rank()));
  if (run.lead)
    run.log << "[train] checkpoint " << CheckpointDir(run.c.output_dir, at_step) << "\n";
  return absl::OkStatus();
}

struct StepStats {
  double loss = 0;
  double grad_norm = 0;
  double lr = 0;
  std::optional<EvalResult> eval;  // when this step evaluated
};

// Rows [first, first + rows) of a batch as the model's inputs on `device`.
CausalLMInputs MicroBatch(const Batch& batch, int64_t first, int64_t rows, at::Device device) {
  CausalLMInputs inputs;
  inputs.input_ids = batch.input_ids.narrow(0, first, rows).to(device);
  inputs.labels = batch.labels.narrow(0, first, rows).to(device);
  if (batch.position_ids.defined()) {
    inputs.position_ids = batch.position_ids.narrow(0, first, rows).to(device);
  }
  return inputs;
}

// The labels rows [first, first + rows) of the batch count (the model
// shifts: labels[:, 1:] != -100), from the CPU copy: no device sync between
// forward and backward.
double CountedLabels(const Batch& batch, int64_t first, int64_t rows) {
  const at::Tensor labels = batch.labels.narrow(0, first, rows);
  return (labels.narrow(1, 1, labels.size(1) - 1) != -100).sum().item<double>();
}

// One step's micro-batches through the pipeline stages of this rank (the
// schedule's order); the last stage adds up the loss over its tokens.
void PipelineMicroBatches(Run& run, const Batch& batch, double weight, double& loss_sum,
                          double& counted) {
  const ParallelDims& dims = *run.dims;
  const int64_t micro = dims.micro_batch(), seq = run.c.seq_len;
  const int last = run.stages.num_stages() - 1;
  CausalLM& model = *run.model;
  StageGate& gate = *run.gate;
  // Zero-bubble schedules split the backward: weight gradients wait for W.
  bool zero_bubble = false;
  for (const PipelineAction& a : run.pipeline->actions[run.pp_rank]) {
    zero_bubble = zero_bubble || a.kind == PipelineAction::Kind::kBackwardWeight;
  }
  PipelineStageFns fns;
  if (zero_bubble) {
    fns.defer_weight_grads = [](const std::function<void()>& backward) -> std::function<void()> {
      DeferWeightGrads::Capture capture;
      backward();
      auto grads = std::make_shared<DeferredWeightGrads>(capture.Take());
      return [grads] { grads->Apply(); };
    };
  }
  fns.forward = [&](int stage, int mb, const at::Tensor& input) {
    std::optional<DeferWeightGrads::Recording> recording;
    if (zero_bubble) recording.emplace();
    CausalLMInputs inputs = MicroBatch(batch, mb * micro, micro, run.runtime->device());
    if (stage != last) inputs.labels = at::Tensor();
    gate.current = stage;
    gate.input = input;
    gate.output = at::Tensor();
    CausalLMOutput out = model.Forward(inputs);
    at::Tensor result = gate.output;
    gate.current = -1;
    gate.input = gate.output = at::Tensor();
    if (stage != last) return result;
    // transformers' loss, exactly as one process computes it: the mean over
    // this micro-batch's counted labels, weighted by their share of the
    // global batch's.
    const double n = CountedLabels(batch, mb * micro, micro);
    if (n == 0) return out.logits.sum() * 0.0;  // nothing counted: zero gradients
    loss_sum += out.loss.item<double>() * n;
    counted += n;
    return out.loss * (n * weight);
  };
  fns.parameters = [&run](int stage) { return run.stage_params[stage]; };
  fns.activation_shape = {micro, seq, model.config.hidden_size};
  fns.dtype = model.options.dtype;
  fns.device = run.runtime->device();
  PipelineRunOptions options;
  options.timeout = std::chrono::seconds(run.c.pp_timeout);
  std::vector<PipelineActionTiming> timings;
  if (run.c.pp_trace) options.timings = &timings;
  RunPipelineStep(*run.pipeline, (*run.mesh)["pp"], fns, options);
  if (run.c.pp_trace) {
    // One JSON line per action: the benchmark's measured bubble.
    if (!run.pp_trace.is_open()) {
      std::error_code ec;
      fs::create_directories(run.c.output_dir + "/pp_trace", ec);
      run.pp_trace.open(
          absl::StrCat(run.c.output_dir, "/pp_trace/rank", run.runtime->rank(), ".jsonl"),
          std::ios::trunc);
    }
    for (const PipelineActionTiming& t : timings) {
      run.pp_trace << absl::StrFormat(
          "{\"step\": %d, \"pp_rank\": %d, \"action\": \"%s\", \"start\": %.6f, \"end\": "
          "%.6f, \"wait\": %.6f}\n",
          run.step + 1, run.pp_rank, t.action, t.start, t.end, t.wait);
    }
    run.pp_trace.flush();
  }
}

// 9. One optimizer step: micro-batches accumulate gradients, dp averages
// them, the global norm clips them, AdamW updates.
absl::StatusOr<StepStats> RunStep(Run& run) {
  const TrainConfig& c = run.c;
  const ParallelDims& dims = *run.dims;
  StepStats stats;
  stats.lr = LearningRate(run.schedule, run.step);
  Heartbeat& heartbeat = Heartbeat::Get();
  heartbeat.Progress(run.step + 1, "forward/backward");
  const Batch batch = run.loader->NextBatch();
  const int64_t micro = dims.micro_batch();
  // transformers' loss over the global batch: the mean over every counted
  // label of every rank. Each micro-batch's mean is weighted by its counted
  // labels over the global count, times the data-parallel ranks (their
  // gradients are averaged). Without masks or packing every row counts
  // seq_len - 1 labels; else the ranks sum their counts first.
  double global_labels = static_cast<double>(c.global_batch * (c.seq_len - 1));
  if (run.loader->masks_labels()) {
    at::Tensor total = at::tensor({static_cast<double>(batch.label_tokens)}, at::kDouble);
    if (dims.dp_shard_enabled()) (*run.mesh)["dp_shard"].AllReduce(total);
    if (dims.dp_enabled()) (*run.mesh)["dp"].AllReduce(total);
    global_labels = total.item<double>();
  }
  const double weight =
      global_labels > 0 ? static_cast<double>(dims.data_parallel()) / global_labels : 0.0;
  double loss_sum = 0;  // sum over this rank's counted tokens
  double counted = 0;
  if (dims.pp_enabled()) {
    PipelineMicroBatches(run, batch, weight, loss_sum, counted);
  }
  for (int64_t m = 0; m < (dims.pp_enabled() ? 0 : dims.accumulation()); ++m) {
    CausalLMInputs inputs = MicroBatch(batch, m * micro, micro, run.runtime->device());
    CausalLMOutput out = run.model->Forward(inputs);
    const double n = CountedLabels(batch, m * micro, micro);
    if (n == 0) {
      // Nothing counted (all masked): zero gradients, the same collectives.
      (out.logits.sum() * 0.0).backward();
      continue;
    }
    (out.loss * (n * weight)).backward();
    loss_sum += out.loss.item<double>() * n;
    counted += n;
  }
  at::Tensor totals = at::tensor({loss_sum, counted}, at::kDouble);
  if (dims.pp_enabled()) {
    // The last stage computed the losses; every rank logs the same value.
    ProcessGroup& pp = (*run.mesh)["pp"];
    pp.AllReduce(totals);
    if (run.tie_group) {
      // Megatron's scheme: the embedding's and the head's uses of the tied
      // weight add up in both copies, which so stay equal.
      heartbeat.Progress(run.step + 1, "all-reduce of the tied embedding");
      if (!run.tied.grad().defined()) run.tied.mutable_grad() = at::zeros_like(run.tied);
      run.tie_group->AllReduce(run.tied.grad());
    }
  }
  if (dims.dp_shard_enabled()) (*run.mesh)["dp_shard"].AllReduce(totals);
  if (dims.dp_enabled()) {
    ProcessGroup& dp = (*run.mesh)["dp"];
    heartbeat.Progress(run.step + 1, "all-reduce of gradients");
    AllReduceGradients(run.params, dp);
    dp.AllReduce(totals);
  }
  stats.loss = totals[0].item<double>() / totals[1].item<double>();
  ProcessGroup* tp = dims.tp_enabled() ? &(*run.mesh)["tp"] : nullptr;
  heartbeat.Progress(run.step + 1, "gradient norm");
  stats.grad_norm =
      ClipGradNorm(run.params, run.replication, tp, c.grad_clip,
                   {run.pp_group(), dims.dp_shard_enabled() ? &(*run.mesh)["dp_shard"] : nullptr});
  // Every rank holds the same global loss and norm, so all stop together,
  // before a non-finite update reaches the weights (or a checkpoint).
  if (!std::isfinite(stats.loss) || !std::isfinite(stats.grad_norm)) {
    const std::optional<std::string> last = LatestCheckpoint(c.output_dir);
    return absl::InternalError(absl::StrFormat(
        "step %d: the loss is %g and the gradient norm %g (expected finite values); stopped "
        "before the update, the last checkpoint is %s (lower optimizer.lr or set "
        "optimizer.grad_clip, then --resume)",
        run.step + 1, stats.loss, stats.grad_norm, last ? *last : std::string("none")));
  }
  heartbeat.Progress(run.step + 1, "optimizer step");
  run.optimizer->Step(stats.lr);
  run.optimizer->ZeroGrad();
  if (run.fsdp) run.fsdp->Reshard();  // the next forward gathers the updated pieces
  ++run.step;
  run.result.losses.emplace_back(run.step, stats.loss);
  run.result.grad_norms.push_back(stats.grad_norm);
  return stats;
}

// This process's peak resident memory (VmHWM), in MiB; 0 if unknown.
double PeakRssMb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return 0;
}

// The progress line and metrics.jsonl cover a window of steps.
struct Window {
  Clock::time_point run_start = Clock::now();
  Clock::time_point start = run_start;
  double comm_start = ProcessGroup::CollectiveSeconds();
  int64_t steps = 0;
  int64_t first_step = 0;  // steps done before this attempt
};

// 10. A progress line per logging step (rank 0) and its metrics.jsonl record.
void LogStep(Run& run, const StepStats& stats, Window& window) {
  const TrainConfig& c = run.c;
  ++window.steps;
  if (run.step % c.log_every != 0 && run.step != c.steps && run.step != window.first_step + 1 &&
      !stats.eval) {
    return;
  }
  const std::string eval_text =
      stats.eval
          ? absl::StrFormat(" | eval loss %.4f ppl %.2f", stats.eval->loss, stats.eval->perplexity)
          : std::string();
  const std::string eval_json =
      stats.eval ? absl::StrFormat(", \"eval_loss\": %.6f, \"eval_ppl\": %.4f, \"eval_tokens\": %d",
                                   stats.eval->loss, stats.eval->perplexity, stats.eval->tokens)
                 : std::string();
  const double elapsed = Seconds(window.run_start);
  const double window_s = std::max(1e-9, Seconds(window.start));
  const double rate = static_cast<double>(c.global_batch * c.seq_len) * window.steps / window_s;
  // The share of the window this rank spent inside collectives.
  const double comm = (ProcessGroup::CollectiveSeconds() - window.comm_start) / window_s;
  const double eta = elapsed / static_cast<double>(run.step - window.first_step) *
                     static_cast<double>(c.steps - run.step);
  if (run.lead) {
    run.log << absl::StrFormat(
                   "[train] step %*d/%d | loss %.4f%s | lr %.3e | grad_norm %.3f | %s tok/s%s | "
                   "elapsed %s | eta %s",
                   static_cast<int>(std::to_string(c.steps).size()), run.step, c.steps, stats.loss,
                   eval_text, stats.lr, stats.grad_norm, Rate(rate),
                   run.runtime->world_size() > 1 ? absl::StrFormat(" (comm %.0f%%)", 100 * comm)
                                                 : std::string(),
                   Duration(elapsed), Duration(eta))
            << "\n";
    run.log.flush();
    run.metrics << absl::StrFormat(
                       "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, "
                       "\"tokens_per_s\": %.1f, \"comm_share\": %.4f, \"elapsed_s\": %.3f, "
                       "\"peak_rss_mb\": %.1f%s}",
                       run.step, stats.loss, stats.lr, stats.grad_norm, rate, comm, elapsed,
                       PeakRssMb(), eval_json)
                << "\n";
    run.metrics.flush();
  }
  window.start = Clock::now();
  window.comm_start = ProcessGroup::CollectiveSeconds();
  window.steps = 0;
}

// The whole run's loss curve, earlier attempts included (metrics.jsonl).
std::vector<std::pair<int64_t, double>> LossCurve(const Run& run) {
  std::map<int64_t, double> curve;
  for (const auto& [at_step, record] : MetricsByStep(run.metrics_path)) {
    if (at_step <= run.step && record.loss) curve[at_step] = *record.loss;
  }
  for (const auto& [at_step, at_loss] : run.result.losses) curve[at_step] = at_loss;
  return {curve.begin(), curve.end()};
}

// The validation losses of the whole run, earlier attempts included.
std::vector<std::pair<int64_t, double>> EvalCurve(const Run& run) {
  std::map<int64_t, double> curve;
  for (const auto& [at_step, record] : MetricsByStep(run.metrics_path)) {
    if (at_step <= run.step && record.eval_loss) curve[at_step] = *record.eval_loss;
  }
  for (const auto& [at_step, at_loss] : run.result.eval_losses) curve[at_step] = at_loss;
  return {curve.begin(), curve.end()};
}

// The validation loss now, over the eval set (every rank takes part).
EvalResult RunEval(Run& run) {
  const ParallelDims& dims = *run.dims;
  EvalOptions options;
  options.batches = run.c.eval_batches;
  options.micro_batch = dims.micro_batch();
  if (dims.dp_shard_enabled()) options.data_groups.push_back(&(*run.mesh)["dp_shard"]);
  if (dims.dp_enabled()) options.data_groups.push_back(&(*run.mesh)["dp"]);
  options.device = run.runtime->device();
  Heartbeat::Get().Progress(run.step, "evaluation");
  // Through the pipeline stages when there are several (every pp rank gets
  // the last stage's loss, so all take part and report the same figure).
  EvalResult result =
      Evaluate(run.pipelined ? *run.pipelined : *run.model, *run.eval_loader, options);
  if (run.fsdp) run.fsdp->Reshard();
  run.result.eval_losses.emplace_back(run.step, result.loss);
  return result;
}

// The export's config.json: the model's, with the dtype the export holds
// (a bf16 run writes BF16 tensors; its config.json said float32).
absl::StatusOr<std::string> ExportedConfig(const std::string& config_json, at::ScalarType dtype) {
  ASSIGN_OR_RETURN(JsonValue config, ParseJson(config_json));
  if (!config.is_object()) return config_json;
  JsonValue name;
  name.type = JsonValue::Type::kString;
  name.text = TorchDtypeName(dtype);
  bool set = false;
  for (auto& [key, value] : config.members) {
    if (key == "torch_dtype" || key == "dtype") value = name, set = true;
  }
  if (!set) config.members.emplace_back("torch_dtype", name);
  return DumpJson(config) + "\n";
}

// What transformers needs besides the weights, copied from the checkpoint
// being fine-tuned: the tokenizer, its chat template, generation defaults.
constexpr const char* kCompanionFiles[] = {
    "tokenizer.json",     "tokenizer_config.json",
    "tokenizer.model",    "special_tokens_map.json",
    "added_tokens.json",  "vocab.json",
    "merges.txt",         "chat_template.jinja",
    "chat_template.json", "generation_config.json",
};

absl::Status CopyCompanionFiles(const std::string& from, const std::string& to) {
  for (const char* name : kCompanionFiles) {
    const std::string source = from + "/" + name;
    if (!fs::is_regular_file(source)) continue;
    std::error_code ec;
    fs::copy_file(source, to + "/" + name, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot copy ", source, " into ", to, ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// loss.svg from metrics.jsonl: refreshed at every checkpoint and at the end.
absl::Status WriteCurve(Run& run) {
  run.metrics.flush();
  return WriteLossCurveSvg(
      run.c.output_dir + "/loss.svg", LossCurve(run),
      absl::StrFormat("%s, dp %d x tp %d, %d steps", run.model->config.architecture, run.dims->dp(),
                      run.dims->tp(), run.c.steps),
      EvalCurve(run));
}

// A parameter's tp-local value: the module's tensor, or with dp_shard its
// pieces gathered (a collective over dp_shard: every rank calls it alike);
// a meta tensor for another pipeline stage's.
at::Tensor HeldValue(const Run& run, const std::string& name, const at::Tensor& t) {
  if (!run.fsdp) return t.detach();
  const auto& params = run.fsdp->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].name == name) return run.fsdp->Gather(i, params[i].piece);
  }
  return t.detach();  // not this rank's
}

// The export of `model`'s parameters that `take` selects (each once, in
// named_parameters order, the tied head left out), each rank's tp-local
// value given by `local`, into a Hugging Face directory.
absl::Status ExportSelected(
    Run& run, const std::string& dir, const std::function<bool(const std::string&)>& take,
    const std::function<at::Tensor(const std::string&, const at::Tensor&)>& local) {
  CausalLM& model = *run.model;
  std::vector<std::pair<std::string, at::Tensor>> exported;
  PipelineExport pipeline;
  pipeline.group = run.pp_group();
  pipeline.tensors.resize(run.dims->pp());
  std::set<std::string> listed;
  for (const auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    if (run.tied_head(name) || !take(name) || !listed.insert(name).second) continue;
    const int rank = run.dims->pp_enabled() ? run.pipeline->RankOf(run.stages.StageOf(name)) : 0;
    const DTensorSpec* spec = ParameterPlacement(model, name);
    at::Tensor value = HeldValue(run, name, item.value());  // dp_shard: gathered (collective)
    pipeline.tensors[rank].emplace_back(name,
                                        spec != nullptr ? spec->global_shape : value.sizes().vec());
    if (value.is_meta()) continue;  // another stage's
    exported.emplace_back(name, local(name, value));
  }
  // The placements of every tp rank: the adapters' are the ranks' own, so
  // they are gathered here (the plan's list has the base weights only).
  std::vector<Placements> placements = run.all_placements;
  if (run.dims->tp_enabled()) {
    std::vector<std::string> names;
    for (const auto& [name, t] : exported) names.push_back(name);
    for (const std::string& name : names) {
      const DTensorSpec* spec = ParameterPlacement(model, name);
      if (spec == nullptr || !IsLoraParameter(name)) continue;
      // Each rank's spec differs only in its ranges: rebuild them for rank r.
      for (int r = 0; r < run.dims->tp(); ++r) {
        DTensorSpec theirs = *spec;
        const std::string base = name.substr(0, name.rfind(".lora_")) + ".weight";
        auto it = placements[r].find(base);
        if (it != placements[r].end()) {
          const DTensorSpec& b = it->second;
          if (!theirs.ranges.empty() && !theirs.ranges[0].empty()) theirs.ranges[0] = b.ranges[0];
          if (theirs.ranges.size() > 1 && !theirs.ranges[1].empty()) theirs.ranges[1] = b.ranges[1];
          for (size_t d = 0; d < theirs.local_shape.size(); ++d) {
            if (d < theirs.ranges.size() && !theirs.ranges[d].empty()) {
              int64_t n = 0;
              for (const Range& x : theirs.ranges[d]) n += x.end - x.start;
              theirs.local_shape[d] = n;
            }
          }
        }
        placements[r][name] = theirs;
      }
    }
  }
  const at::ScalarType dtype = exported.empty() ? at::kFloat : exported[0].second.scalar_type();
  ASSIGN_OR_RETURN(std::string config_json, ExportedConfig(run.config_json, dtype));
  return ExportHuggingFace(dir, config_json, exported, placements, *run.mesh, run.runtime->rank(),
                           &pipeline, nullptr, model.checkpoint_layouts);
}

// LoRA's exports: the adapter in PEFT's format (<output_dir>/adapter), and
// with checkpoint.merge_lora the merged model (<output_dir>/hf): each
// adapted weight W + scale * B A, computed on each rank's slices (B's rows
// of a column-parallel W, A's columns of a row-parallel one).
absl::Status ExportLora(Run& run) {
  const TrainConfig& c = run.c;
  Heartbeat::Get().Progress(run.step, "exporting the LoRA adapter");
  const std::string adapter = c.output_dir + "/adapter";
  const std::string gathered = adapter + "/.gathered";
  auto same = [](const std::string&, const at::Tensor& t) { return t.detach(); };
  RETURN_IF_ERROR(ExportSelected(run, gathered, IsLoraParameter, same));
  if (run.lead) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(gathered + "/model.safetensors"));
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const TensorEntry& e : file->tensors()) tensors.emplace_back(e.name, file->Get(e).clone());
    const std::string base = c.model_pretrained.empty() ? c.model_config : c.model_pretrained;
    RETURN_IF_ERROR(WritePeftAdapter(adapter, run.lora_options, base, *run.lora, tensors));
    std::error_code ec;
    fs::remove_all(gathered, ec);
    run.log << "[train] exported the LoRA adapter (PEFT's format) to " << adapter << "\n";
  }
  run.runtime->world().Barrier();
  if (!c.merge_lora) return absl::OkStatus();
  Heartbeat::Get().Progress(run.step, "exporting the merged model");
  std::map<std::string, Linear*> adapted;  // base weight -> its module
  for (const auto& [name, module] : NamedWeftModules(*run.model)) {
    auto* linear = dynamic_cast<Linear*>(module);
    if (linear != nullptr && linear->lora_A) adapted[name + ".weight"] = linear;
  }
  auto merged = [&run, &adapted](const std::string& name, const at::Tensor& t) {
    at::NoGradGuard no_grad;
    auto it = adapted.find(name);
    if (it == adapted.end()) return t.detach();
    const Linear& l = *it->second;
    const std::string module = name.substr(0, name.size() - std::string(".weight").size());
    const at::Tensor a = HeldValue(run, module + ".lora_A.weight", l.lora_A->weight);
    const at::Tensor b = HeldValue(run, module + ".lora_B.weight", l.lora_B->weight);
    at::Tensor delta = at::matmul(b.to(at::kFloat), a.to(at::kFloat));
    return (t.to(at::kFloat) + delta * l.lora_scale).to(t.scalar_type());
  };
  run.result.export_dir = c.output_dir + "/hf";
  RETURN_IF_ERROR(ExportSelected(
      run, run.result.export_dir, [](const std::string& n) { return !IsLoraParameter(n); },
      merged));
  if (run.lead && !c.model_pretrained.empty()) {
    RETURN_IF_ERROR(CopyCompanionFiles(c.model_pretrained, run.result.export_dir));
  }
  run.runtime->world().Barrier();
  if (run.lead) {
    run.log << "[train] exported the merged model (base + adapter) to " << run.result.export_dir
            << "\n";
  }
  return absl::OkStatus();
}

// 11. After the last step: the final checkpoint, the Hugging Face export,
// the loss curve and a sample.
absl::Status Finish(Run& run, int64_t first_step) {
  const TrainConfig& c = run.c;
  CausalLM& model = *run.model;
  if (run.pp_trace.is_open()) {
    run.pp_trace << absl::StrFormat("{\"pp_rank\": %d, \"peak_rss_mb\": %.1f}\n", run.pp_rank,
                                    PeakRssMb());
    run.pp_trace.close();
  }
  if (run.step > first_step) RETURN_IF_ERROR(Save(run, run.step));
  if (c.checkpoint_export && run.lora) {
    RETURN_IF_ERROR(ExportLora(run));
  } else if (c.checkpoint_export) {
    Heartbeat::Get().Progress(run.step, "exporting the Hugging Face checkpoint");
    run.result.export_dir = c.output_dir + "/hf";
    std::vector<std::pair<std::string, at::Tensor>> exported;
    std::vector<size_t> named_index;  // exported[k] is run.named[named_index[k]]
    for (size_t i = 0; i < run.named.size(); ++i) {
      const auto& [name, t] = run.named[i];
      if (name == "lm_head.weight" && model.config.tie_word_embeddings) continue;
      exported.emplace_back(name, t);
      named_index.push_back(i);
    }
    std::function<at::Tensor(size_t)> whole_local;
    if (run.fsdp) {
      whole_local = [&run, &named_index, &exported](size_t k) {
        return run.fsdp->Gather(run.fsdp_index[named_index[k]], exported[k].second);
      };
    }
    const at::ScalarType dtype = run.params.empty() ? at::kFloat : run.params[0].scalar_type();
    ASSIGN_OR_RETURN(std::string config_json, ExportedConfig(run.config_json, dtype));
    // With pipeline stages every pp rank sends its stages' tensors to the
    // first; each list is in named_parameters order, as `exported` is.
    // (Without stages: one list, rank 0's; it gives the export's shapes.)
    PipelineExport pipeline;
    {
      pipeline.group = run.pp_group();
      pipeline.tensors.resize(run.dims->pp());
      std::set<std::string> listed;
      for (const auto& item : model.named_parameters()) {
        if (run.tied_head(item.key()) || !listed.insert(item.key()).second) continue;
        const int rank =
            run.dims->pp_enabled() ? run.pipeline->RankOf(run.stages.StageOf(item.key())) : 0;
        const DTensorSpec* spec = ParameterPlacement(model, item.key());
        pipeline.tensors[rank].emplace_back(
            item.key(), spec != nullptr ? spec->global_shape : item.value().sizes().vec());
      }
    }
    RETURN_IF_ERROR(ExportHuggingFace(run.result.export_dir, config_json, exported,
                                      run.all_placements, *run.mesh, run.runtime->rank(), &pipeline,
                                      whole_local, model.checkpoint_layouts));
    if (run.lead && !c.model_pretrained.empty()) {
      RETURN_IF_ERROR(CopyCompanionFiles(c.model_pretrained, run.result.export_dir));
    }
    run.runtime->world().Barrier();
    if (run.lead) {
      run.log << "[train] exported a Hugging Face checkpoint to " << run.result.export_dir << "\n";
    }
  }
  if (run.lead) {
    RETURN_IF_ERROR(WriteCurve(run));
    run.metrics.close();
    run.log << "[train] metrics " << run.metrics_path << ", loss curve " << c.output_dir
            << "/loss.svg\n";
  }
  if (run.sampling()) {
    model.eval();
    run.result.sample_after = Sample(run.pipelined ? *run.pipelined : model, c.sample_prompt,
                                     c.sample_max_new_tokens, run.runtime->device());
    if (run.fsdp) run.fsdp->Reshard();
    if (run.lead) {
      run.log << "[train] sample after training:\n" << run.result.sample_after << "\n---\n";
    }
  }
  run.log.flush();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TrainResult> Train(const TrainConfig& c, std::ostream& log) {
  Run run(c, log);
  RETURN_IF_ERROR(JoinJob(run));
  RETURN_IF_ERROR(LockOutputDir(run));
  RETURN_IF_ERROR(CheckOutputDir(run));
  RETURN_IF_ERROR(OpenData(run));
  RETURN_IF_ERROR(BuildModel(run));
  RETURN_IF_ERROR(SetUpOptimizer(run));
  RETURN_IF_ERROR(Resume(run));
  RETURN_IF_ERROR(Start(run));
  Window window;
  window.first_step = run.step;
  while (run.step < c.steps) {
    ASSIGN_OR_RETURN(StepStats stats, RunStep(run));
    if (run.eval_loader &&
        ((c.eval_every > 0 && run.step % c.eval_every == 0) || run.step == c.steps)) {
      const Clock::time_point eval_start = Clock::now();
      stats.eval = RunEval(run);
      window.start += Clock::now() - eval_start;  // tokens/s counts training only
    }
    LogStep(run, stats, window);
    if (c.checkpoint_every > 0 && run.step % c.checkpoint_every == 0 && run.step < c.steps) {
      RETURN_IF_ERROR(Save(run, run.step));
      if (run.lead) RETURN_IF_ERROR(WriteCurve(run));
    }
  }
  RETURN_IF_ERROR(Finish(run, window.first_step));
  return run.result;
}

}  // namespace weft

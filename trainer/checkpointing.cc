#include "trainer/checkpointing.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/atomic_file.h"
#include "base/json.h"
#include "base/status.h"
#include "base/syscall.h"
#include "base/text_file.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/safetensors.h"
#include "models/init.h"
#include "parallel/device_mesh.h"

namespace weft {
namespace fs = std::filesystem;
namespace {

std::string ShardFile(const char* kind, int tp_rank, int tp, int pp_rank = 0, int pp = 1,
                      int shard_rank = 0, int shards = 1) {
  std::string name =
      pp > 1 ? absl::StrFormat("%s-pp%05d-of-%05d-tp%05d-of-%05d", kind, pp_rank, pp, tp_rank, tp)
             : absl::StrFormat("%s-tp%05d-of-%05d", kind, tp_rank, tp);
  if (shards > 1) absl::StrAppendFormat(&name, "-shard%05d-of-%05d", shard_rank, shards);
  return name + ".safetensors";
}

bool HasAxis(const DeviceMesh& mesh, const std::string& name) {
  for (const MeshAxis& axis : mesh.axes()) {
    if (axis.name == name) return true;
  }
  return false;
}

// A barrier over the whole mesh: one per axis, in turn.
void MeshBarrier(const DeviceMesh& mesh) {
  for (const MeshAxis& axis : mesh.axes()) mesh[axis.name].Barrier();
}

absl::Status FsyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.ok()) return WEFT_SYSCALL_ERROR("open", dir);
  if (::fsync(fd.get()) != 0) return WEFT_SYSCALL_ERROR("fsync", dir);
  return absl::OkStatus();
}

// FNV-1a (64 bit) of a tensor's bytes, as 16 hex digits: weft's training
// checkpoints carry one per tensor (`weft_checksums`) and resume verifies
// them, so a flipped byte is an error instead of different losses.
std::string Checksum(const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
  const size_t n = t.numel() * t.element_size();
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return absl::StrFormat("%016x", h);
}

std::string ChecksumsJson(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<std::string> items;
  for (const auto& [name, tensor] : tensors) {
    items.push_back(absl::StrCat(JsonQuote(name), ":", JsonQuote(Checksum(tensor))));
  }
  return absl::StrCat("{", absl::StrJoin(items, ","), "}");
}

// Drops the pages of `e` (and of its neighbours on its first and last page)
// from the process: this code never writes the private mapping, so a page
// touched again is read back from the page cache.
void DropPages(const SafetensorsFile& file, const TensorEntry& e) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t begin = (file.header().data_offset + e.begin) / page * page;
  const size_t end = (file.header().data_offset + e.end + page - 1) / page * page;
  file.mapping()->Release(begin, end - begin);
}

// Every tensor of `file` against its `weft_checksums` entry (files written
// before checksums existed have none and pass).
absl::Status VerifyChecksums(const SafetensorsFile& file) {
  std::string json;
  for (const auto& [key, value] : file.header().metadata) {
    if (key == "weft_checksums") json = value;
  }
  if (json.empty()) return absl::OkStatus();
  auto parsed = ParseJson(json);
  if (!parsed.ok() || !parsed->is_object()) {
    return absl::DataLossError(absl::StrCat(file.path(), ": weft_checksums is not a JSON object"));
  }
  for (const TensorEntry& e : file.tensors()) {
    const JsonValue* want = parsed->Find(e.name);
    if (want == nullptr) {
      return absl::DataLossError(
          absl::StrCat(file.path(), ": tensor '", e.name, "' has no weft_checksums entry"));
    }
    const std::string got = Checksum(file.Get(e));
    DropPages(file, e);  // one tensor's pages at a time (a shard file can be large)
    if (got != want->text) {
      return absl::DataLossError(absl::StrCat(
          file.path(), ": tensor '", e.name, "' has checksum ", got, " but was saved with ",
          want->text, " (the file changed or is corrupt; resume from another checkpoint)"));
    }
  }
  return absl::OkStatus();
}

std::string ShardsJson(const std::vector<std::pair<std::string, at::Tensor>>& params,
                       const Placements* shards,
                       const std::map<std::string, TensorSlice>* slices = nullptr) {
  std::vector<std::string> items;
  for (const auto& [name, tensor] : params) {
    std::vector<int64_t> global = tensor.sizes().vec();
    Slice slice;
    if (slices != nullptr) {
      auto it = slices->find(name);
      if (it != slices->end()) {
        global = it->second.global_shape;
        slice = it->second.slice;
      }
    } else if (shards != nullptr) {
      auto it = shards->find(name);
      if (it != shards->end()) {
        global = it->second.global_shape;
        slice = it->second.ranges;
      }
    }
    std::vector<std::string> dims;
    for (size_t d = 0; d < global.size(); ++d) {
      std::vector<std::string> ranges;
      if (d < slice.size()) {
        for (const Range& r : slice[d])
          ranges.push_back(absl::StrCat("[", r.start, ",", r.end, "]"));
      }
      if (ranges.empty()) ranges.push_back(absl::StrCat("[0,", global[d], "]"));
      dims.push_back(absl::StrCat("[", absl::StrJoin(ranges, ","), "]"));
    }
    items.push_back(absl::StrCat("\"", name, "\":{\"global_shape\":[", absl::StrJoin(global, ","),
                                 "],\"slice\":[", absl::StrJoin(dims, ","), "]}"));
  }
  return absl::StrCat("{", absl::StrJoin(items, ","), "}");
}

// Fault injection for the crash tests: WEFT_TEST_KILL_DURING_SAVE=<step>
// kills this process (SIGKILL) after its shard files of that step are
// written, in the first attempt only (a restarted one runs through).
void MaybeDieDuringSave(int64_t step) {
  const char* attempt = std::getenv("TORCHELASTIC_RESTART_COUNT");
  if (attempt != nullptr && std::string(attempt) != "0") return;
  const char* at = std::getenv("WEFT_TEST_KILL_DURING_SAVE");
  int64_t kill_step = 0;
  if (at != nullptr && absl::SimpleAtoi(at, &kill_step) && kill_step == step) ::raise(SIGKILL);
}

absl::StatusOr<int64_t> Int(const JsonValue& root, const char* key, const std::string& source) {
  const JsonValue* v = root.Find(key);
  int64_t out = 0;
  if (v == nullptr || !v->is_number() || !absl::SimpleAtoi(v->text, &out)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", key, " is missing or not an integer"));
  }
  return out;
}

}  // namespace

std::string TrainerState::ToJson() const {
  return absl::StrCat("{\n  \"step\": ", step, ",\n  \"data\": ", data.ToJson(),
                      ",\n  \"tp\": ", tp, ",\n  \"dp\": ", dp, ",\n  \"pp\": ", pp,
                      ",\n  \"dp_shard\": ", dp_shard, ",\n  \"seed\": ", seed,
                      ",\n  \"rng_state\": \"", rng_state_hex, "\"\n}\n");
}

absl::StatusOr<TrainerState> TrainerState::FromJson(absl::string_view json,
                                                    const std::string& source) {
  auto parsed = ParseJson(json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", parsed.status().message()));
  }
  TrainerState s;
  ASSIGN_OR_RETURN(s.step, Int(*parsed, "step", source));
  ASSIGN_OR_RETURN(int64_t tp, Int(*parsed, "tp", source));
  ASSIGN_OR_RETURN(int64_t dp, Int(*parsed, "dp", source));
  ASSIGN_OR_RETURN(s.seed, Int(*parsed, "seed", source));
  s.tp = static_cast<int>(tp);
  s.dp = static_cast<int>(dp);
  if (parsed->Find("dp_shard") != nullptr) {
    ASSIGN_OR_RETURN(int64_t dp_shard, Int(*parsed, "dp_shard", source));
    s.dp_shard = static_cast<int>(dp_shard);
  }
  if (parsed->Find("pp") != nullptr) {  // absent in checkpoints from before pipelining
    ASSIGN_OR_RETURN(int64_t pp, Int(*parsed, "pp", source));
    s.pp = static_cast<int>(pp);
  }
  const JsonValue* data = parsed->Find("data");
  if (data == nullptr || !data->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": data is missing"));
  }
  ASSIGN_OR_RETURN(int64_t epoch, Int(*data, "epoch", source));
  ASSIGN_OR_RETURN(int64_t offset, Int(*data, "offset", source));
  s.data.epoch = epoch;
  s.data.offset = offset;
  if (const JsonValue* rng = parsed->Find("rng_state"); rng != nullptr && rng->is_string()) {
    s.rng_state_hex = rng->text;
  }
  return s;
}

std::string CheckpointDir(const std::string& output_dir, int64_t step) {
  return absl::StrFormat("%s/checkpoints/step_%08d", output_dir, step);
}

namespace {
// Complete checkpoints (step_NNNNNNNN with a trainer_state.json), oldest first.
std::vector<std::pair<int64_t, std::string>> CompleteCheckpoints(const std::string& output_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  const fs::path root = fs::path(output_dir) / "checkpoints";
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    int64_t step = 0;
    if (name.size() == 13 && name.rfind("step_", 0) == 0 &&
        absl::SimpleAtoi(name.substr(5), &step) &&
        fs::exists(entry.path() / "trainer_state.json", ec)) {
      out.emplace_back(step, entry.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

absl::Status CheckCheckpointDirs(const std::string& output_dir) {
  std::error_code ec;
  const fs::path root = fs::path(output_dir) / "checkpoints";
  if (!fs::is_directory(root, ec)) return absl::OkStatus();
  std::vector<std::pair<int64_t, fs::path>> dirs;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    int64_t step = 0;
    if (name.size() == 13 && name.rfind("step_", 0) == 0 &&
        absl::SimpleAtoi(name.substr(5), &step)) {
      dirs.emplace_back(step, entry.path());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  for (const auto& [step, dir] : dirs) {
    const std::string state_path = (dir / "trainer_state.json").string();
    int open_errno = 0;
    absl::StatusOr<std::string> json = ReadTextFile(state_path, &open_errno);
    if (!json.ok() && open_errno == ENOENT) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir.string(),
                       " has no trainer_state.json: it is not a complete weft checkpoint "
                       "(expected one in every step_N directory; move the directory out of ",
                       root.string(), " to resume from an earlier one)"));
    }
    RETURN_IF_ERROR(json.status());
    ASSIGN_OR_RETURN(TrainerState state, TrainerState::FromJson(*json, state_path));
    if (state.step != step) {
      return absl::FailedPreconditionError(
          absl::StrCat(state_path, " says step ", state.step, ", but its directory is step ", step,
                       " (expected the same step; rename or remove the directory)"));
    }
  }
  return absl::OkStatus();
}

std::optional<std::string> LatestCheckpoint(const std::string& output_dir) {
  auto all = CompleteCheckpoints(output_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

absl::Status SaveCheckpoint(const SaveRequest& r, const DeviceMesh& mesh, int world_rank) {
  const std::string final_dir = CheckpointDir(r.output_dir, r.state.step);
  const std::string tmp = final_dir + ".tmp";
  ProcessGroup& tp_group = mesh["tp"];
  const bool pipelined = HasAxis(mesh, "pp");
  const int pp = pipelined ? mesh.size("pp") : 1, pp_rank = pipelined ? mesh.coordinate("pp") : 0;
  // Rank 0 prepares the temporary directory; everyone waits for it.
  auto world_barrier = [&] { MeshBarrier(mesh); };
  absl::Status prepared = absl::OkStatus();
  if (world_rank == 0) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    if (ec) prepared = absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", ec.message()));
  }
  world_barrier();
  RETURN_IF_ERROR(prepared);
  // One replica's ranks write: dp index 0 (every dp_shard rank its pieces).
  const bool sharded = HasAxis(mesh, "dp_shard");
  const int shards = sharded ? mesh.size("dp_shard") : 1;
  const int shard_rank = sharded ? mesh.coordinate("dp_shard") : 0;
  const bool writer = mesh.coordinate("dp") == 0;
  if (writer) {
    const int tp = tp_group.size(), rank = tp_group.rank();
    RETURN_IF_ERROR(WriteSafetensors(
        tmp + "/" + ShardFile("model", rank, tp, pp_rank, pp, shard_rank, shards), r.params,
        {{"format", "pt"},
         {"weft_shards", ShardsJson(r.params, r.shards, r.slices)},
         {"weft_checksums", ChecksumsJson(r.params)},
         {"tp_rank", std::to_string(rank)},
         {"tp", std::to_string(tp)},
         {"pp_rank", std::to_string(pp_rank)},
         {"pp", std::to_string(pp)}}));
    RETURN_IF_ERROR(WriteSafetensors(
        tmp + "/" + ShardFile("optimizer", rank, tp, pp_rank, pp, shard_rank, shards), r.optimizer,
        {{"format", "pt"},
         {"weft_checksums", ChecksumsJson(r.optimizer)},
         {"step", std::to_string(r.state.step)}}));
  }
  MaybeDieDuringSave(r.state.step);
  world_barrier();
  if (world_rank == 0) {
    RETURN_IF_ERROR(WriteTextFileAtomically(tmp + "/config.yaml", r.config_yaml));
    RETURN_IF_ERROR(WriteTextFileAtomically(tmp + "/trainer_state.json", r.state.ToJson()));
    RETURN_IF_ERROR(FsyncDir(tmp));
    std::error_code ec;
    fs::remove_all(final_dir, ec);
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      return absl::InternalError(
          absl::StrCat("rename ", tmp, " -> ", final_dir, ": ", std::strerror(errno)));
    }
    RETURN_IF_ERROR(FsyncDir(fs::path(final_dir).parent_path().string()));
    auto all = CompleteCheckpoints(r.output_dir);
    for (size_t i = 0; i + r.keep < all.size(); ++i) fs::remove_all(all[i].second, ec);
  }
  world_barrier();
  return absl::OkStatus();
}

namespace {

// Copies `part` into `whole` at `slice` (per dim the ranges, concatenated).
// Dims whose ranges cover them whole are skipped; at most one dim may be cut.
absl::Status PlaceShard(at::Tensor& whole, const at::Tensor& part, const Slice& slice,
                        const std::string& name) {
  int cut = -1;
  for (size_t d = 0; d < slice.size(); ++d) {
    const bool full = slice[d].empty() || (slice[d].size() == 1 && slice[d][0].start == 0 &&
                                           slice[d][0].end == whole.size(d));
    if (full) continue;
    if (cut >= 0) {
      return absl::UnimplementedError(
          absl::StrCat("parameter '", name, "' is sliced on more than one dim"));
    }
    cut = static_cast<int>(d);
  }
  if (cut < 0) {
    whole.copy_(part);
    return absl::OkStatus();
  }
  std::vector<int64_t> index;
  for (const Range& range : slice[cut])
    for (int64_t i = range.start; i < range.end; ++i) index.push_back(i);
  whole.index_copy_(cut, at::tensor(index, at::kLong), part);
  return absl::OkStatus();
}

struct SavedShard {
  std::vector<int64_t> global_shape;
  Slice slice;
};

// The `weft_shards` metadata of a model file: per tensor its global shape
// and the slice the file holds.
absl::StatusOr<std::map<std::string, SavedShard>> ParseShards(const SafetensorsFile& file) {
  std::string json;
  for (const auto& [key, value] : file.header().metadata) {
    if (key == "weft_shards") json = value;
  }
  auto parsed = ParseJson(json);
  if (!parsed.ok() || !parsed->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(),
                     ": no valid weft_shards metadata (a weft training checkpoint "
                     "records each tensor's global shape and slice there)"));
  }
  std::map<std::string, SavedShard> out;
  auto integer = [](const JsonValue& v) {
    int64_t x = -1;
    if (!v.is_number() || !absl::SimpleAtoi(v.text, &x)) x = -1;
    return x;
  };
  for (const auto& [name, spec] : parsed->members) {
    SavedShard shard;
    const JsonValue* shape = spec.Find("global_shape");
    const JsonValue* slice = spec.Find("slice");
    if (shape == nullptr || slice == nullptr || !shape->is_array() || !slice->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.path(), ": weft_shards entry '", name, "' is malformed"));
    }
    for (const JsonValue& d : shape->items) shard.global_shape.push_back(integer(d));
    for (const JsonValue& dim : slice->items) {
      std::vector<Range> ranges;
      for (const JsonValue& r : dim.items) {
        if (r.items.size() != 2) {
          return absl::InvalidArgumentError(
              absl::StrCat(file.path(), ": weft_shards entry '", name, "' has a bad range"));
        }
        ranges.push_back({integer(r.items[0]), integer(r.items[1])});
      }
      shard.slice.push_back(ranges);
    }
    out[name] = std::move(shard);
  }
  return out;
}

// True when the rank holds part of the tensor (Shard), not all of it.
bool IsSharded(const DTensorSpec& spec) {
  return !spec.placements.empty() && spec.placements[0].kind == Placement::Kind::kShard;
}

// The optimizer tensor `exp_avg.<name>` is sliced as parameter `<name>`.
std::string ParameterOf(const std::string& key) { return key.substr(key.find('.') + 1); }

}  // namespace

absl::StatusOr<LoadedCheckpoint> LoadCheckpointDir(
    const std::string& dir, int tp, int tp_rank, const Placements* shards,
    const std::function<bool(const std::string& name)>& wanted) {
  LoadLayout layout;
  layout.tp = tp;
  layout.tp_rank = tp_rank;
  layout.wanted = wanted;
  if (shards != nullptr) {
    for (const auto& [name, spec] : *shards)
      layout.targets[name] = {spec.global_shape, spec.ranges};
  }
  return LoadCheckpointSlices(dir, layout);
}

namespace {

// One tensor of an export file: a parameter (expert -1), one expert's part of
// a fused one (rows [row, row + shape[0]) of expert `expert`), or a 2-D
// parameter's part (expert -2: its rows [row, row + shape[0])).
struct Written {
  std::string name;
  std::vector<int64_t> shape;
  int64_t expert = -1, row = 0;
};

std::vector<Written> AsWritten(const std::string& name, const std::vector<int64_t>& shape,
                               const std::vector<StackedExperts>& layouts) {
  std::string prefix;
  const StackedExperts* layout = LayoutFor(layouts, name, &prefix);
  if (layout == nullptr) return {{name, shape}};
  const int64_t parts = static_cast<int64_t>(layout->parts.size());
  const bool per_expert = layout->parts[0].find("{e}") != std::string::npos;
  // [E, rows, C] per expert, or [rows, C] concatenated or renamed; dim
  // "rows" split equally among the parts.
  if (shape.size() != (per_expert ? 3u : 2u) || shape[per_expert ? 1 : 0] % parts != 0) {
    return {{name, shape}};
  }
  const int64_t rows = shape[per_expert ? 1 : 0] / parts, columns = shape.back();
  std::vector<Written> out;
  for (int64_t e = 0; e < (per_expert ? shape[0] : 1); ++e) {
    for (int64_t p = 0; p < parts; ++p) {
      std::string part = layout->parts[p];
      if (per_expert) part.replace(part.find("{e}"), 3, std::to_string(e));
      out.push_back({prefix + "." + part, {rows, columns}, per_expert ? e : -2, p * rows});
    }
  }
  return out;
}

}  // namespace

absl::Status ExportHuggingFace(const std::string& dir, const std::string& config_json,
                               const std::vector<std::pair<std::string, at::Tensor>>& params,
                               const std::vector<Placements>& all_shards, const DeviceMesh& mesh,
                               int world_rank, const PipelineExport* pipeline,
                               const std::function<at::Tensor(size_t)>& whole_local,
                               const std::vector<StackedExperts>& layouts) {
  if (mesh.coordinate("dp") != 0) return absl::OkStatus();
  const bool shard_lead = !HasAxis(mesh, "dp_shard") || mesh.coordinate("dp_shard") == 0;
  ProcessGroup& tp = mesh["tp"];
  const bool stage_lead = tp.rank() == 0;  // holds whole tensors after the tp gather
  const bool pipelined =
      pipeline != nullptr && pipeline->group != nullptr && pipeline->group->size() > 1;
  const int my_stage = pipelined ? pipeline->group->rank() : 0;
  const at::ScalarType dtype = params.empty() ? at::kFloat : params[0].second.scalar_type();
  // Every tensor of the export in file order, and the pp rank that holds it.
  struct Item {
    std::string name;
    std::vector<int64_t> shape;
    int owner = 0;
  };
  std::vector<Item> items;
  if (pipeline != nullptr) {
    for (size_t q = 0; q < pipeline->tensors.size(); ++q) {
      for (const auto& [name, shape] : pipeline->tensors[q]) {
        items.push_back({name, shape, static_cast<int>(q)});
      }
    }
  } else {
    for (const auto& [name, t] : params) {
      std::vector<int64_t> shape = t.sizes().vec();
      if (!all_shards.empty()) {
        auto it = all_shards[tp.rank()].find(name);
        if (it != all_shards[tp.rank()].end()) shape = it->second.global_shape;
      }
      items.push_back({name, shape, 0});
    }
  }
  // Rank 0 writes one tensor at a time: no rank holds the whole model.
  std::unique_ptr<CheckpointStreamWriter> writer;
  if (world_rank == 0) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
    std::vector<TensorDecl> decls;
    for (const Item& item : items) {
      for (const Written& w : AsWritten(item.name, item.shape, layouts)) {
        decls.push_back({w.name, dtype, w.shape});
      }
    }
    ASSIGN_OR_RETURN(writer, CheckpointStreamWriter::Create(dir, std::move(decls)));
  }
  auto append = [&](const Item& item, const at::Tensor& whole) -> absl::Status {
    for (const Written& w : AsWritten(item.name, item.shape, layouts)) {
      at::Tensor part = whole;
      if (w.expert >= 0) part = whole[w.expert].narrow(0, w.row, w.shape[0]);
      if (w.expert == -2) part = whole.narrow(0, w.row, w.shape[0]);  // a 2-D part
      RETURN_IF_ERROR(writer->Append(w.name, part));
    }
    return absl::OkStatus();
  };
  size_t mine = 0;  // the next of this rank's `params`
  for (size_t j = 0; j < items.size(); ++j) {
    const Item& item = items[j];
    if (item.owner != my_stage) {
      if (world_rank == 0) {  // another stage's tensor arrives whole
        at::Tensor t = at::empty(item.shape, at::TensorOptions().dtype(dtype));
        pipeline->group->Recv(t, item.owner, static_cast<int>(j));
        RETURN_IF_ERROR(append(item, t));
      }
      continue;
    }
    const size_t i = mine++;
    if (i >= params.size() || params[i].first != item.name) {
      return absl::InternalError(absl::StrCat("export: this rank's tensor ", i, " is not '",
                                              item.name, "' (the stages' lists disagree)"));
    }
    // The tp-local tensor (dp_shard gathers its pieces: collective).
    at::Tensor local = (whole_local ? whole_local(i) : params[i].second).detach().to(at::kCPU);
    if (!shard_lead) continue;
    const DTensorSpec* spec = nullptr;
    if (!all_shards.empty()) {
      auto it = all_shards[tp.rank()].find(item.name);
      if (it != all_shards[tp.rank()].end() && IsSharded(it->second)) spec = &it->second;
    }
    at::Tensor whole = local.contiguous();
    if (spec != nullptr) {
      // Shards may be uneven (torch.chunk): rank r's elements follow rank r-1's.
      at::Tensor gathered = tp.AllGather(whole.view({-1}), 0);
      if (!stage_lead) continue;
      whole = at::zeros(spec->global_shape, local.options());
      int64_t offset = 0;
      for (int r = 0; r < tp.size(); ++r) {
        const DTensorSpec& theirs = all_shards[r].at(item.name);
        int64_t numel = 1;
        for (int64_t d : theirs.local_shape) numel *= d;
        at::Tensor part = gathered.narrow(0, offset, numel).view(theirs.local_shape);
        offset += numel;
        RETURN_IF_ERROR(PlaceShard(whole, part, theirs.ranges, item.name));
      }
    }
    if (!stage_lead) continue;
    if (world_rank == 0) {
      RETURN_IF_ERROR(append(item, whole));
    } else if (pipelined && my_stage != 0) {
      pipeline->group->Send(whole, 0, static_cast<int>(j));
    }
  }
  if (world_rank != 0) return absl::OkStatus();
  RETURN_IF_ERROR(writer->Commit());
  return WriteTextFileAtomically(dir + "/config.json", config_json);
}

}  // namespace weft

namespace weft {
namespace {

// Global indices held along each dim of `slice` over `shape`.
std::vector<std::vector<int64_t>> Indices(const std::vector<int64_t>& shape, const Slice& slice) {
  std::vector<std::vector<int64_t>> out(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) {
    if (d < slice.size() && !slice[d].empty()) {
      for (const Range& r : slice[d])
        for (int64_t i = r.start; i < r.end; ++i) out[d].push_back(i);
    } else {
      for (int64_t i = 0; i < shape[d]; ++i) out[d].push_back(i);
    }
  }
  return out;
}

// `t` restricted to `positions` along `dim` (a narrow when they are one run).
at::Tensor Select(const at::Tensor& t, int64_t dim, const std::vector<int64_t>& positions) {
  bool run = true;
  for (size_t i = 1; i < positions.size(); ++i)
    run = run && positions[i] == positions[0] + (int64_t)i;
  if (run) return t.narrow(dim, positions[0], static_cast<int64_t>(positions.size()));
  return t.index_select(dim, at::tensor(positions, at::kLong));
}

// Per dim, positions in a target (ascending): a product of index sets.
using Box = std::vector<std::vector<int64_t>>;

struct Target {
  at::Tensor tensor;
  std::vector<std::vector<int64_t>> index;  // global indices per dim
  std::vector<Box> covered;                 // the positions each saved slice wrote
  std::set<std::string> sources;            // saved slices applied (replicas save the same one)
};

// Whether the union of `boxes` covers every position of `shape` from dim
// `d` on. Saved slices may overlap in part (a packed q | k | v's replicated
// KV rows are saved by every rank sharing the head), so elements are not
// counted: positions of dim d are grouped by the boxes holding them and
// each group is checked over the remaining dims.
bool Covers(const std::vector<int64_t>& shape, size_t d, const std::vector<const Box*>& boxes) {
  if (d == shape.size()) return !boxes.empty();
  std::set<std::vector<size_t>> checked;
  for (int64_t i = 0; i < shape[d]; ++i) {
    std::vector<size_t> holding;
    for (size_t b = 0; b < boxes.size(); ++b) {
      const std::vector<int64_t>& at = (*boxes[b])[d];
      if (std::binary_search(at.begin(), at.end(), i)) holding.push_back(b);
    }
    if (holding.empty()) return false;
    if (!checked.insert(holding).second) continue;
    std::vector<const Box*> sub;
    for (size_t b : holding) sub.push_back(boxes[b]);
    if (!Covers(shape, d + 1, sub)) return false;
  }
  return true;
}

std::string SliceKey(const Slice& slice) {
  std::string key;
  for (const auto& dim : slice) {
    for (const Range& r : dim) absl::StrAppend(&key, r.start, "-", r.end, ",");
    key += ";";
  }
  return key;
}

// Copies the overlap of a saved part (global indices `saved`) into `target`.
void CopyOverlap(Target& target, const at::Tensor& part,
                 const std::vector<std::vector<int64_t>>& saved) {
  const size_t dims = target.index.size();
  std::vector<std::vector<int64_t>> from(dims), to(dims);
  for (size_t d = 0; d < dims; ++d) {
    std::map<int64_t, int64_t> where;  // global index -> position in the saved part
    for (size_t i = 0; i < saved[d].size(); ++i) where[saved[d][i]] = static_cast<int64_t>(i);
    for (size_t i = 0; i < target.index[d].size(); ++i) {
      auto it = where.find(target.index[d][i]);
      if (it == where.end()) continue;
      from[d].push_back(it->second);
      to[d].push_back(static_cast<int64_t>(i));
    }
    if (from[d].empty()) return;  // no overlap
  }
  at::Tensor block = part;
  at::Tensor view = target.tensor;
  bool runs = true;
  for (size_t d = 0; d < dims; ++d) {
    block = Select(block, static_cast<int64_t>(d), from[d]);
    for (size_t i = 1; i < to[d].size(); ++i) runs = runs && to[d][i] == to[d][0] + (int64_t)i;
  }
  target.covered.push_back(to);
  if (dims == 0) {
    target.tensor.copy_(block);
    return;
  }
  if (runs) {
    for (size_t d = 0; d < dims; ++d) {
      view = view.narrow(static_cast<int64_t>(d), to[d][0], static_cast<int64_t>(to[d].size()));
    }
    view.copy_(block);
    return;
  }
  // Scattered positions: broadcast index tensors, one per dim.
  c10::List<std::optional<at::Tensor>> index;
  for (size_t d = 0; d < dims; ++d) {
    std::vector<int64_t> shape(dims, 1);
    shape[d] = static_cast<int64_t>(to[d].size());
    index.push_back(at::tensor(to[d], at::kLong).view(shape));
  }
  target.tensor.index_put_(index, block);
}

}  // namespace

int64_t LoadedCheckpoint::bytes() const {
  int64_t total = 0;
  for (const auto* tensors : {&params, &optimizer}) {
    for (const auto& [name, t] : *tensors)
      total += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return total;
}

absl::StatusOr<LoadedCheckpoint> LoadCheckpointSlices(const std::string& dir,
                                                      const LoadLayout& layout) {
  LoadedCheckpoint out;
  ASSIGN_OR_RETURN(std::string json, ReadTextFile(dir + "/trainer_state.json"));
  ASSIGN_OR_RETURN(out.state, TrainerState::FromJson(json, dir + "/trainer_state.json"));
  const int saved_tp = out.state.tp, saved_pp = out.state.pp, saved_shards = out.state.dp_shard;
  auto take = [&](const std::string& tensor, bool is_model) {
    return !layout.wanted || layout.wanted(is_model ? tensor : ParameterOf(tensor));
  };
  using Files = std::tuple<const char*, std::map<std::string, at::Tensor>*, bool>;
  if (saved_tp == layout.tp && saved_shards == layout.dp_shard) {
    // The same layout: this rank's files (every stage's), as they are.
    for (int p = 0; p < saved_pp; ++p) {
      for (auto [kind, target, is_model] :
           {Files{"model", &out.params, true}, Files{"optimizer", &out.optimizer, false}}) {
        ASSIGN_OR_RETURN(
            auto file, SafetensorsFile::Open(dir + "/" +
                                             ShardFile(kind, layout.tp_rank, saved_tp, p, saved_pp,
                                                       layout.dp_shard_rank, saved_shards)));
        bool any = false;
        for (const TensorEntry& e : file->tensors()) any = any || take(e.name, is_model);
        if (!any) continue;
        RETURN_IF_ERROR(VerifyChecksums(*file));
        for (const TensorEntry& e : file->tensors()) {
          if (take(e.name, is_model)) (*target)[e.name] = file->Get(e);
        }
      }
    }
    return out;
  }
  // Another layout: each wanted tensor from the saved slices that overlap
  // this rank's slice; files without an overlap are not read.
  std::map<std::string, Target> params, optimizer;
  for (int p = 0; p < saved_pp; ++p) {
    for (int r = 0; r < saved_tp; ++r) {
      for (int sh = 0; sh < saved_shards; ++sh) {
        ASSIGN_OR_RETURN(auto model, SafetensorsFile::Open(dir + "/" +
                                                           ShardFile("model", r, saved_tp, p,
                                                                     saved_pp, sh, saved_shards)));
        ASSIGN_OR_RETURN(auto opt, SafetensorsFile::Open(dir + "/" +
                                                         ShardFile("optimizer", r, saved_tp, p,
                                                                   saved_pp, sh, saved_shards)));
        ASSIGN_OR_RETURN(auto saved, ParseShards(*model));
        bool verified = false;
        for (auto [file, targets, is_model] :
             {std::tuple<const SafetensorsFile*, std::map<std::string, Target>*, bool>{
                  model.get(), &params, true},
              {opt.get(), &optimizer, false}}) {
          for (const TensorEntry& e : file->tensors()) {
            if (!take(e.name, is_model)) continue;
            const std::string param = is_model ? e.name : ParameterOf(e.name);
            auto it = saved.find(param);
            if (it == saved.end()) {
              return absl::InvalidArgumentError(absl::StrCat(file->path(), ": tensor '", e.name,
                                                             "' has no weft_shards entry for '",
                                                             param, "'"));
            }
            const std::vector<int64_t>& global = it->second.global_shape;
            auto wanted = layout.targets.find(param);
            const Slice mine = wanted == layout.targets.end() ? Slice{} : wanted->second.slice;
            auto [slot, fresh] = targets->try_emplace(e.name);
            if (fresh) {
              slot->second.index = Indices(global, mine);
              std::vector<int64_t> shape;
              for (const auto& idx : slot->second.index) shape.push_back(idx.size());
              slot->second.tensor = at::zeros(shape, at::TensorOptions().dtype(e.dtype));
            }
            if (!slot->second.sources.insert(SliceKey(it->second.slice)).second) continue;
            const std::vector<std::vector<int64_t>> held = Indices(global, it->second.slice);
            bool overlaps = true;
            for (size_t d = 0; d < held.size() && overlaps; ++d) {
              std::set<int64_t> have(held[d].begin(), held[d].end());
              overlaps = false;
              for (int64_t i : slot->second.index[d]) overlaps = overlaps || have.count(i) > 0;
            }
            if (!overlaps) continue;
            if (!verified) {
              RETURN_IF_ERROR(VerifyChecksums(*model));
              RETURN_IF_ERROR(VerifyChecksums(*opt));
              verified = true;
            }
            CopyOverlap(slot->second, file->Get(e), held);
            DropPages(*file, e);  // a rank holds its slices and one saved part
            out.largest_tensor_bytes = std::max<int64_t>(
                out.largest_tensor_bytes,
                std::accumulate(global.begin(), global.end(), int64_t{1}, std::multiplies<>()) *
                    static_cast<int64_t>(c10::elementSize(e.dtype)));
          }
        }
      }
    }
  }
  for (auto [targets, into] :
       {std::pair<std::map<std::string, Target>*, std::map<std::string, at::Tensor>*>{&params,
                                                                                      &out.params},
        {&optimizer, &out.optimizer}}) {
    for (auto& [name, target] : *targets) {
      std::vector<const Box*> boxes;
      for (const Box& box : target.covered) boxes.push_back(&box);
      if (!Covers(target.tensor.sizes().vec(), 0, boxes)) {
        return absl::DataLossError(absl::StrCat(
            dir, ": the saved slices do not cover all ", target.tensor.numel(), " elements of '",
            name, "' this rank needs (expected every element saved by some rank)"));
      }
      (*into)[name] = target.tensor;
    }
  }
  return out;
}

}  // namespace weft

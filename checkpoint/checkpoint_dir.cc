#include "checkpoint/checkpoint_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/atomic_file.h"
#include "base/json.h"
#include "base/status.h"
#include "base/text_file.h"

namespace weft {
namespace {

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  int err = 0;
  auto text = ReadTextFile(path, &err);
  if (!text.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot read ", path, ": ", err != 0 ? std::strerror(err) : "read failed"));
  }
  return text;
}

}  // namespace

const Checkpoint::Located* Checkpoint::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, located] : tensors_) total += located.entry->nbytes();
  return total;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& path) {
  auto ckpt = std::make_unique<Checkpoint>();
  if (!IsDirectory(path)) {
    if (!Exists(path)) {
      return absl::NotFoundError(absl::StrCat(path, ": no such file or directory (expected a ",
                                              ".safetensors file or a checkpoint directory)"));
    }
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
    ckpt->files_.push_back(file);
  } else if (std::string index = absl::StrCat(path, "/", kIndexName); Exists(index)) {
    ckpt->index_path_ = index;
    ASSIGN_OR_RETURN(std::string text, ReadText(index));
    auto json = ParseJson(text);
    if (!json.ok())
      return absl::InvalidArgumentError(absl::StrCat(index, ": ", json.status().message()));
    const JsonValue* map = json->is_object() ? json->Find("weight_map") : nullptr;
    if (map == nullptr || !map->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          index, ": no \"weight_map\" object (expected {\"weight_map\": {name: file}})"));
    }
    std::map<std::string, std::string> wanted;  // name -> file
    std::map<std::string, size_t> file_index;
    for (const auto& [name, file] : map->members) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index, ": weight_map entry for '", name, "' is not a file name"));
      }
      if (!wanted.emplace(name, file.text).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(index, ": weight_map names '", name, "' twice"));
      }
      if (file.text.find('/') != std::string::npos || file.text == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat(index, ": weight_map maps '", name, "' to '", file.text,
                         "' (expected a file name inside the checkpoint directory)"));
      }
      file_index.emplace(file.text, 0);
    }
    for (auto& [file, slot] : file_index) {  // std::map: sorted shard names
      std::string shard = absl::StrCat(path, "/", file);
      if (!Exists(shard)) {
        std::string example;
        for (const auto& [n, f] : wanted) {
          if (f == file) {
            example = n;
            break;
          }
        }
        return absl::NotFoundError(absl::StrCat(index, " maps '", example, "' to ", file,
                                                ", which does not exist in ", path));
      }
      ASSIGN_OR_RETURN(auto opened, SafetensorsFile::Open(shard));
      slot = ckpt->files_.size();
      ckpt->files_.push_back(opened);
    }
    for (const auto& [name, file] : wanted) {
      if (ckpt->files_[file_index[file]]->Find(name) == nullptr) {
        return absl::NotFoundError(absl::StrCat(index, " maps '", name, "' to ", file,
                                                ", which has no tensor of that name"));
      }
    }
  } else if (std::string single = absl::StrCat(path, "/", kSingleName); Exists(single)) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    ckpt->files_.push_back(file);
  } else {
    return absl::NotFoundError(absl::StrCat(path, ": no ", kIndexName, " and no ", kSingleName,
                                            " (expected a Hugging Face checkpoint directory)"));
  }
  for (const auto& file : ckpt->files_) {
    for (const TensorEntry& entry : file->tensors()) {
      auto [it, inserted] = ckpt->tensors_.emplace(entry.name, Located{file.get(), &entry});
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", entry.name, "' is in both ",
                                                       it->second.file->path(), " and ",
                                                       file->path(), " (expected one file)"));
      }
    }
  }
  return ckpt;
}

namespace {

// model.safetensors.index.json: {"metadata": {"total_size": N}, "weight_map": {name: file}}.
absl::Status WriteIndex(const std::string& dir, uint64_t total,
                        const std::map<std::string, std::string>& weight_map) {
  std::string index = absl::StrCat("{\n  \"metadata\": {\n    \"total_size\": ", total,
                                   "\n  },\n  \"weight_map\": {");
  bool first = true;
  for (const auto& [tensor, file] : weight_map) {
    absl::StrAppend(&index, first ? "\n" : ",\n", "    ", JsonQuote(tensor), ": ", JsonQuote(file));
    first = false;
  }
  index += "\n  }\n}\n";
  ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(absl::StrCat(dir, "/", kIndexName)));
  RETURN_IF_ERROR(out.Write(index.data(), index.size()));
  return out.Commit();
}

}  // namespace

absl::Status WriteCheckpoint(const std::string& dir,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const WriteCheckpointOptions& options) {
  if (!IsDirectory(dir) && ::mkdir(dir.c_str(), 0755) != 0) {
    return absl::UnavailableError(absl::StrCat("mkdir(", dir, "): ", std::strerror(errno)));
  }
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  uint64_t current = 0, total = 0;
  for (const auto& item : tensors) {
    uint64_t bytes = item.second.nbytes();
    total += bytes;
    if (options.max_shard_bytes > 0 && current > 0 && current + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(item);
    current += bytes;
  }
  if (shards.size() == 1) {
    return WriteSafetensors(absl::StrCat(dir, "/", kSingleName), shards[0], options.metadata);
  }
  std::map<std::string, std::string> weight_map;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    RETURN_IF_ERROR(WriteSafetensors(absl::StrCat(dir, "/", name), shards[i], options.metadata));
    for (const auto& [tensor, t] : shards[i]) weight_map[tensor] = name;
  }
  return WriteIndex(dir, total, weight_map);
}

absl::StatusOr<std::unique_ptr<CheckpointStreamWriter>> CheckpointStreamWriter::Create(
    const std::string& dir, std::vector<TensorDecl> tensors,
    const WriteCheckpointOptions& options) {
  if (!IsDirectory(dir) && ::mkdir(dir.c_str(), 0755) != 0) {
    return absl::UnavailableError(absl::StrCat("mkdir(", dir, "): ", std::strerror(errno)));
  }
  auto w = std::unique_ptr<CheckpointStreamWriter>(new CheckpointStreamWriter());
  w->dir_ = dir;
  w->options_ = options;
  w->shards_.emplace_back();
  uint64_t current = 0;
  for (TensorDecl& t : tensors) {  // filled greedily, as WriteCheckpoint does
    const uint64_t bytes = t.nbytes();
    w->total_ += bytes;
    if (options.max_shard_bytes > 0 && current > 0 && current + bytes > options.max_shard_bytes) {
      w->shards_.emplace_back();
      current = 0;
    }
    w->shards_.back().push_back(std::move(t));
    current += bytes;
  }
  for (size_t i = 0; i < w->shards_.size(); ++i) {
    w->names_.push_back(w->shards_.size() == 1 ? std::string(kSingleName)
                                               : absl::StrFormat("model-%05d-of-%05d.safetensors",
                                                                 i + 1, w->shards_.size()));
  }
  ASSIGN_OR_RETURN(w->writer_, SafetensorsStreamWriter::Create(absl::StrCat(dir, "/", w->names_[0]),
                                                               w->shards_[0], options.metadata));
  return w;
}

absl::Status CheckpointStreamWriter::Append(const std::string& name, const at::Tensor& tensor) {
  if (shard_ < shards_.size() && in_shard_ == shards_[shard_].size()) {
    // The previous shard is complete: commit it, open the next.
    RETURN_IF_ERROR(writer_->Commit());
    ++shard_;
    in_shard_ = 0;
    if (shard_ < shards_.size()) {
      ASSIGN_OR_RETURN(writer_,
                       SafetensorsStreamWriter::Create(absl::StrCat(dir_, "/", names_[shard_]),
                                                       shards_[shard_], options_.metadata));
    }
  }
  if (shard_ >= shards_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir_, ": tensor '", name, "' appended after every declared tensor"));
  }
  RETURN_IF_ERROR(writer_->Append(name, tensor));
  ++in_shard_;
  return absl::OkStatus();
}

absl::Status CheckpointStreamWriter::Commit() {
  if (shard_ + 1 != shards_.size() || in_shard_ != shards_[shard_].size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir_, ": committed before every declared tensor was appended"));
  }
  RETURN_IF_ERROR(writer_->Commit());
  if (shards_.size() == 1) return absl::OkStatus();
  std::map<std::string, std::string> weight_map;
  for (size_t i = 0; i < shards_.size(); ++i) {
    for (const TensorDecl& t : shards_[i]) weight_map[t.name] = names_[i];
  }
  return WriteIndex(dir_, total_, weight_map);
}

}  // namespace weft

#include "trainer/data_loader.h"

#include <stdexcept>

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/json.h"
#include "base/status.h"

namespace weft {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, bound) by rejection: portable, unlike
// std::uniform_int_distribution, whose algorithm the standard leaves open.
uint64_t UniformBelow(std::mt19937_64& gen, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  while (true) {
    const uint64_t x = gen();
    if (x >= threshold) return x % bound;
  }
}

absl::StatusOr<int64_t> NonNegativeMember(const JsonValue& v, absl::string_view key) {
  const JsonValue* m = v.Find(key);
  if (m == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("data position: \"", key, "\" is missing (expected a non-negative integer)"));
  }
  std::optional<uint64_t> n = m->AsUint64();
  if (!n.has_value() || *n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    std::string found = m->is_number()   ? m->text
                        : m->is_string() ? JsonQuote(m->text)
                                         : "not a number";
    return absl::InvalidArgumentError(absl::StrCat("data position: \"", key, "\" is ", found,
                                                   " (expected a non-negative integer)"));
  }
  return static_cast<int64_t>(*n);
}

using Rows = std::vector<std::vector<std::pair<int64_t, int64_t>>>;

// The documents a loader reads: `chosen`, or all of the file's.
std::vector<int64_t> ChosenDocuments(const TokenFile& file, const DataLoaderOptions& o) {
  if (!o.documents.empty()) return o.documents;
  std::vector<int64_t> all(static_cast<size_t>(file.num_documents()));
  for (int64_t d = 0; d < file.num_documents(); ++d) all[d] = d;
  return all;
}

// Best-fit decreasing (TRL's "bfd"): documents by length, longest first
// (ties by index), each into the row with the least room that still holds
// it, else a new row; documents longer than seq_len are cut to it.
Rows PackDocuments(const TokenFile& file, const std::vector<int64_t>& docs, int64_t seq_len,
                   int64_t* truncated) {
  std::vector<std::pair<int64_t, int64_t>> lengths;  // (length, document)
  *truncated = 0;
  for (int64_t d : docs) {
    const int64_t len = file.document_start(d + 1) - file.document_start(d);
    if (len > seq_len) *truncated += len - seq_len;
    lengths.push_back({std::min(len, seq_len), d});
  }
  std::stable_sort(lengths.begin(), lengths.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  Rows rows;
  std::multimap<int64_t, size_t> room;  // room left -> row
  for (const auto& [len, d] : lengths) {
    auto it = room.lower_bound(len);
    size_t row;
    int64_t left;
    if (it == room.end()) {
      row = rows.size();
      rows.emplace_back();
      left = seq_len;
    } else {
      row = it->second;
      left = it->first;
      room.erase(it);
    }
    rows[row].push_back({d, len});
    room.emplace(left - len, row);
  }
  return rows;
}

int64_t CountSamples(const TokenFile& file, const DataLoaderOptions& o) {
  if (o.packing) {
    int64_t truncated = 0;
    return static_cast<int64_t>(
        PackDocuments(file, ChosenDocuments(file, o), o.seq_len, &truncated).size());
  }
  if (o.documents.empty()) return file.num_tokens() / o.seq_len;
  int64_t tokens = 0;
  for (int64_t d : o.documents) tokens += file.document_start(d + 1) - file.document_start(d);
  return tokens / o.seq_len;
}

}  // namespace

std::string DataPosition::ToJson() const {
  return absl::StrCat("{\"epoch\": ", epoch, ", \"offset\": ", offset, "}");
}

absl::StatusOr<DataPosition> DataPosition::FromJson(absl::string_view json) {
  absl::StatusOr<JsonValue> parsed = ParseJson(json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("data position: ", parsed.status().message()));
  }
  const JsonValue& v = *parsed;
  if (!v.is_object()) {
    return absl::InvalidArgumentError(
        "data position is not a JSON object (expected {\"epoch\": N, \"offset\": N})");
  }
  for (const auto& [key, value] : v.members) {
    if (key != "epoch" && key != "offset") {
      return absl::InvalidArgumentError(absl::StrCat("data position: unknown key ", JsonQuote(key),
                                                     " (expected \"epoch\" and \"offset\")"));
    }
  }
  DataPosition position;
  ASSIGN_OR_RETURN(position.epoch, NonNegativeMember(v, "epoch"));
  ASSIGN_OR_RETURN(position.offset, NonNegativeMember(v, "offset"));
  return position;
}

std::vector<int64_t> EpochPermutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> perm(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) perm[i] = i;
  std::mt19937_64 gen(SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(epoch)));
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(UniformBelow(gen, static_cast<uint64_t>(i) + 1));
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

absl::Status DataLoader::Validate(const TokenFile& file, const DataLoaderOptions& o) {
  if (o.seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq_len ", o.seq_len, " is not positive (expected >= 1)"));
  }
  if (o.global_batch <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("global_batch ", o.global_batch, " is not positive (expected >= 1)"));
  }
  if (o.dp_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dp_size ", o.dp_size, " is not positive (expected >= 1)"));
  }
  if (o.dp_rank < 0 || o.dp_rank >= o.dp_size) {
    return absl::InvalidArgumentError(absl::StrCat("dp_rank ", o.dp_rank,
                                                   " is out of range for dp_size ", o.dp_size,
                                                   " (expected 0 <= dp_rank < ", o.dp_size, ")"));
  }
  if (o.global_batch % o.dp_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("global_batch ", o.global_batch,
                                                   " is not divisible by dp_size ", o.dp_size,
                                                   " (expected a multiple of ", o.dp_size, ")"));
  }
  for (size_t i = 0; i < o.documents.size(); ++i) {
    const int64_t d = o.documents[i];
    if (d < 0 || d >= file.num_documents()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "document ", d, " (entry ", i, " of the loader's documents) is out of range for ",
          file.prefix(), " (expected 0 <= document < ", file.num_documents(), ")"));
    }
  }
  const int64_t num_samples = CountSamples(file, o);
  if (o.allow_partial) {
    if (num_samples < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file ", file.prefix(), " has no sample of seq_len ", o.seq_len,
          o.packing ? " (expected at least one document)" : " (expected >= seq_len tokens)"));
    }
    return absl::OkStatus();
  }
  if (o.packing && num_samples < o.global_batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file ", file.prefix(), " packs into ", num_samples, " rows of seq_len ",
                     o.seq_len, ", fewer than one global_batch of ", o.global_batch,
                     " (expected more documents or a smaller global_batch)"));
  }
  if (num_samples < o.global_batch) {
    const std::string needed = o.global_batch > std::numeric_limits<int64_t>::max() / o.seq_len
                                   ? absl::StrCat("more than ", std::numeric_limits<int64_t>::max())
                                   : absl::StrCat(o.global_batch * o.seq_len);
    return absl::InvalidArgumentError(absl::StrCat(
        "token file ", file.prefix(), " has ", file.num_tokens(), " tokens: ", num_samples,
        " samples of seq_len ", o.seq_len, ", fewer than one global_batch of ", o.global_batch,
        " (expected num_tokens >= ", needed, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DataLoader>> DataLoader::Create(std::shared_ptr<TokenFile> file,
                                                               DataLoaderOptions options) {
  if (file == nullptr) return absl::InvalidArgumentError("DataLoader: token file is null");
  RETURN_IF_ERROR(Validate(*file, options));
  return std::make_unique<DataLoader>(std::move(file), options);
}

DataLoader::DataLoader(std::shared_ptr<TokenFile> file, DataLoaderOptions options)
    : file_(std::move(file)), options_(options) {
  if (file_ == nullptr) throw std::invalid_argument("DataLoader: token file is null");
  const absl::Status valid = Validate(*file_, options_);
  if (!valid.ok()) throw std::runtime_error(std::string(valid.message()));
  Init();
}

void DataLoader::Init() {
  if (options_.packing) {
    rows_ = PackDocuments(*file_, ChosenDocuments(*file_, options_), options_.seq_len,
                          &truncated_tokens_);
    num_samples_ = static_cast<int64_t>(rows_.size());
    return;
  }
  if (!options_.documents.empty()) {
    int64_t offset = 0;
    for (int64_t d : options_.documents) {
      stream_starts_.push_back(offset);
      offset += file_->document_start(d + 1) - file_->document_start(d);
    }
    stream_starts_.push_back(offset);
    num_samples_ = offset / options_.seq_len;
    return;
  }
  num_samples_ = file_->num_tokens() / options_.seq_len;
}

void DataLoader::ReadStream(int64_t begin, int64_t end, int64_t* ids, uint8_t* mask) const {
  if (stream_starts_.empty()) {  // all documents: the file's own order
    file_->ReadTokens(begin, end, ids);
    file_->ReadLossMask(begin, end, mask);
    return;
  }
  // The chosen document holding `begin`, then on to the next ones.
  size_t i =
      static_cast<size_t>(std::upper_bound(stream_starts_.begin(), stream_starts_.end(), begin) -
                          stream_starts_.begin() - 1);
  while (begin < end) {
    const int64_t doc = options_.documents[i];
    const int64_t in_doc = begin - stream_starts_[i];
    const int64_t n = std::min(end, stream_starts_[i + 1]) - begin;
    const int64_t at = file_->document_start(doc) + in_doc;
    file_->ReadTokens(at, at + n, ids);
    file_->ReadLossMask(at, at + n, mask);
    ids += n;
    mask += n;
    begin += n;
    ++i;
  }
}

void DataLoader::Fill(int64_t sample, int64_t r, Batch& batch) {
  const int64_t len = options_.seq_len;
  int64_t* ids = batch.input_ids.data_ptr<int64_t>() + r * len;
  int64_t* labels = batch.labels.data_ptr<int64_t>() + r * len;
  std::vector<uint8_t> mask(static_cast<size_t>(len), 0);
  int64_t used = 0;
  if (sample < 0) {
    // Padding: nothing counted; positions of one segment when packing.
    if (options_.packing) {
      int64_t* positions = batch.position_ids.data_ptr<int64_t>() + r * len;
      for (int64_t i = 0; i < len; ++i) positions[i] = i;
    }
  } else if (!options_.packing) {
    ReadStream(sample * len, (sample + 1) * len, ids, mask.data());
    used = len;
  } else {
    int64_t* positions = batch.position_ids.data_ptr<int64_t>() + r * len;
    for (const auto& [doc, n] : rows_[sample]) {
      const int64_t at = file_->document_start(doc);
      file_->ReadTokens(at, at + n, ids + used);
      file_->ReadLossMask(at, at + n, mask.data() + used);
      mask[used] = 0;  // not predicted from the previous document's end
      for (int64_t i = 0; i < n; ++i) positions[used + i] = i;
      used += n;
    }
    for (int64_t i = used; i < len; ++i) positions[i] = i - used;  // the tail: its own segment
  }
  for (int64_t i = used; i < len; ++i) ids[i] = options_.pad_token;
  for (int64_t i = 0; i < len; ++i) {
    labels[i] = mask[i] != 0 ? ids[i] : -100;
    if (i > 0 && mask[i] != 0) ++batch.label_tokens;
  }
}

Batch DataLoader::MakeBatch(const std::vector<int64_t>& samples) {
  Batch batch;
  const int64_t rows = static_cast<int64_t>(samples.size()), len = options_.seq_len;
  batch.input_ids = at::empty({rows, len}, at::kLong);
  batch.labels = at::empty({rows, len}, at::kLong);
  if (options_.packing) batch.position_ids = at::empty({rows, len}, at::kLong);
  for (int64_t r = 0; r < rows; ++r) Fill(samples[r], r, batch);
  return batch;
}

int64_t DataLoader::SampleAt(int64_t index) {
  if (!options_.shuffle) return index;
  if (permutation_epoch_ != position_.epoch) {
    permutation_ = EpochPermutation(num_samples_, options_.seed, position_.epoch);
    permutation_epoch_ = position_.epoch;
  }
  return permutation_[index];
}

void DataLoader::Normalize() {
  if (position_.offset + options_.global_batch > num_samples_) {
    ++position_.epoch;
    position_.offset = 0;
  }
}

Batch DataLoader::NextBatch() {
  Normalize();
  const int64_t local = options_.global_batch / options_.dp_size;
  const int64_t first = position_.offset + options_.dp_rank * local;
  std::vector<int64_t> samples;
  for (int64_t r = 0; r < local; ++r) samples.push_back(SampleAt(first + r));
  position_.offset += options_.global_batch;
  Normalize();
  return MakeBatch(samples);
}

Batch DataLoader::EvalBatch(int64_t index) {
  const int64_t local = options_.global_batch / options_.dp_size;
  const int64_t first = index * options_.global_batch + options_.dp_rank * local;
  std::vector<int64_t> samples;
  for (int64_t r = 0; r < local; ++r) samples.push_back(first + r < num_samples_ ? first + r : -1);
  return MakeBatch(samples);
}

absl::Status DataLoader::CheckPosition(const DataPosition& p) const {
  if (p.epoch < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("data position epoch ", p.epoch, " is negative (expected >= 0)"));
  }
  if (p.offset < 0 || p.offset > num_samples_) {
    return absl::InvalidArgumentError(
        absl::StrCat("data position offset ", p.offset, " is out of range for ", num_samples_,
                     " samples (expected 0 <= offset <= ", num_samples_, ")"));
  }
  return absl::OkStatus();
}

absl::Status DataLoader::Restore(const DataPosition& position) {
  RETURN_IF_ERROR(CheckPosition(position));
  position_ = position;
  Normalize();
  return absl::OkStatus();
}

}  // namespace weft

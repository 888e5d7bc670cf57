#include "trainer/data_loader.h"

#include <stdexcept>

#include <ATen/ATen.h>

#include <limits>
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
  const int64_t num_samples = file.num_tokens() / o.seq_len;
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
  num_samples_ = file_->num_tokens() / options_.seq_len;
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

at::Tensor DataLoader::Next() {
  Normalize();
  const int64_t local = options_.global_batch / options_.dp_size;
  const int64_t len = options_.seq_len;
  at::Tensor batch = at::empty({local, len}, at::kLong);
  int64_t* out = batch.data_ptr<int64_t>();
  const int64_t first = position_.offset + options_.dp_rank * local;
  for (int64_t r = 0; r < local; ++r) {
    const int64_t sample = SampleAt(first + r);
    file_->ReadTokens(sample * len, (sample + 1) * len, out + r * len);
  }
  position_.offset += options_.global_batch;
  Normalize();
  return batch;
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

#include "checkpoint/loader.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <fstream>
#include <random>

#include "gtest/gtest.h"

namespace weft {
namespace {

std::string TmpDir(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir ? dir : "/tmp") + "/" + name;
  ::mkdir(path.c_str(), 0755);
  return path;
}

// What the loader must produce: the full tensor sliced and concatenated.
at::Tensor Expected(at::Tensor full, const Slice& slice) {
  for (size_t d = 0; d < slice.size(); ++d) {
    if (slice[d].empty()) continue;
    std::vector<at::Tensor> parts;
    for (const Range& r : slice[d]) parts.push_back(full.narrow(d, r.start, r.end - r.start));
    full = at::cat(parts, d);
  }
  return full;
}

TEST(Loader, WholeFixtureMatchesTheFileAndConvertsDtypes) {
  auto ckpt = Checkpoint::Open("tests/data/hf/llama-sharded");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<LoadRequest> requests;
  for (const auto& [name, at] : (*ckpt)->tensors()) {
    requests.push_back(
        {name,
         name == "lm_head.weight" ? c10::optional<at::ScalarType>(at::kBFloat16) : c10::nullopt,
         at::kCPU,
         {}});
  }
  auto result = LoadCheckpoint(**ckpt, requests);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->tensors.size(), 21u);
  at::Storage arena = result->tensors.begin()->second.storage();
  for (const auto& [name, t] : result->tensors) {
    const Checkpoint::Located* at = (*ckpt)->Find(name);
    at::Tensor want = at->file->Get(*at->entry);
    if (name == "lm_head.weight") want = want.to(at::kBFloat16);
    EXPECT_EQ(t.scalar_type(), want.scalar_type()) << name;
    EXPECT_TRUE(at::equal(t, want)) << name;
    // Every parameter is a view of one CPU arena.
    EXPECT_TRUE(t.storage().is_alias_of(arena)) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 64, 0u) << name;
  }
  EXPECT_EQ(result->stats.bytes_read, 427264u);
  EXPECT_EQ(result->stats.bytes_loaded, 427264u - 65536u / 2);
  EXPECT_GT(result->stats.gb_per_s, 0);
  EXPECT_GT(result->stats.peak_rss_bytes, 0);
}

TEST(Loader, RandomSlicesOnEveryDimEqualSlicingTheFullTensor) {
  std::mt19937 rng(7);
  std::string dir = TmpDir("slices");
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32_3d", at::randn({9, 7, 5})},
      {"bf16_2d", at::randn({12, 10}).to(at::kBFloat16)},
      {"i64_1d", at::arange(17, at::kLong)},
      {"f16_4d", at::randn({3, 4, 5, 6}).to(at::kHalf)},
  };
  WriteCheckpointOptions options;
  options.max_shard_bytes = 1000;  // several files
  ASSERT_TRUE(WriteCheckpoint(dir, tensors, options).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_GT((*ckpt)->files().size(), 1u);

  auto random_ranges = [&](int64_t size) {
    std::vector<Range> ranges;
    int kind = std::uniform_int_distribution<int>(0, 3)(rng);
    if (kind == 0) return ranges;   // whole dim
    int count = kind == 3 ? 2 : 1;  // two ranges: a packed shard
    std::vector<int64_t> cuts;
    for (int i = 0; i < 2 * count; ++i)
      cuts.push_back(std::uniform_int_distribution<int64_t>(0, size)(rng));
    std::sort(cuts.begin(), cuts.end());
    for (int i = 0; i < count; ++i) ranges.push_back({cuts[2 * i], cuts[2 * i + 1]});
    return ranges;
  };
  for (int trial = 0; trial < 60; ++trial) {
    std::vector<LoadRequest> requests;
    std::map<std::string, Slice> slices;
    for (const auto& [name, t] : tensors) {
      Slice slice;
      for (int64_t d = 0; d < t.dim(); ++d) slice.push_back(random_ranges(t.size(d)));
      slices[name] = slice;
      c10::optional<at::ScalarType> dtype;
      if (trial % 3 == 1 && t.is_floating_point()) dtype = at::kFloat;
      if (trial % 3 == 2 && t.is_floating_point()) dtype = at::kDouble;
      requests.push_back({name, dtype, at::kCPU, slice});
    }
    auto result = LoadCheckpoint(**ckpt, requests);
    ASSERT_TRUE(result.ok()) << result.status();
    for (const auto& [name, t] : tensors) {
      at::Tensor want = Expected(t, slices[name]);
      at::Tensor got = result->tensors.at(name);
      if (got.scalar_type() != want.scalar_type()) want = want.to(got.scalar_type());
      ASSERT_EQ(got.sizes(), want.sizes()) << name << " trial " << trial;
      EXPECT_TRUE(at::equal(got, want)) << name << " trial " << trial;
    }
  }
}

TEST(Loader, PackedTwoRangeRowsOfAFusedWeight) {
  // gate_up_proj: [2H, D]; rank r of tp holds rows [r*s, (r+1)*s) and [H + r*s, H + (r+1)*s).
  std::string dir = TmpDir("packed");
  at::Tensor gate_up = at::arange(8 * 3, at::kFloat).reshape({8, 3});
  ASSERT_TRUE(WriteCheckpoint(dir, {{"gate_up_proj.weight", gate_up}}).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  const int64_t H = 4, tp = 2;
  for (int64_t r = 0; r < tp; ++r) {
    int64_t s = H / tp;
    auto result =
        LoadCheckpoint(**ckpt, {{"gate_up_proj.weight",
                                 c10::nullopt,
                                 at::kCPU,
                                 {{{r * s, (r + 1) * s}, {H + r * s, H + (r + 1) * s}}, {}}}});
    ASSERT_TRUE(result.ok()) << result.status();
    at::Tensor got = result->tensors.at("gate_up_proj.weight");
    at::Tensor want = at::cat({gate_up.narrow(0, r * s, s), gate_up.narrow(0, H + r * s, s)});
    EXPECT_TRUE(at::equal(got, want)) << got;
    // chunk(2) still pairs this rank's gate rows with its up rows.
    EXPECT_TRUE(at::equal(got.chunk(2)[1], gate_up.narrow(0, H + r * s, s)));
  }
}

// Zero-copy: whole tensors and dim-0 rows already in the requested dtype are
// views of the file's mapping (no memory of their own, nothing read now);
// packed ranges, inner-dim slices and dtype conversions are copied. A write
// to a view copies the page privately: the file never changes.
TEST(Loader, ZeroCopyViewsTheFileWhereItsBytesFit) {
  std::string dir = TmpDir("zero_copy");
  at::Tensor w = at::arange(8 * 6, at::kFloat).reshape({8, 6});
  ASSERT_TRUE(WriteCheckpoint(dir, {{"w", w}, {"v", w + 100}, {"u", w * 2}, {"t", w - 1}}).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<LoadRequest> requests = {
      {"w", c10::nullopt, at::kCPU, {}, /*zero_copy=*/true},        // whole
      {"v", c10::nullopt, at::kCPU, {{{2, 5}}, {}}, true},          // rows: a view
      {"u", c10::nullopt, at::kCPU, {{{0, 2}, {4, 6}}, {}}, true},  // packed: copied
      {"t", at::kBFloat16, at::kCPU, {}, true}};                    // converted: copied
  auto result = LoadCheckpoint(**ckpt, requests);
  ASSERT_TRUE(result.ok()) << result.status();
  const auto& mapping = *(*ckpt)->Find("w")->file->mapping();
  auto in_file = [&](const at::Tensor& t) {
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    return p >= mapping.data() && p < mapping.data() + mapping.size();
  };
  const auto& got = result->tensors;
  EXPECT_TRUE(in_file(got.at("w")));
  EXPECT_TRUE(in_file(got.at("v")));
  EXPECT_FALSE(in_file(got.at("u")));
  EXPECT_FALSE(in_file(got.at("t")));
  EXPECT_TRUE(at::equal(got.at("w"), w));
  EXPECT_TRUE(at::equal(got.at("v"), (w + 100).narrow(0, 2, 3)));
  EXPECT_TRUE(at::equal(got.at("u"), at::cat({w.narrow(0, 0, 2), w.narrow(0, 4, 2)}) * 2));
  EXPECT_TRUE(at::equal(got.at("t"), (w - 1).to(at::kBFloat16)));
  EXPECT_EQ(result->stats.bytes_mapped, (48u + 18u) * 4);
  EXPECT_EQ(result->stats.bytes_reserved, 128u + 128u);  // u (48 B) and t (96 B), 64-aligned
  // The views outlive the checkpoint object; a write stays in this process.
  at::Tensor view = got.at("w");
  ckpt->reset();
  view.add_(1);
  auto again = Checkpoint::Open(dir);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(at::equal((*again)->Find("w")->file->Get(*(*again)->Find("w")->entry), w));
  EXPECT_TRUE(at::equal(view, w + 1));
}

// Current resident set (VmRSS) in bytes.
int64_t RssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

TEST(Loader, LargeRowSlicesArePreadIntoPlaceOnAnyThreadCountWithinTheRssBound) {
  // Tensors of several MiB at offsets that are not page-aligned (an odd
  // header, odd row sizes), so each becomes several pread jobs whose ends fall
  // inside pages shared with the next parameter in the arena.
  std::string dir = TmpDir("large");
  {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (int i = 0; i < 6; ++i) {
      tensors.push_back(
          {"w" + std::to_string(i), at::randint(-30000, 30000, {1001 + 97 * i, 2053}, at::kShort)});
      tensors.push_back({"b" + std::to_string(i), at::randn({333 + i})});
    }
    WriteCheckpointOptions options;
    options.max_shard_bytes = 12 << 20;  // several files
    ASSERT_TRUE(WriteCheckpoint(dir, tensors, options).ok());
  }
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_GT((*ckpt)->files().size(), 1u);
  for (int threads : {1, 2, 3}) {
    for (int rank : {0, 1}) {
      std::vector<LoadRequest> requests;
      for (const auto& [name, at] : (*ckpt)->tensors()) {
        Slice slice;
        if (at.entry->shape.size() == 2) {
          int64_t rows = at.entry->shape[0], half = (rows + 1) / 2;
          slice = {{{rank * half, std::min(rows, (rank + 1) * half)}}, {}};
        }
        requests.push_back({name, c10::nullopt, at::kCPU, slice});
      }
      // Reset the peak to the current resident set (Linux >= 4.0).
      std::ofstream("/proc/self/clear_refs") << "5";
      const int64_t before = RssBytes();
      LoadOptions options;
      options.threads = threads;
      auto result = LoadCheckpoint(**ckpt, requests, options);
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_EQ(result->stats.bytes_pread, result->stats.bytes_read);
      EXPECT_GT(result->stats.bytes_loaded, 12u << 20);
      // Only this rank's share becomes resident (no file page is mapped).
      EXPECT_LE(result->stats.peak_rss_bytes - before,
                static_cast<int64_t>(1.1 * result->stats.bytes_loaded) + (8 << 20))
          << "threads " << threads << " rank " << rank;
      for (const LoadRequest& r : requests) {
        const Checkpoint::Located* at = (*ckpt)->Find(r.name);
        at::Tensor want = Expected(at->file->Get(*at->entry), r.slice);
        EXPECT_TRUE(at::equal(result->tensors.at(r.name), want))
            << r.name << " threads " << threads << " rank " << rank;
      }
    }
  }
}

TEST(Loader, RejectsBadRequestsBeforeAllocating) {
  auto ckpt = Checkpoint::Open("tests/data/hf/llama");
  ASSERT_TRUE(ckpt.ok());
  auto error = [&](std::vector<LoadRequest> requests) {
    auto result = LoadCheckpoint(**ckpt, requests);
    return result.ok() ? "OK" : std::string(result.status().message());
  };
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_EQ(error({{"model.nope", c10::nullopt, at::kCPU, {}}}),
            "checkpoint has no tensor 'model.nope'");
  EXPECT_EQ(error({{q, c10::nullopt, at::kCPU, {{{0, 1}}}}}),
            "slice of '" + q + "' has 1 dims but the tensor has 2 (shape [64, 64])");
  EXPECT_EQ(error({{q, c10::nullopt, at::kCPU, {{{0, 65}}, {}}}}),
            "slice of '" + q + "' dim 0: range [0, 65) is not inside [0, 64) (shape [64, 64])");
  EXPECT_EQ(error({{q, c10::nullopt, at::kCPU, {{}, {{5, 3}}}}}),
            "slice of '" + q + "' dim 1: range [5, 3) is not inside [0, 64) (shape [64, 64])");
  EXPECT_EQ(error({{q, c10::nullopt, at::kCPU, {}}, {q, c10::nullopt, at::kCPU, {}}}),
            "'" + q + "' is requested twice");
}

}  // namespace
}  // namespace weft

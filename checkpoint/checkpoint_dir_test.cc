#include "checkpoint/checkpoint_dir.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <fstream>

#include "gtest/gtest.h"

namespace weft {
namespace {

std::string Fixture(const std::string& name) { return "tests/data/hf/" + name; }

std::string TmpDir(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir ? dir : "/tmp") + "/" + name;
  ::mkdir(path.c_str(), 0755);
  return path;
}

TEST(Checkpoint, FixturesWrittenByAnIndependentWriterLoadBitExactly) {
  auto single = Checkpoint::Open(Fixture("llama"));
  auto sharded = Checkpoint::Open(Fixture("llama-sharded"));
  auto bf16 = Checkpoint::Open(Fixture("llama-bf16"));
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ((*single)->tensors().size(), 21u);
  EXPECT_EQ((*sharded)->tensors().size(), 21u);
  EXPECT_EQ((*sharded)->files().size(), 2u);
  EXPECT_EQ((*sharded)->total_bytes(), 427264u);  // the index's total_size
  for (const auto& [name, located] : (*single)->tensors()) {
    at::Tensor a = located.file->Get(*located.entry);
    const Checkpoint::Located* other = (*sharded)->Find(name);
    ASSERT_NE(other, nullptr) << name;
    EXPECT_TRUE(at::equal(a, other->file->Get(*other->entry))) << name;
    const Checkpoint::Located* rounded = (*bf16)->Find(name);
    ASSERT_NE(rounded, nullptr) << name;
    at::Tensor b = rounded->file->Get(*rounded->entry);
    EXPECT_EQ(b.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(a.to(at::kBFloat16), b)) << name;
  }
  // Layer 1 is split over both shards, as the fixture README says.
  EXPECT_NE((*sharded)->Find("model.layers.1.self_attn.q_proj.weight")->file,
            (*sharded)->Find("model.layers.1.mlp.down_proj.weight")->file);

  // The reference file: I64 ids, a 0-d loss with the exact bits transformers produced.
  auto ref = SafetensorsFile::Open(Fixture("llama/reference.safetensors"));
  ASSERT_TRUE(ref.ok()) << ref.status();
  at::Tensor loss = (*ref)->Get("loss");
  EXPECT_EQ(loss.dim(), 0);
  uint32_t bits;
  float value = loss.item<float>();
  std::memcpy(&bits, &value, 4);
  EXPECT_EQ(bits, 0x40de6493u);  // loss_float32_hex_le "9364de40"
  at::Tensor ids = (*ref)->Get("input_ids");
  EXPECT_EQ(ids.scalar_type(), at::kLong);
  EXPECT_EQ(ids[0][0].item<int64_t>(), 47);
  EXPECT_EQ(ids[1][15].item<int64_t>(), 50);
}

TEST(Checkpoint, WritesShardsAndAnIndexLikeHuggingFace) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (int i = 0; i < 5; ++i) {
    tensors.emplace_back("layer." + std::to_string(i) + ".weight",
                         at::full({10, 10}, static_cast<float>(i)));  // 400 bytes each
  }
  std::string dir = TmpDir("sharded_out");
  WriteCheckpointOptions options;
  options.max_shard_bytes = 1000;  // two tensors per shard
  ASSERT_TRUE(WriteCheckpoint(dir, tensors, options).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->files().size(), 3u);
  EXPECT_EQ((*ckpt)->files()[0]->path(), dir + "/model-00001-of-00003.safetensors");
  EXPECT_EQ((*ckpt)->files()[2]->tensors().size(), 1u);
  EXPECT_EQ((*ckpt)->total_bytes(), 2000u);
  for (const auto& [name, t] : tensors) {
    const Checkpoint::Located* at = (*ckpt)->Find(name);
    ASSERT_NE(at, nullptr);
    EXPECT_TRUE(at::equal(at->file->Get(*at->entry), t));
  }
  std::ifstream index(dir + "/model.safetensors.index.json");
  std::string text((std::istreambuf_iterator<char>(index)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"total_size\": 2000"), std::string::npos) << text;

  std::string one = TmpDir("single_out");
  ASSERT_TRUE(WriteCheckpoint(one, tensors).ok());
  auto single = Checkpoint::Open(one);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->files().size(), 1u);
  EXPECT_EQ((*single)->files()[0]->path(), one + "/model.safetensors");
}

// One tensor at a time: the same shards, index and bytes as WriteCheckpoint;
// tensors out of order or unlike their declaration are one-line errors.
TEST(Checkpoint, StreamsTensorByTensorIntoTheSameLayout) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::vector<TensorDecl> decls;
  for (int i = 0; i < 5; ++i) {
    at::Tensor t = at::arange(60 + i, at::kFloat).view({-1}) * (i + 1);
    tensors.emplace_back("t" + std::to_string(i), t);
    decls.push_back({"t" + std::to_string(i), at::kFloat, t.sizes().vec()});
  }
  WriteCheckpointOptions options;
  options.max_shard_bytes = 500;  // 2 tensors per shard
  const std::string whole = TmpDir("stream_whole"), streamed = TmpDir("stream_streamed");
  ASSERT_TRUE(WriteCheckpoint(whole, tensors, options).ok());
  auto writer = CheckpointStreamWriter::Create(streamed, decls, options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (const auto& [name, t] : tensors) ASSERT_TRUE((*writer)->Append(name, t).ok()) << name;
  ASSERT_TRUE((*writer)->Commit().ok());
  auto a = Checkpoint::Open(whole), b = Checkpoint::Open(streamed);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*b)->files().size(), 3u);
  EXPECT_EQ((*b)->total_bytes(), (*a)->total_bytes());
  for (const auto& [name, t] : tensors) {
    const Checkpoint::Located* at = (*b)->Find(name);
    ASSERT_NE(at, nullptr) << name;
    EXPECT_TRUE(at::equal(at->file->Get(*at->entry), t)) << name;
  }
  auto bad = CheckpointStreamWriter::Create(TmpDir("stream_bad"), decls, options);
  ASSERT_TRUE(bad.ok());
  absl::Status order = (*bad)->Append("t1", tensors[1].second);
  EXPECT_EQ(order.message(), TmpDir("stream_bad") +
                                 "/model-00001-of-00003.safetensors: tensor 't1' appended out of "
                                 "order (expected 't0')");
  absl::Status shape = (*bad)->Append("t0", at::zeros({3}, at::kFloat));
  EXPECT_EQ(shape.message(), TmpDir("stream_bad") +
                                 "/model-00001-of-00003.safetensors: tensor 't0' is Float [3] but "
                                 "was declared Float [60]");
  EXPECT_FALSE((*bad)->Commit().ok());
}

TEST(Checkpoint, RejectsBrokenDirectories) {
  std::vector<std::pair<std::string, at::Tensor>> tensors = {{"a", at::ones({4})},
                                                             {"b", at::ones({4})}};
  WriteCheckpointOptions options;
  options.max_shard_bytes = 16;
  auto write = [&](const std::string& name) {
    std::string dir = TmpDir(name);
    EXPECT_TRUE(WriteCheckpoint(dir, tensors, options).ok());
    return dir;
  };
  auto error = [](const std::string& path) {
    auto ckpt = Checkpoint::Open(path);
    return ckpt.ok() ? "OK" : std::string(ckpt.status().message());
  };

  std::string missing = write("missing_shard");
  std::remove((missing + "/model-00002-of-00002.safetensors").c_str());
  EXPECT_EQ(error(missing), missing +
                                "/model.safetensors.index.json maps 'b' to "
                                "model-00002-of-00002.safetensors, which does not exist in " +
                                missing);

  std::string absent = write("absent_name");
  std::ofstream(absent + "/model.safetensors.index.json")
      << R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})";
  EXPECT_EQ(error(absent), absent +
                               "/model.safetensors.index.json maps 'c' to "
                               "model-00001-of-00002.safetensors, which has no tensor of that "
                               "name");

  std::string twice = write("twice");
  ASSERT_TRUE(WriteSafetensors(twice + "/model-00002-of-00002.safetensors",
                               {{"a", at::ones({4})}, {"b", at::ones({4})}})
                  .ok());
  EXPECT_EQ(error(twice), "tensor 'a' is in both " + twice +
                              "/model-00001-of-00002.safetensors and " + twice +
                              "/model-00002-of-00002.safetensors (expected one file)");

  std::string empty = TmpDir("empty_dir");
  EXPECT_EQ(error(empty), empty +
                              ": no model.safetensors.index.json and no model.safetensors "
                              "(expected a Hugging Face checkpoint directory)");
  EXPECT_EQ(error(empty + "/nope"), empty +
                                        "/nope: no such file or directory (expected a "
                                        ".safetensors file or a checkpoint directory)");
}

}  // namespace
}  // namespace weft

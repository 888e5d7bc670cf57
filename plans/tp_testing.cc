#include "plans/tp_testing.h"

#include <ATen/ATen.h>

#include <vector>

#include "gtest/gtest.h"

namespace weft::testing {

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 && b.numel() == 0) return 0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

at::Tensor MatchingSlice(const at::Tensor& full_value, const at::Tensor& local_value,
                         const at::Tensor& full_grad) {
  if (full_value.sizes() == local_value.sizes()) return full_grad;
  int64_t dim = 0;  // the first dim the shard cut
  while (dim + 1 < full_value.dim() && full_value.size(dim) == local_value.size(dim)) ++dim;
  std::vector<int64_t> index;
  for (int64_t i = 0; i < local_value.size(dim); ++i) {
    at::Tensor row = local_value.select(dim, i);
    for (int64_t j = 0; j < full_value.size(dim); ++j) {
      if (at::equal(full_value.select(dim, j), row)) {
        index.push_back(j);
        break;
      }
    }
  }
  EXPECT_EQ(static_cast<int64_t>(index.size()), local_value.size(dim));
  return full_grad.index_select(dim, at::tensor(index, at::kLong));
}

void CompareWithSingleProcess(CausalLM& sharded, CausalLM& full, const at::Tensor& ids,
                              const std::string& what) {
  CausalLMInputs inputs;
  inputs.input_ids = ids;
  inputs.labels = ids;
  CausalLMOutput a = sharded.Forward(inputs);
  CausalLMOutput b = full.Forward(inputs);
  EXPECT_LT(MaxDiff(a.logits, b.logits), 1e-5) << what;
  EXPECT_LT(MaxDiff(a.loss, b.loss), 1e-5) << what;
  a.loss.backward();
  b.loss.backward();
  auto full_params = full.named_parameters();
  int sharded_count = 0;
  for (const auto& item : sharded.named_parameters()) {
    const at::Tensor& local = item.value();
    const at::Tensor& whole = full_params[item.key()];
    if (local.sizes() != whole.sizes()) ++sharded_count;
    EXPECT_EQ(local.requires_grad(), whole.requires_grad()) << what << " " << item.key();
    if (!whole.requires_grad()) continue;  // frozen (a LoRA base): no gradient
    ASSERT_TRUE(local.grad().defined()) << what << " " << item.key();
    at::Tensor want = MatchingSlice(whole.detach(), local.detach(), whole.grad());
    EXPECT_TRUE(local.grad().sizes() == want.sizes() &&
                (local.numel() == 0 || at::allclose(local.grad(), want, 1e-4, 1e-5)))
        << what << " " << item.key() << " max diff " << MaxDiff(local.grad(), want);
  }
  EXPECT_GT(sharded_count, 0) << what;
}

}  // namespace weft::testing

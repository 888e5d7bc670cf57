#include "trainer/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace weft {

AdamW::AdamW(std::vector<Param> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  for (const Param& p : params_) {
    Slot slot;
    const at::Tensor data = p.tensor.detach();
    slot.master = data.scalar_type() == at::kFloat ? data : data.to(at::kFloat);
    slot.exp_avg = at::zeros_like(slot.master);
    slot.exp_avg_sq = at::zeros_like(slot.master);
    slots_.push_back(std::move(slot));
  }
}

void AdamW::Step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double bias2_sqrt = std::sqrt(1 - std::pow(b2, static_cast<double>(steps_)));
  const double step_size = lr / bias1;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& grad_any = params_[i].tensor.grad();
    if (!grad_any.defined()) continue;
    Slot& s = slots_[i];
    at::Tensor grad = grad_any.to(at::kFloat);
    if (params_[i].decay && options_.weight_decay != 0) {
      s.master.mul_(1 - lr * options_.weight_decay);
    }
    s.exp_avg.lerp_(grad, 1 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(grad, grad, 1 - b2);
    at::Tensor denom = (s.exp_avg_sq.sqrt() / bias2_sqrt).add_(options_.eps);
    s.master.addcdiv_(s.exp_avg, denom, -step_size);
    at::Tensor data = params_[i].tensor.detach();
    if (!data.is_same(s.master)) data.copy_(s.master);
  }
}

void AdamW::ZeroGrad() {
  for (Param& p : params_) {
    if (p.tensor.grad().defined()) p.tensor.mutable_grad() = at::Tensor();
  }
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::StateTensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg." + params_[i].name, slots_[i].exp_avg);
    out.emplace_back("exp_avg_sq." + params_[i].name, slots_[i].exp_avg_sq);
    if (params_[i].tensor.scalar_type() != at::kFloat) {
      out.emplace_back("master." + params_[i].name, slots_[i].master);
    }
  }
  return out;
}

absl::Status AdamW::LoadState(const std::map<std::string, at::Tensor>& state, int64_t steps) {
  // Check everything before changing anything.
  std::vector<std::pair<at::Tensor*, at::Tensor>> assign;
  for (size_t i = 0; i < params_.size(); ++i) {
    std::vector<std::pair<std::string, at::Tensor*>> wanted = {
        {"exp_avg." + params_[i].name, &slots_[i].exp_avg},
        {"exp_avg_sq." + params_[i].name, &slots_[i].exp_avg_sq}};
    if (params_[i].tensor.scalar_type() != at::kFloat) {
      wanted.push_back({"master." + params_[i].name, &slots_[i].master});
    }
    for (auto& [name, slot] : wanted) {
      auto it = state.find(name);
      if (it == state.end()) {
        return absl::NotFoundError(absl::StrCat("optimizer state has no tensor '", name, "'"));
      }
      if (it->second.sizes() != slot->sizes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "optimizer state '", name, "' has shape [", absl::StrJoin(it->second.sizes(), ", "),
            "] but the parameter's is [", absl::StrJoin(slot->sizes(), ", "), "]"));
      }
      assign.emplace_back(slot, it->second);
    }
  }
  at::NoGradGuard no_grad;
  for (auto& [slot, value] : assign) slot->copy_(value.to(at::kFloat));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor data = params_[i].tensor.detach();
    if (!data.is_same(slots_[i].master)) data.copy_(slots_[i].master);
  }
  steps_ = steps;
  return absl::OkStatus();
}

double LearningRate(const ScheduleOptions& o, int64_t step) {
  if (step < o.warmup_steps) {
    return o.lr * static_cast<double>(step) /
           static_cast<double>(std::max<int64_t>(1, o.warmup_steps));
  }
  if (o.decay == "constant") return o.lr;
  const double progress = static_cast<double>(step - o.warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, o.total_steps - o.warmup_steps));
  double factor;
  if (o.decay == "linear") {
    factor = std::max(0.0, 1.0 - progress);
  } else {
    factor = std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  return o.lr * (factor * (1 - o.min_lr_ratio) + o.min_lr_ratio);
}

double ClipGradNorm(const std::vector<at::Tensor>& params,
                    const std::vector<GradCopies>& replication, const ProcessGroup* group,
                    double max_norm, const std::vector<const ProcessGroup*>& more_groups) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;  // to scale
  std::vector<at::Tensor> parts;  // to measure: gradients, or their row ranges
  std::vector<double> weights;    // per part: 1 / copies
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& g = params[i].grad();
    if (!g.defined()) continue;
    grads.push_back(g);
    const GradCopies& r = replication[i];
    if (r.rows.empty()) {
      parts.push_back(g);
      weights.push_back(1.0 / static_cast<double>(r.copies));
      continue;
    }
    // Rows [start, end) held by r.copies ranks, the rows between by one.
    int64_t row = 0;
    for (const Range& shared : r.rows) {
      const int64_t start = std::clamp<int64_t>(shared.start, row, g.size(0));
      const int64_t end = std::clamp<int64_t>(shared.end, start, g.size(0));
      if (start > row) {
        parts.push_back(g.narrow(0, row, start - row));
        weights.push_back(1.0);
      }
      if (end > start) {
        parts.push_back(g.narrow(0, start, end - start));
        weights.push_back(1.0 / static_cast<double>(r.copies));
      }
      row = end;
    }
    if (row < g.size(0)) {
      parts.push_back(g.narrow(0, row, g.size(0) - row));
      weights.push_back(1.0);
    }
  }
  at::Tensor sum = at::zeros({1}, at::kDouble);
  if (!parts.empty()) {
    // One fused pass: each gradient's norm (fp32 at least), their squares summed in
    // double (as clip_grad_norm_'s foreach path, without the double copies).
    const at::ScalarType type = parts[0].scalar_type();
    const bool low = type == at::kBFloat16 || type == at::kHalf;
    std::vector<at::Tensor> norms =
        at::_foreach_norm(parts, 2, low ? c10::optional<at::ScalarType>(at::kFloat) : c10::nullopt);
    at::Tensor squares = at::stack(norms).to(at::kCPU, at::kDouble).pow(2);
    sum += (squares * at::tensor(weights, at::kDouble)).sum();
  }
  if (group != nullptr && group->size() > 1) group->AllReduce(sum);
  for (const ProcessGroup* more : more_groups) {
    if (more != nullptr && more->size() > 1) more->AllReduce(sum);
  }
  const double norm = std::sqrt(sum.item<double>());
  if (max_norm > 0 && !grads.empty()) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1) at::_foreach_mul_(grads, coef);
  }
  return norm;
}

}  // namespace weft

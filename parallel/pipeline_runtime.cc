#include "parallel/pipeline_runtime.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <map>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace weft {
namespace {

using Kind = PipelineAction::Kind;

enum Message { kActivation = 0, kGradient = 1 };

// One stage's autograd state for one micro-batch.
struct Slot {
  at::Tensor input;     // leaf requiring grad; undefined on the first stage
  at::Tensor output;    // the activation sent on, or the loss
  at::Tensor grad_out;  // the output's gradient (kept from I for W)
  bool grad_known = false;
  std::function<void()> weight_grads;  // deferred at I, run at W
};

class Executor {
 public:
  Executor(const PipelineSchedule& schedule, const ProcessGroup& pp, const PipelineStageFns& fns,
           const PipelineRunOptions& options)
      : s_(schedule), pp_(pp), fns_(fns), options_(options), me_(pp.rank()) {
    if (s_.shape.ranks != pp.size()) {
      throw std::runtime_error(absl::StrCat("pipeline schedule for ", s_.shape.ranks,
                                            " ranks run on a pp group of ", pp.size()));
    }
  }

  static double Now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  void Run() {
    for (const PipelineAction& a : s_.actions.at(me_)) {
      const double start = options_.timings ? Now() : 0;
      wait_ = 0;
      switch (a.kind) {
        case Kind::kForward:
          Forward(a.stage, a.microbatch);
          break;
        case Kind::kBackward:
          Backward(a.stage, a.microbatch);
          break;
        case Kind::kBackwardInput:
          BackwardInput(a.stage, a.microbatch);
          break;
        case Kind::kBackwardWeight:
          BackwardWeight(a.stage, a.microbatch);
          break;
      }
      if (options_.timings) options_.timings->push_back({a.ToString(), start, Now(), wait_});
    }
    const double start = options_.timings ? Now() : 0;
    for (auto& [what, work] : sends_) {
      if (!work.Wait(options_.timeout)) Fail(absl::StrCat("the delivery of ", what));
    }
    if (options_.timings) options_.timings->push_back({"send", start, Now(), Now() - start});
  }

 private:
  int last() const { return s_.num_stages() - 1; }

  int Tag(Message kind, int stage, int mb) const {
    return (static_cast<int>(kind) * s_.num_stages() + stage) * s_.shape.microbatches + mb;
  }

  std::string Peer(int stage) const {
    const int rank = s_.RankOf(stage);
    return absl::StrCat("stage ", stage, " on pp rank ", rank, " (global rank ",
                        pp_.ranks().at(rank), ")");
  }

  [[noreturn]] void Fail(const std::string& what) const {
    throw std::runtime_error(absl::StrFormat(
        "pipeline: pp rank %d (global rank %d) waited %.0f s for %s; it never came (expected "
        "every pp rank to run the same schedule; the peer is stuck, dead or ran another one)",
        me_, pp_.ranks().at(me_), options_.timeout.count() / 1000.0, what));
  }

  // Receives (or takes from memory) a tensor that `from_stage` sends.
  at::Tensor Receive(Message kind, int stage, int mb, int from_stage, const std::string& what) {
    const auto key = std::make_tuple(kind, stage, mb);
    if (s_.RankOf(from_stage) == me_) {
      auto it = local_.find(key);
      if (it == local_.end()) {
        throw std::runtime_error(absl::StrCat("pipeline: pp rank ", me_, " needs ", what,
                                              " before its own stage ", from_stage,
                                              " produced it (the schedule is out of order)"));
      }
      at::Tensor t = it->second;
      local_.erase(it);
      return t;
    }
    at::Tensor buffer =
        at::empty(fns_.activation_shape, at::TensorOptions().dtype(fns_.dtype).device(fns_.device));
    P2PWork work = pp_.IRecv(buffer, s_.RankOf(from_stage), Tag(kind, stage, mb));
    const double start = options_.timings ? Now() : 0;
    if (!work.Wait(options_.timeout)) {
      Fail(absl::StrCat(what, " from ", Peer(from_stage)));
    }
    if (options_.timings) wait_ += Now() - start;
    return buffer;
  }

  void Deliver(Message kind, int stage, int mb, int to_stage, at::Tensor t,
               const std::string& what) {
    t = t.detach().contiguous();
    if (s_.RankOf(to_stage) == me_) {
      local_[std::make_tuple(kind, stage, mb)] = t;
      return;
    }
    sends_.emplace_back(absl::StrCat(what, " to ", Peer(to_stage)),
                        pp_.ISend(t, s_.RankOf(to_stage), Tag(kind, stage, mb)));
  }

  void Forward(int stage, int mb) {
    Slot& slot = slots_[{stage, mb}];
    if (stage > 0) {
      at::Tensor data =
          Receive(kActivation, stage, mb, stage - 1,
                  absl::StrCat("the activation of micro-batch ", mb, " for stage ", stage));
      slot.input = data.detach().requires_grad_(true);
    }
    slot.output = fns_.forward(stage, mb, slot.input);
    if (stage < last()) {
      Deliver(kActivation, stage + 1, mb, stage + 1, slot.output,
              absl::StrCat("the activation of micro-batch ", mb, " for stage ", stage + 1));
    }
  }

  // The gradient of `stage`'s output (undefined on the last stage: its loss).
  at::Tensor GradOut(int stage, int mb, Slot& slot) {
    if (slot.grad_known) return slot.grad_out;
    if (stage < last()) {
      slot.grad_out = Receive(
          kGradient, stage, mb, stage + 1,
          absl::StrCat("the gradient of micro-batch ", mb, " for stage ", stage, "'s output"));
    }
    slot.grad_known = true;
    return slot.grad_out;
  }

  Slot& Find(int stage, int mb, const char* action) {
    auto it = slots_.find({stage, mb});
    if (it == slots_.end() || !it->second.output.defined()) {
      throw std::runtime_error(absl::StrCat("pipeline: pp rank ", me_, " runs ", action,
                                            " of micro-batch ", mb, " on stage ", stage,
                                            " before its forward (the schedule is out of order)"));
    }
    return it->second;
  }

  void SendInputGrad(int stage, int mb, at::Tensor grad, const Slot& slot) {
    if (stage == 0) return;
    if (!grad.defined()) grad = at::zeros_like(slot.input);
    Deliver(
        kGradient, stage - 1, mb, stage - 1, grad,
        absl::StrCat("the gradient of micro-batch ", mb, " for stage ", stage - 1, "'s output"));
  }

  void Backward(int stage, int mb) {
    Slot& slot = Find(stage, mb, "the backward");
    at::Tensor grad = GradOut(stage, mb, slot);
    torch::autograd::backward({slot.output}, grad.defined() ? torch::autograd::variable_list{grad}
                                                            : torch::autograd::variable_list{});
    SendInputGrad(stage, mb, stage > 0 ? slot.input.grad() : at::Tensor(), slot);
    slots_.erase({stage, mb});
  }

  void BackwardInput(int stage, int mb) {
    Slot& slot = Find(stage, mb, "the input gradient");
    at::Tensor grad = GradOut(stage, mb, slot);
    if (fns_.defer_weight_grads) {
      // The whole backward now, the weight gradients' products left for W.
      slot.weight_grads = fns_.defer_weight_grads([&] {
        torch::autograd::backward({slot.output}, grad.defined()
                                                     ? torch::autograd::variable_list{grad}
                                                     : torch::autograd::variable_list{});
      });
      SendInputGrad(stage, mb, stage > 0 ? slot.input.grad() : at::Tensor(), slot);
      return;
    }
    if (stage == 0) return;  // no input gradient; W runs the whole backward
    torch::autograd::variable_list grads = torch::autograd::grad(
        {slot.output}, {slot.input},
        grad.defined() ? torch::autograd::variable_list{grad} : torch::autograd::variable_list{},
        /*retain_graph=*/true, /*create_graph=*/false, /*allow_unused=*/true);
    SendInputGrad(stage, mb, grads.at(0), slot);
  }

  void BackwardWeight(int stage, int mb) {
    Slot& slot = Find(stage, mb, "the weight gradient");
    if (slot.weight_grads) {
      slot.weight_grads();
      slots_.erase({stage, mb});
      return;
    }
    at::Tensor grad = GradOut(stage, mb, slot);
    std::vector<at::Tensor> params;
    for (const at::Tensor& p : fns_.parameters(stage)) {
      if (p.requires_grad()) params.push_back(p);
    }
    if (!params.empty()) {
      torch::autograd::backward(
          {slot.output},
          grad.defined() ? torch::autograd::variable_list{grad} : torch::autograd::variable_list{},
          /*retain_graph=*/false, /*create_graph=*/false, params);
    }
    slots_.erase({stage, mb});
  }

  const PipelineSchedule& s_;
  const ProcessGroup& pp_;
  const PipelineStageFns& fns_;
  const PipelineRunOptions& options_;
  const int me_;
  std::map<std::pair<int, int>, Slot> slots_;                  // by (stage, micro-batch)
  std::map<std::tuple<Message, int, int>, at::Tensor> local_;  // handed over in memory
  std::vector<std::pair<std::string, P2PWork>> sends_;
  double wait_ = 0;  // the current action's time waiting for receives
};

}  // namespace

void RunPipelineStep(const PipelineSchedule& schedule, const ProcessGroup& pp,
                     const PipelineStageFns& fns, const PipelineRunOptions& options) {
  Executor(schedule, pp, fns, options).Run();
}

}  // namespace weft

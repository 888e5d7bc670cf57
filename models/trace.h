// The model debugger: every module call, in order, nested, with the shapes,
// dtypes and summary statistics (mean, std, min, max, first values) of its
// inputs and output, as JSON that diffs cleanly between two runs (TP=1 vs
// TP=2, eager vs sdpa, fp32 vs bf16).
//
//   Tracer tracer(*model);            // installs hooks on every module
//   model->Forward(inputs);
//   std::string json = tracer.Json(); // {"calls": [{"module": "model", ...}]}
//   tracer.Detach();                  // or let it go out of scope
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "models/module.h"

namespace weft {

class Tracer {
 public:
  explicit Tracer(torch::nn::Module& root);
  ~Tracer();
  /// Removes the hooks (clears every hook of the traced modules).
  void Detach();
  /// The calls recorded so far.
  std::string Json() const;

  /// One tensor's summary, as the trace prints it.
  static std::string Summary(const at::Tensor& t);

 private:
  struct Call {
    std::string module;
    std::string type;
    std::vector<std::string> inputs;
    std::string output;
    std::vector<std::unique_ptr<Call>> calls;
  };
  static void Write(const Call& call, int indent, std::string& out);

  std::vector<Module*> modules_;
  std::vector<std::unique_ptr<Call>> roots_;
  std::vector<Call*> stack_;
};

}  // namespace weft

// `weft inspect PATH`: what a safetensors file or checkpoint directory holds.
//
//   weft inspect /models/llama
//   name                       dtype  shape       bytes   file
//   lm_head.weight             F32    [256, 64]   65536   model.safetensors
//   ...
//   21 tensors, 427264 bytes (417.3 KiB) in 1 file
//
// On a bad file: the one-line error on stderr and exit code 2.
#pragma once

#include <ostream>
#include <string>

namespace weft {

/// Prints the table to `out`; returns the exit code (0, or 2 with the error
/// on `err`). Never throws.
int RunInspect(const std::string& path, std::ostream& out, std::ostream& err);

}  // namespace weft

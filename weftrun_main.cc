// weftrun: torchrun's contract for native programs. See launcher/weftrun.h.
#include <iostream>

#include "launcher/weftrun.h"

int main(int argc, char** argv) {
  auto options = weft::ParseWeftrunArgs(argc, argv);
  if (!options.ok()) {
    bool help = options.status().code() == absl::StatusCode::kCancelled;
    (help ? std::cout : std::cerr) << options.status().message() << std::endl;
    return help ? 0 : 2;
  }
  return weft::RunWeftrun(*options);
}

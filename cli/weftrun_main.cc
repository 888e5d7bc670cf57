// weftrun: torchrun's contract for native programs. See launcher/weftrun.h.
#include <iostream>

#include "launcher/weftrun.h"

int main(int argc, char** argv) {
  auto args = weft::ParseWeftrunArgs(argc, argv);
  if (!args.ok()) {
    std::cerr << args.status().message() << std::endl;
    return 2;
  }
  if (!args->help.empty()) {
    std::cout << args->help << std::endl;
    return 0;
  }
  return weft::RunWeftrun(args->options);
}

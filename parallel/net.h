// Small socket helpers shared by the runtime and the launcher (no LibTorch).
#pragma once

namespace weft {

/// A TCP port on this host that was free a moment ago (0 on failure).
int PickFreePort();

}  // namespace weft

// Per-layer activation checkpointing, as torch.utils.checkpoint (the
// reentrant variant) applied to every decoder layer: in forward a layer keeps
// only its inputs; in backward it runs again with gradients on and
// backpropagates through the recomputed activations. Activation memory drops
// from every layer's intermediates to one layer's, for one more forward per
// step. The layers' hooks (tensor-parallel collectives) run again in the
// recomputation on every rank alike, so it composes with the plan engine.
//
//   EnableActivationCheckpointing(*model);   // before training
#pragma once

#include "models/causal_lm.h"

namespace weft {

/// Wraps every decoder layer (`model.layers.N`) of `model`; returns how many.
int EnableActivationCheckpointing(CausalLM& model);

}  // namespace weft

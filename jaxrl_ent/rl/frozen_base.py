"""The RL update of a LoRA policy, whose frozen base rides in the state.

`update.make_update(graphdef, rest, spec)` closes over `rest`, the model's
non-trainable state. For a full-parameter policy that is empty; for a LoRA
policy it is the whole frozen base, and a jitted closure would embed those
weights in the program as constants (and the AOT check could not pass
shapes). `make_update` here builds the same update inside the trace from
`state.frozen` (`rl.state.TrainState.frozen`), so the base is an ordinary
(donated, aliased, unchanged) argument of the one jitted step.
"""

from jaxrl_ent.rl import update as update_lib


def make_update(graphdef, rest, spec):
  """`update.make_update`, reading the frozen base from `state.frozen` when
  the state carries one (else exactly `update.make_update(graphdef, rest,
  spec)`)."""
  plain = update_lib.make_update(graphdef, rest, spec)

  def update(state, batch, key, ref_params=None, *, measure: bool = False):
    if state.frozen is None:
      return plain(state, batch, key, ref_params, measure=measure)
    inner = update_lib.make_update(graphdef, state.frozen, spec)
    return inner(state, batch, key, ref_params, measure=measure)

  return update

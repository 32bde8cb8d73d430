"""Tests for train/checkpoint.py: round trips, keep-N, integrity fallback."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

from jaxrl_ent import models
from jaxrl_ent.entropy import controllers
from jaxrl_ent.train import checkpoint
from jaxrl_ent.rl import state as state_lib

_LOGGER = "jaxrl_ent.train.checkpoint"


def _tiny_state():
  cfg = models.ModelConfig("qwen2", 61, 16, 32, 2, 4, 2, 4, qkv_bias=True)
  _, params, _ = state_lib.split_model(models.init_model(cfg))
  controller = controllers.attributed_chain(("kl_cov", controllers.kl_cov()))
  return jax.jit(lambda p: state_lib.create(p, optax.adamw(1e-3),
                                            controller))(params)


def _files(path: pathlib.Path):
  return sorted(p for p in path.rglob("*") if p.is_file())


def _largest_state_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The biggest array data file (OCDBT keeps them in `ocdbt.process_*/d/`)."""
  data = [p for p in _files(step_dir / "state") if p.parent.name == "d"]
  return max(data, key=lambda p: p.stat().st_size)


# Each corruption damages step 2 in one way; restore must fall back to step 1.
def _garble(step_dir):
  # The chunks are compressed: depending on where the bytes land, tensorstore
  # fails to read them, or orbax silently restores wrong values, which only
  # the fingerprints catch.
  path = _largest_state_file(step_dir)
  data = bytearray(path.read_bytes())
  mid = len(data) // 2
  data[mid:mid + 32] = bytes(b ^ 0x5A for b in data[mid:mid + 32])
  path.write_bytes(bytes(data))


def _swap_array_store(step_dir):
  # A well-formed array store holding other values (step 1's): orbax
  # restores it without complaint; the fingerprints do not match.
  shutil.rmtree(step_dir / "state")
  shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")


def _truncate(step_dir):
  path = _largest_state_file(step_dir)
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _empty(step_dir):
  _largest_state_file(step_dir).write_bytes(b"")


def _delete_contents(step_dir):
  for p in sorted(step_dir.rglob("*"), key=lambda p: -len(p.parts)):
    p.rmdir() if p.is_dir() else p.unlink()


def _delete_integrity(step_dir):
  for p in _files(step_dir / "integrity"):
    p.unlink()
  (step_dir / "integrity").rmdir()


def _edit_integrity(step_dir):
  # Valid JSON with one fingerprint changed: the record's own hash catches it.
  path = step_dir / "integrity" / "metadata"
  record = json.loads(path.read_text())
  record["state"][1]["fp"] = "0" * 16
  path.write_text(json.dumps(record))


def _edit_meta(step_dir):
  path = step_dir / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["seed"] = 7
  path.write_text(json.dumps(meta))


def _garble_data(step_dir):
  (step_dir / "data" / "metadata").write_text('{"next_index": 3')


class CheckpointTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.state = _tiny_state()

  def _state(self, k: int):
    """A state whose every parameter and step differ from `_state(j != k)`."""
    return self.state.replace(
        step=jnp.asarray(k, jnp.int32),
        params=jax.tree.map(lambda x: x + k, self.state.params))

  def _ckpt(self, **kwargs):
    ckpt = checkpoint.Checkpointer(self.create_tempdir().full_path, **kwargs)
    self.addCleanup(ckpt.close)
    return ckpt

  def _save_two(self, ckpt):
    for k in (1, 2):
      self.assertTrue(ckpt.save(k, self._state(k), data_state={"next": k},
                                meta={"seed": 0}))
    ckpt.wait()

  @parameterized.parameters(True, False)
  def test_round_trip(self, async_save):
    ckpt = self._ckpt(async_save=async_save)
    data = {"next_index": 3, "nested": {"a": [1, 2]}}
    self.assertTrue(ckpt.save(5, self._state(5), data_state=data,
                              meta={"config": {"lr": 1e-3, "mesh": (1, 2)}},
                              metrics={"reward": np.float32(0.5)}))
    abstract = checkpoint.abstract_state(self.state)
    state, data_state, meta, step = ckpt.restore(abstract)
    chex.assert_trees_all_equal(state, self._state(5))
    self.assertIsInstance(state, state_lib.TrainState)
    self.assertEqual(step, 5)
    self.assertEqual(data_state, data)
    self.assertEqual(meta, {"config": {"lr": 1e-3, "mesh": [1, 2]},
                            "metrics": {"reward": 0.5}})
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
      self.assertEqual(got.sharding, want.sharding)

  def test_restore_into_eval_shape_abstract(self):
    ckpt = self._ckpt()
    ckpt.save(1, self._state(1))
    shapes = jax.eval_shape(lambda: self.state)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state, data_state, _, _ = ckpt.restore(
        checkpoint.abstract_like(shapes, device))
    chex.assert_trees_all_equal(state, self._state(1))
    self.assertIsNone(data_state)
    with self.assertRaisesRegex(ValueError, "shardings for"):
      checkpoint.abstract_like(shapes, [device])

  def test_data_iterator_round_trip(self):
    dataset = grain.MapDataset.range(20).shuffle(seed=0).batch(2)
    it = iter(dataset.to_iter_dataset())
    for _ in range(3):
      next(it)
    ckpt = self._ckpt()
    ckpt.save(3, self._state(3), data_state=it.get_state())
    expected = [next(it) for _ in range(3)]
    _, data_state, _, _ = ckpt.restore(checkpoint.abstract_state(self.state))
    resumed = iter(dataset.to_iter_dataset())
    resumed.set_state(data_state)
    chex.assert_trees_all_equal([next(resumed) for _ in range(3)], expected)

  def test_keep_n(self):
    ckpt = self._ckpt(max_to_keep=2)
    for k in range(1, 5):
      ckpt.save(k, self._state(k))
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [3, 4])
    self.assertEqual(ckpt.latest_step(), 4)
    _, _, _, step = ckpt.restore(checkpoint.abstract_state(self.state), 3)
    self.assertEqual(step, 3)

  def test_save_interval_and_force(self):
    ckpt = self._ckpt(save_interval_steps=2)
    saved = [ckpt.save(k, self._state(k)) for k in range(4)]
    self.assertEqual(saved, [True, False, True, False])
    self.assertTrue(ckpt.save(3, self._state(3), force=True))
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [0, 2, 3])

  @parameterized.parameters(("max", [1, 3]), ("min", [2, 3]))
  def test_keep_best_metric(self, mode, kept):
    ckpt = self._ckpt(max_to_keep=1, keep_best_metric="reward",
                      best_mode=mode)
    for k, reward in ((1, 5.0), (2, 1.0), (3, 2.0)):
      ckpt.save(k, self._state(k), metrics={"reward": reward})
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), kept)

  def test_async_save_then_wait(self):
    ckpt = self._ckpt(async_save=True)
    self.assertTrue(ckpt.save(1, self._state(1)))
    # The caller may move on at once: the arrays were copied to host.
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [1])
    self.assertEqual(sorted(p.name for p in ckpt.step_dir(1).iterdir()
                            if p.is_dir()),
                     ["data", "integrity", "meta", "state"])

  @parameterized.named_parameters(
      ("garbled_array_bytes", _garble,
       "do not match their checksums|reading array"),
      ("swapped_array_store", _swap_array_store,
       "do not match their checksums"),
      ("truncated_array_file", _truncate, "reading array"),
      ("emptied_array_file", _empty, "reading array"),
      ("deleted_dir_contents", _delete_contents, '"integrity" was not found'),
      ("missing_checksums", _delete_integrity, '"integrity" was not found'),
      ("edited_checksums", _edit_integrity, "record's own checksum"),
      ("edited_meta", _edit_meta, "meta item's checksum"),
      ("garbled_data_json", _garble_data, "JSONDecodeError"),
  )
  def test_damaged_latest_falls_back(self, damage, reason):
    ckpt = self._ckpt()
    self._save_two(ckpt)
    damage(pathlib.Path(ckpt.step_dir(2)))
    with self.assertLogs(_LOGGER, "WARNING") as logs:
      state, data_state, meta, step = ckpt.restore(
          checkpoint.abstract_state(self.state))
    self.assertEqual(step, 1)
    chex.assert_trees_all_equal(state, self._state(1))
    self.assertEqual((data_state, meta), ({"next": 1}, {"seed": 0}))
    text = "\n".join(logs.output)
    self.assertIn(f"step 2 at {ckpt.step_dir(2)} is unusable", text)
    self.assertRegex(text, reason)
    # The bad step is moved aside, not deleted, and the run can redo it.
    self.assertEqual(ckpt.all_steps(), [1])
    self.assertLen(list((ckpt.directory / "quarantine").glob("2-*")), 1)
    self.assertTrue(ckpt.save(2, self._state(2)))
    _, _, _, step = ckpt.restore(checkpoint.abstract_state(self.state))
    self.assertEqual(step, 2)

  def test_damaged_explicit_step_falls_back_to_older(self):
    ckpt = self._ckpt()
    self._save_two(ckpt)
    ckpt.save(3, self._state(3))
    ckpt.wait()
    _garble(pathlib.Path(ckpt.step_dir(2)))
    with self.assertLogs(_LOGGER, "WARNING"):
      _, _, _, step = ckpt.restore(checkpoint.abstract_state(self.state), 2)
    self.assertEqual(step, 1)
    # The newer good step 3 is untouched.
    self.assertEqual(ckpt.all_steps(), [1, 3])
    _, _, _, step = ckpt.restore(checkpoint.abstract_state(self.state))
    self.assertEqual(step, 3)

  def test_no_good_checkpoint_is_a_clear_error(self):
    ckpt = self._ckpt()
    ckpt.save(1, self._state(1))
    ckpt.wait()
    _garble(pathlib.Path(ckpt.step_dir(1)))
    with self.assertLogs(_LOGGER, "WARNING"):
      with self.assertRaisesRegex(checkpoint.CheckpointIntegrityError,
                                  "no usable checkpoint.*step 1"):
        ckpt.restore(checkpoint.abstract_state(self.state))
    # Nothing is quarantined when there is nothing better to restore.
    self.assertEqual(ckpt.all_steps(), [1])

  def test_missing_checkpoint_errors(self):
    ckpt = self._ckpt()
    with self.assertRaisesRegex(FileNotFoundError, "no checkpoint in"):
      ckpt.restore(checkpoint.abstract_state(self.state))
    ckpt.save(1, self._state(1))
    with self.assertRaisesRegex(FileNotFoundError, "no step 7"):
      ckpt.restore(checkpoint.abstract_state(self.state), step=7)

  def test_mismatched_abstract_state_is_a_caller_error(self):
    ckpt = self._ckpt()
    self._save_two(ckpt)
    other = self.state.replace(opt_state=optax.sgd(0.1).init(
        self.state.params))
    with self.assertRaisesRegex(ValueError, "does not match step 2"):
      ckpt.restore(checkpoint.abstract_state(other))
    self.assertEqual(ckpt.all_steps(), [1, 2])

  def test_non_finite_state_is_refused(self):
    bad = self.state.replace(params=jax.tree_util.tree_map_with_path(
        lambda path, x: (x.at[3, 4].set(jnp.nan)
                         if "embed" in jax.tree_util.keystr(path) else x),
        self.state.params))
    ckpt = self._ckpt()
    with self.assertLogs(_LOGGER, "WARNING") as logs:
      self.assertFalse(ckpt.save(1, bad, force=True))
    self.assertIn("not finite", logs.output[0])
    self.assertIn("embed", logs.output[0])
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [])

  def test_fingerprint_sees_one_bit_and_ignores_nothing(self):
    tree = {"f32": jnp.arange(6.0).reshape(2, 3),
            "bf16": jnp.arange(5, dtype=jnp.bfloat16),
            "i8": jnp.arange(4, dtype=jnp.int8), "flag": jnp.array([True]),
            "scalar": jnp.float32(0.0)}
    base = checkpoint.state_fingerprint(tree)
    flipped = dict(tree, f32=jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(tree["f32"], jnp.uint32).at[1, 2].add(1),
        jnp.float32))
    changed = checkpoint.state_fingerprint(flipped)
    self.assertEqual([k for k in base if base[k] != changed[k]], ["['f32']"])
    # -0.0 == 0.0 as values, but the bits differ and so does the fingerprint.
    negzero = checkpoint.state_fingerprint(dict(tree, scalar=jnp.float32(-0.)))
    self.assertNotEqual(negzero["['scalar']"], base["['scalar']"])
    ckpt = self._ckpt()
    ckpt.save(1, tree)
    restored, _, _, _ = ckpt.restore(checkpoint.abstract_state(tree))
    chex.assert_trees_all_equal(restored, tree)

  def test_resolve_restore_order(self):
    own = pathlib.Path(self.create_tempdir().full_path) / "ckpt"
    other = self._ckpt()
    self._save_two(other)
    self.assertIsNone(checkpoint.resolve_restore(own))
    self.assertEqual(checkpoint.resolve_restore(own, other.directory),
                     (other.directory, 2))
    self.assertEqual(
        checkpoint.resolve_restore(own, other.step_dir(1)),
        (other.directory, 1))
    with self.assertRaisesRegex(FileNotFoundError, "no finalized checkpoint"):
      checkpoint.resolve_restore(own, own.parent / "nowhere")
    mine = checkpoint.Checkpointer(own)
    self.addCleanup(mine.close)
    mine.save(9, self._state(9))
    mine.wait()
    self.assertEqual(checkpoint.resolve_restore(own, other.directory),
                     (own, 9))
    # Resuming from another run's directory reads it without touching it.
    source = checkpoint.Checkpointer(other.directory, read_only=True)
    self.addCleanup(source.close)
    _, data_state, _, step = source.restore(
        checkpoint.abstract_state(self.state), step=1)
    self.assertEqual((data_state, step), ({"next": 1}, 1))
    self.assertFalse(source.save(3, self._state(3), force=True))


_CHILD = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp
    from jaxrl_ent.train import checkpoint
    ckpt = checkpoint.Checkpointer(sys.argv[1], async_save=True)
    n = int(sys.argv[2])
    ckpt.save(1, {"w": jnp.full((n,), 1.0)})
    ckpt.wait()
    ckpt.save(2, {"w": jnp.full((n,), 2.0)})
    print("SAVING", flush=True)  # the background write is now running
    time.sleep(60)
""")


class KillDuringSaveTest(absltest.TestCase):

  def test_sigkill_mid_async_save_leaves_a_restorable_directory(self):
    directory = pathlib.Path(self.create_tempdir().full_path) / "ckpt"
    n = 16 * 1024 * 1024  # 64 MiB: its write takes far longer than the kill.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(directory), str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
      line = child.stdout.readline()
      child.send_signal(signal.SIGKILL)
    finally:
      child.wait(timeout=30)
    self.assertEqual(line.strip(), "SAVING")
    self.assertEqual(child.returncode, -signal.SIGKILL)
    self.assertTrue(list(directory.glob("2.orbax-checkpoint-tmp*")))
    with self.assertLogs(_LOGGER, "WARNING") as logs:
      ckpt = checkpoint.Checkpointer(directory)
    self.addCleanup(ckpt.close)
    self.assertIn("unfinished save", logs.output[0])
    self.assertEqual(ckpt.all_steps(), [1])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"w": jax.ShapeDtypeStruct((n,), jnp.float32, sharding=device)}
    state, _, _, step = ckpt.restore(abstract)
    self.assertEqual(step, 1)
    np.testing.assert_array_equal(np.asarray(state["w"][::4096]), 1.0)
    # The next save of step 2 works (orbax removed the leftover tmp dir).
    self.assertTrue(ckpt.save(2, {"w": jnp.full((n,), 2.0)}))
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [1, 2])


if __name__ == "__main__":
  absltest.main()

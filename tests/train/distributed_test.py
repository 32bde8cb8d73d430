"""Single-process tests of train/distributed.py and the multi-host helpers.

The two-process run itself is tests/multihost/two_process_test.py.
"""

import os
from unittest import mock

from absl.testing import absltest
import jax
import ml_collections
import numpy as np

from configs import grpo_tiny
from jaxrl_ent import sharding
from jaxrl_ent.train import checkpoint
from jaxrl_ent.train import distributed
from jaxrl_ent.train import validate

_ENV = (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID)


def _config(**fields):
  c = ml_collections.ConfigDict()
  c.distributed = ml_collections.ConfigDict(dict(
      initialize="auto", coordinator_address="", num_processes=0,
      process_id=-1))
  c.distributed.update(fields)
  return c


def _clean_env(**env):
  base = {k: v for k, v in os.environ.items() if k not in _ENV}
  return mock.patch.dict(os.environ, dict(base, **env), clear=True)


class InitializeKwargsTest(absltest.TestCase):

  def test_single_process_by_default(self):
    with _clean_env():
      self.assertIsNone(distributed.initialize_kwargs(_config()))
      self.assertIsNone(distributed.initialize_kwargs(None))
      # A config without the block (older configs) is single-process too.
      self.assertIsNone(distributed.initialize_kwargs(
          ml_collections.ConfigDict()))

  def test_from_config(self):
    with _clean_env():
      kwargs = distributed.initialize_kwargs(_config(
          coordinator_address="10.0.0.1:1234", num_processes=4,
          process_id=2))
    self.assertEqual(kwargs, dict(coordinator_address="10.0.0.1:1234",
                                  num_processes=4, process_id=2))

  def test_from_environment_and_config_wins(self):
    env = {distributed.ENV_COORDINATOR: "h0:99",
           distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_PROCESS_ID: "1"}
    with _clean_env(**env):
      self.assertEqual(distributed.initialize_kwargs(_config()),
                       dict(coordinator_address="h0:99", num_processes=2,
                            process_id=1))
      self.assertEqual(distributed.initialize_kwargs(_config(process_id=0)),
                       dict(coordinator_address="h0:99", num_processes=2,
                            process_id=0))
      self.assertIsNone(distributed.initialize_kwargs(
          _config(initialize="never")))

  def test_always_lets_jax_detect_the_rest(self):
    with _clean_env():
      self.assertEqual(distributed.initialize_kwargs(
          _config(initialize="always")), {})

  def test_errors(self):
    with _clean_env():
      with self.assertRaisesRegex(ValueError, "allowed"):
        distributed.initialize_kwargs(_config(initialize="sometimes"))
      with self.assertRaisesRegex(ValueError, "without a coordinator"):
        distributed.initialize_kwargs(_config(num_processes=2))
    with _clean_env(**{distributed.ENV_PROCESS_ID: "one"}):
      with self.assertRaisesRegex(ValueError, "JAX_PROCESS_ID"):
        distributed.initialize_kwargs(_config(coordinator_address="h:1"))

  def test_single_process_run_does_not_initialize(self):
    with _clean_env():
      self.assertFalse(distributed.maybe_initialize(_config()))
    self.assertEqual(jax.process_count(), 1)

  def test_validate_checks_the_block(self):
    config = grpo_tiny.get_config("runlocal")
    validate.validate_config(config)
    config.distributed.initialize = "maybe"
    config.distributed.num_processes = -3
    with self.assertRaises(validate.ConfigError) as e:
      validate.validate_config(config)
    fields = [f for f, _ in e.exception.problems]
    self.assertIn("distributed.initialize", fields)
    self.assertIn("distributed.num_processes", fields)


_CLUSTERS = {
    "tpu_gke": {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3", "TPU_WORKER_ID": "1"},
    "tpu_addresses": {"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"},
    "multislice": {"MEGASCALE_NUM_SLICES": "2"},
    "slurm": {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]",
              "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
    "ompi": {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:3",
             "OMPI_COMM_WORLD_SIZE": "4"},
}
_SINGLE = {
    "one_tpu_host": {"TPU_WORKER_HOSTNAMES": "localhost"},
    "one_slurm_task": dict(_CLUSTERS["slurm"], SLURM_NTASKS="1"),
    "one_slice": {"MEGASCALE_NUM_SLICES": "1"},
}
_CLUSTER_VARS = {k for env in (*_CLUSTERS.values(), *_SINGLE.values())
                 for k in env}


def _cluster_env(**env):
  base = {k: v for k, v in os.environ.items()
          if k not in _ENV and k not in _CLUSTER_VARS}
  # No TPU metadata query on this machine.
  return mock.patch.dict(os.environ, dict(base, TPU_SKIP_MDS_QUERY="1",
                                          **env), clear=True)


class ClusterDetectionTest(absltest.TestCase):

  def test_auto_joins_a_detected_multi_host_environment(self):
    for name, env in _CLUSTERS.items():
      with self.subTest(name), _cluster_env(**env):
        self.assertIsNotNone(distributed.detect_cluster())
        # JAX's own cluster detection finds the coordinator and ids.
        self.assertEqual(distributed.initialize_kwargs(_config()), {})
        self.assertEqual(distributed.initialize_kwargs(
            _config(initialize="force_single")), None)
        with self.assertRaisesRegex(ValueError, "force_single"):
          distributed.initialize_kwargs(_config(initialize="never"))

  def test_single_host_environments_stay_single(self):
    for name, env in {"none": {}, **_SINGLE}.items():
      with self.subTest(name), _cluster_env(**env):
        self.assertIsNone(distributed.detect_cluster())
        self.assertIsNone(distributed.initialize_kwargs(_config()))
        self.assertIsNone(distributed.initialize_kwargs(
            _config(initialize="never")))

  def test_force_single_is_a_valid_mode(self):
    config = grpo_tiny.get_config("runlocal")
    config.distributed.initialize = "force_single"
    validate.validate_config(config)

  def test_every_launcher_joins_the_cluster(self):
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    for job in ("train", "sft", "evaluate", "export"):
      with open(os.path.join(root, "launch", f"{job}.py")) as f:
        self.assertIn("distributed.maybe_initialize(", f.read(), job)


class OneProcessHelpersTest(absltest.TestCase):

  def test_gathers_are_identities(self):
    self.assertEqual(distributed.allgather_object({"a": 1}), [{"a": 1}])
    self.assertEqual(distributed.gather_blocks("x", (0, 1)), ["x"])
    self.assertTrue(distributed.any_process(True))
    self.assertFalse(distributed.any_process(False))

  def test_row_block_and_global_batch(self):
    mesh = sharding.make_mesh({"fsdp": -1})
    self.assertEqual(sharding.process_row_block(mesh, 4), (0, 1))
    local = np.arange(8, dtype=np.int32).reshape(4, 2)
    arr = sharding.global_batch(mesh, local, (0, 1))
    self.assertEqual(arr.shape, (4, 2))
    np.testing.assert_array_equal(sharding.to_host(arr), local)

  def test_iterator_states_of_several_processes(self):
    # pylint: disable=protected-access
    same = [{"next_index": 3}] * 2
    # Equal states (every process walks the same global batches) fit any
    # number of processes, e.g. a two-host run resumed on one.
    self.assertEqual(checkpoint._own_data_state(same, 3), {"next_index": 3})
    with self.assertRaisesRegex(Exception, "restore it with 2 processes"):
      checkpoint._own_data_state([{"next_index": 3}, {"next_index": 4}], 3)


if __name__ == "__main__":
  absltest.main()

"""Multi-host runs through JAX's own distributed runtime (DESIGN.md §6).

One process per host, all running the same program. `maybe_initialize`
connects them (`jax.distributed.initialize`) before anything asks JAX how
many devices or processes there are; after that `jax.devices()` lists every
device of every host, the mesh spans them all, and arrays are global.

Who does what in `rl_loop.train_and_evaluate` with P processes:

  * data: each process reads only its block of every global prompt batch
    (`sharding.process_row_block`), and the global batch is assembled with
    `jax.make_array_from_process_local_data`;
  * rewards: each process scores the completions of its own prompts; the
    per-row results are then gathered (`gather_blocks`), so every process
    holds the same global reward vector, metrics and evaluation numbers;
  * metrics and `summary.json`: process 0 writes (`MetricWriter`);
  * checkpoints: every process calls the checkpointer (orbax writes each
    process's array shards; each process's data-iterator state is gathered
    into the `data` item).

Configuration (`config.distributed`, optional; environment fallbacks):

  initialize:  "auto" (default): initialize when a coordinator is named
                (config or `JAX_COORDINATOR_ADDRESS`), or when
                `detect_cluster` finds a multi-host environment of the kind
                JAX's own cluster detection reads (then JAX detects the
                rest), else run as a single process; "always": call
                `jax.distributed.initialize` with whatever is given, JAX
                detecting the rest; "never": single process, and an error in
                a detected multi-host environment (every host would run its
                own independent job into the same workdir);
                "force_single": single process even there.
  coordinator_address:  "host:port" of process 0 (`JAX_COORDINATOR_ADDRESS`).
  num_processes:  number of processes, 0 = unset (`JAX_NUM_PROCESSES`).
  process_id:  this process, -1 = unset (`JAX_PROCESS_ID`).
  local_device_ids:  optional list of this process's device ids.
"""

import logging
import os
import pickle

import jax
import numpy as np

_LOG = logging.getLogger(__name__)

MODES = ("auto", "always", "never", "force_single")
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _setting(config, name, default):
  block = config.get("distributed") if config is not None else None
  if block is None:
    return default
  value = block.get(name, default)
  return default if value is None else value


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "")
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an "
                     "integer.") from None


def _count(value: str | None) -> int:
  try:
    return int(value or 0)
  except ValueError:
    return 0


def _gce_tpu_workers() -> int:
  """Workers of this Cloud TPU VM slice from the metadata server (what
  JAX's `GceTpuCluster` reads), 0 when not on a TPU VM or unknown."""
  if os.environ.get("TPU_SKIP_MDS_QUERY") is not None:
    return 0
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms and "tpu" not in platforms.split(","):
    return 0
  # pylint: disable=g-import-not-at-top,protected-access
  try:
    from jax._src import hardware_utils
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    if not chips:
      return 0
    from jax._src.clusters import cloud_tpu_cluster
    return len(cloud_tpu_cluster.GceTpuCluster._get_worker_list_in_slice())
  except Exception:  # pylint: disable=broad-except
    return 0  # No metadata server, or JAX moved its internals.


def detect_cluster() -> str | None:
  """A description of the multi-host environment this process runs in, or
  None. Reads what JAX's cluster detection (`jax._src.clusters`) reads:

    * TPU slices on GKE: `TPU_WORKER_HOSTNAMES` / `TPU_PROCESS_ADDRESSES`
      listing more than one host; multislice: `MEGASCALE_NUM_SLICES` > 1;
    * Cloud TPU VM slices: the metadata server's worker list (only queried
      on a machine with TPU chips);
    * SLURM: `SLURM_JOB_ID`, `SLURM_STEP_NODELIST`, `SLURM_PROCID`,
      `SLURM_LOCALID` and `SLURM_NTASKS` > 1;
    * Open MPI: `OMPI_MCA_orte_hnp_uri` and `OMPI_COMM_WORLD_SIZE` > 1.
  """
  env = os.environ
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  if hosts and len([h for h in hosts.split(",") if h.strip()]) > 1:
    name = ("TPU_PROCESS_ADDRESSES" if env.get("TPU_PROCESS_ADDRESSES")
            else "TPU_WORKER_HOSTNAMES")
    return f"a TPU slice of {len(hosts.split(','))} hosts ({name})"
  if _count(env.get("MEGASCALE_NUM_SLICES")) > 1:
    return (f"a multislice TPU job (MEGASCALE_NUM_SLICES="
            f"{env['MEGASCALE_NUM_SLICES']})")
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
           "SLURM_PROCID", "SLURM_LOCALID")
  if all(v in env for v in slurm) and _count(env["SLURM_NTASKS"]) > 1:
    return f"a SLURM job of {env['SLURM_NTASKS']} tasks (SLURM_NTASKS)"
  if ("OMPI_MCA_orte_hnp_uri" in env and
      _count(env.get("OMPI_COMM_WORLD_SIZE")) > 1):
    return (f"an Open MPI job of {env['OMPI_COMM_WORLD_SIZE']} ranks "
            "(OMPI_COMM_WORLD_SIZE)")
  workers = _gce_tpu_workers()
  if workers > 1:
    return f"a Cloud TPU VM slice of {workers} workers (TPU metadata)"
  return None


def initialize_kwargs(config=None) -> dict | None:
  """The `jax.distributed.initialize` arguments `config` and the
  environment ask for, or None for a single-process run.

  Raises:
    ValueError: an unknown `distributed.initialize` mode, a bad value, or
      "never" in a multi-host environment (`detect_cluster`).
  """
  mode = _setting(config, "initialize", "auto")
  if mode not in MODES:
    raise ValueError(f"distributed.initialize: got {mode!r}; allowed: "
                     f"{MODES}.")
  if mode == "force_single":
    return None
  if mode == "never":
    cluster = detect_cluster()
    if cluster:
      raise ValueError(
          f"distributed.initialize='never' in {cluster}: every host would "
          "run its own independent job into the same workdir. Use 'auto' "
          "(or 'always') to run one job across the hosts, or "
          "'force_single' if independent single-host jobs are meant.")
    return None
  address = (_setting(config, "coordinator_address", "") or
             os.environ.get(ENV_COORDINATOR, ""))
  num = _setting(config, "num_processes", 0) or _env_int(ENV_NUM_PROCESSES)
  pid = _setting(config, "process_id", -1)
  if pid < 0:
    pid = _env_int(ENV_PROCESS_ID)
  devices = _setting(config, "local_device_ids", None)
  kwargs = {}
  if address:
    kwargs["coordinator_address"] = address
  if num:
    kwargs["num_processes"] = int(num)
  if pid is not None and pid >= 0:
    kwargs["process_id"] = int(pid)
  if devices:
    kwargs["local_device_ids"] = [int(d) for d in devices]
  if mode == "always" or address:
    return kwargs
  cluster = detect_cluster()
  if cluster:
    _LOG.warning("distributed: detected %s; joining it (JAX detects the "
                 "coordinator and process ids).", cluster)
    return kwargs
  if kwargs:
    raise ValueError(
        f"distributed: {sorted(kwargs)} given without a coordinator address; "
        f"set distributed.coordinator_address (or {ENV_COORDINATOR}), or "
        "distributed.initialize='always' to let JAX detect the cluster "
        "(TPU pod slices, SLURM, ...).")
  return None


def maybe_initialize(config=None) -> bool:
  """Connects this process to the others when `config`/the env ask for it.

  Must run before anything queries devices (config validation, the mesh):
  JAX cannot join a cluster after its backends are up. Calling it again
  (e.g. the launcher, then `train_and_evaluate`) is a no-op.

  Returns:
    True when JAX's distributed runtime is (now) initialized.
  """
  if _is_initialized():
    return True
  kwargs = initialize_kwargs(config)
  if kwargs is None:
    return False
  jax.distributed.initialize(**kwargs)
  _LOG.warning("distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def _is_initialized() -> bool:
  is_init = getattr(jax.distributed, "is_initialized", None)
  if is_init is not None:
    return bool(is_init())
  # pylint: disable=g-import-not-at-top,protected-access
  from jax._src import distributed as _dist
  return _dist.global_state.client is not None


# ---------------------------------------------------------------------------
# Host-side gathers of small Python objects.

def allgather_object(obj) -> list:
  """`[obj of process 0, obj of process 1, ...]` on every process.

  For small host values (iterator states, per-row rewards): pickled to
  bytes, padded to the longest, and gathered as a uint8 array (exact for
  any dtype, unlike gathering float64 arrays, which JAX narrows to float32).
  A collective: every process must call it.
  """
  if jax.process_count() == 1:
    return [obj]
  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(
      np.int32(data.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [pickle.loads(rows[p, :int(n)].tobytes())
          for p, n in enumerate(sizes)]


def gather_blocks(obj, block: tuple[int, int]) -> list:
  """Every row block's `obj`, in block order, one per block.

  `block = (index, count)` is this process's block of a batch's rows
  (`sharding.process_row_block`). Processes holding the same block (the
  batch replicated over some mesh axes) hold the same rows, so one copy is
  kept.

  Raises:
    RuntimeError: some block is held by no process.
  """
  index, count = block
  parts = dict(allgather_object((index, obj)))
  if sorted(parts) != list(range(count)):
    raise RuntimeError(f"distributed: row blocks {sorted(parts)} held by "
                       f"the processes; expected all of 0..{count - 1}.")
  return [parts[i] for i in range(count)]


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective), so all
  processes take the same branch, e.g. into a collective checkpoint save."""
  if jax.process_count() == 1:
    return bool(flag)
  return any(allgather_object(bool(flag)))

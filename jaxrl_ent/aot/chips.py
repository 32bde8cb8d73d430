"""TPU chips and topologies: the numbers the AOT check measures against.

`topology_devices("v5e:2x4")` gives compile-only TPU devices on any machine
with `libtpu` installed (the `tpu` extra): `jax.experimental.topologies`
asks libtpu for the topology, and `jax.jit(...).lower(...).compile()` over a
mesh of those devices produces the real TPU executable.

Chip figures are per chip, from the Cloud TPU system-architecture pages
(`source` of each entry); the HBM capacities are the ones the check compares
per-device memory against.
"""

import dataclasses
import math
import os
import re

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation.

  Attributes:
    name: short name used in topology strings (`v5e`).
    device_kind: what `jax.Device.device_kind` reports for it.
    hbm_bytes: HBM per chip (per JAX device: v4 and v5p run as megacore,
      one device per chip).
    peak_flops: peak dense bf16 FLOP/s per chip.
    hbm_bandwidth: HBM bytes/s per chip.
    source: where the three figures come from.
    chip_config_name: libtpu's chip configuration on Cloud TPU VMs (megacore
      for v4/v5p, so a device is a whole chip, as on a real VM).
    max_single_host_chips: slices up to this size are one host (v5e/v6e
      VMs with 8 chips); bigger slices have 4 chips (2x2) per host.
    accelerator_type: a `TPU_ACCELERATOR_TYPE` value of this generation,
      set only so libtpu does not warn at start-up (compile-only use).
  """
  name: str
  device_kind: str
  hbm_bytes: int
  peak_flops: float
  hbm_bandwidth: float
  source: str
  chip_config_name: str
  max_single_host_chips: int
  accelerator_type: str


CHIPS = {
    # https://cloud.google.com/tpu/docs/v4: 275 TFLOPs (bf16) per chip,
    # HBM2 32 GiB at 1200 GB/s.
    "v4": Chip("v4", "TPU v4", 32 * GiB, 275e12, 1200e9,
               "https://cloud.google.com/tpu/docs/v4", "megacore", 4,
               "v4-8"),
    # https://cloud.google.com/tpu/docs/v5e: 197 TFLOPs (bf16) per chip,
    # HBM2 16 GB at 819 GB/s.
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GiB, 197e12, 819e9,
                "https://cloud.google.com/tpu/docs/v5e", "default", 8,
                "v5litepod-8"),
    # https://cloud.google.com/tpu/docs/v5p: 459 TFLOPs (bf16) per chip,
    # HBM2e 95 GB at 2765 GB/s.
    "v5p": Chip("v5p", "TPU v5", 95 * GiB, 459e12, 2765e9,
                "https://cloud.google.com/tpu/docs/v5p", "megachip_tccontrol",
                4, "v5p-8"),
    # https://cloud.google.com/tpu/docs/v6e: 918 TFLOPs (bf16) per chip,
    # HBM 32 GB at 1640 GB/s.
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GiB, 918e12, 1640e9,
                "https://cloud.google.com/tpu/docs/v6e", "default", 8,
                "v6e-8"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A parsed topology name: `chip` and the chip grid `dims` (x, y[, z])."""
  name: str
  chip: Chip
  dims: tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.dims)

  @property
  def host_bounds(self) -> tuple[int, int, int]:
    """Chips per host as libtpu wants them (x, y, z)."""
    if self.num_chips <= self.chip.max_single_host_chips:
      dims = self.dims + (1,) * (3 - len(self.dims))
      return dims  # One host holds the whole slice.
    return (2, 2, 1)

  @property
  def num_hosts(self) -> int:
    return self.num_chips // math.prod(self.host_bounds)


def parse_topology(name: str, field: str = "topology") -> Topology:
  """`"v5e:2x4"` → Topology.

  Raises:
    ValueError: naming `field`, for an unknown chip, a malformed grid, or a
      grid of the wrong rank (v4/v5p are 3-D tori, v5e/v6e 2-D).
  """
  m = re.fullmatch(r"(v\d+[a-z]?):(\d+(?:x\d+)*)", str(name).strip())
  if not m:
    raise ValueError(f"{field}={name!r}: expected '<chip>:<grid>' such as "
                     f"'v5e:2x4' or 'v5p:2x2x2'; chips: {sorted(CHIPS)}.")
  chip_name, grid = m.groups()
  if chip_name not in CHIPS:
    raise ValueError(f"{field}={name!r}: unknown chip {chip_name!r}; known: "
                     f"{sorted(CHIPS)}.")
  dims = tuple(int(d) for d in grid.split("x"))
  want = 3 if chip_name in ("v4", "v5p") else 2
  if len(dims) != want or min(dims) < 1:
    raise ValueError(f"{field}={name!r}: {chip_name} grids have {want} "
                     f"positive dimensions (e.g. "
                     f"{'2x2x2' if want == 3 else '2x4'}).")
  return Topology(name=f"{chip_name}:{grid}", chip=CHIPS[chip_name],
                  dims=dims)


def configure_libtpu_env(chip: Chip) -> None:
  """Environment for compile-only libtpu use on a machine without a TPU.

  Without these, libtpu looks for TPU metadata at start-up and prints
  warnings; with `ALLOW_MULTIPLE_LIBTPU_LOAD` several compile-only processes
  (tests, parallel checks) can load it at once instead of failing on
  `/tmp/libtpu_lockfile`. Values already set by the user win.
  """
  for key, value in (("TPU_ACCELERATOR_TYPE", chip.accelerator_type),
                     ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_WORKER_ID", "0"),
                     ("TPU_SKIP_MDS_QUERY", "1"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(key, value)


def topology_devices(topology: Topology) -> list:
  """Compile-only TPU devices of `topology` (needs libtpu, not a TPU).

  Raises:
    RuntimeError: libtpu is not installed (install the `tpu` extra).
  """
  configure_libtpu_env(topology.chip)
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise RuntimeError(
        "AOT compilation for TPU needs libtpu: pip install -e '.[tpu]'."
    ) from e
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=topology.name,
      chip_config_name=topology.chip.chip_config_name,
      chips_per_host_bounds=topology.host_bounds, num_slices=1)
  devices = list(desc.devices)
  if len(devices) != topology.num_chips:
    raise RuntimeError(f"libtpu gave {len(devices)} devices for "
                       f"{topology.name}, expected one per chip "
                       f"({topology.num_chips}).")
  return devices

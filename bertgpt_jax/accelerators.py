"""TPU chips and slices: the published figures of each chip, and slice names parsed into topologies.

A slice is named as Cloud TPU names it when you create one (``v4-32``, ``v5litepod-16``, ``v5p-64``, ``v6e-8``)
or by its topology (``v4:2x2x4``, ``v5e:4x4``). In v4 and v5p slice names the number counts TensorCores
(two per chip, so ``v4-32`` is 16 chips); in v5e and v6e names it counts chips (one core each). A TPU VM runs
v4 and v5p chips as one JAX device per chip ("megacore"), so every figure here is per chip and the devices
:func:`topology_devices` returns are one per chip.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip generation's published figures (dense bf16 peak, HBM capacity and bandwidth)."""

    name: str  # the generation as slice names spell it
    topology_name: str  # the prefix of libtpu's topology names
    device_kind: str  # what jax.Device.device_kind says on this chip
    hbm_bytes: int
    peak_bf16_flops: float  # FLOP/s
    hbm_bandwidth: float  # bytes/s
    cores_per_chip: int  # TensorCores one chip holds (slice names of v4/v5p count these)
    dims: int  # 3 for the 3D torus chips (v4, v5p), 2 for v5e/v6e
    chips_per_host: int


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "v4", "TPU v4", 32 * GiB, 275e12, 1.2e12, 2, 3, 4),
    "v5e": Chip("v5e", "v5e", "TPU v5 lite", 16 * GiB, 197e12, 0.82e12, 1, 2, 4),
    "v5p": Chip("v5p", "v5p", "TPU v5", 95 * GiB, 459e12, 2.76e12, 2, 3, 4),
    "v6e": Chip("v6e", "v6e", "TPU v6 lite", 32 * GiB, 918e12, 1.64e12, 1, 2, 4),
}
# Other spellings of a generation in slice names and accelerator types.
_GENERATION_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "v6lite": "v6e", "v5": "v5p"}

# Chips -> torus shape of the slices Cloud TPU offers (the documented default topologies).
_TOPOLOGIES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
                  256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
_TOPOLOGIES_2D = {4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: its chip generation and torus shape."""

    chip: Chip
    shape: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)

    @property
    def num_hosts(self) -> int:
        return max(1, self.num_chips // self.chip.chips_per_host)

    @property
    def topology(self) -> str:
        """libtpu's name of this topology, e.g. ``v4:2x2x4``."""
        return f"{self.chip.topology_name}:{'x'.join(map(str, self.shape))}"

    @property
    def accelerator_type(self) -> str:
        """The name ``gcloud compute tpus tpu-vm create --accelerator-type`` takes, e.g. ``v4-32``."""
        prefix = {"v5e": "v5litepod"}.get(self.chip.name, self.chip.name)
        return f"{prefix}-{self.num_chips * self.chip.cores_per_chip}"

    def describe(self) -> str:
        return (f"{self.accelerator_type} ({self.topology}: {self.num_chips} {self.chip.name} chips, "
                f"{self.num_hosts} host{'s' if self.num_hosts > 1 else ''})")


def _generation(text: str) -> Chip:
    key = _GENERATION_ALIASES.get(text.lower(), text.lower())
    if key not in CHIPS:
        known = ", ".join(sorted(CHIPS))
        raise ValueError(f"unknown TPU generation {text!r}; known: {known} (also v5litepod for v5e)")
    return CHIPS[key]


def parse_slice(name: str) -> Slice:
    """A slice from its Cloud TPU name (``v4-32``: 32 cores = 16 chips; ``v5litepod-16``: 16 chips) or its
    topology (``v4:2x2x4``). Raises ``ValueError`` naming the accepted forms."""
    text = name.strip()
    forms = "a slice name such as v4-32, v5litepod-16, v5p-64, v6e-8, or a topology such as v4:2x2x4, v5e:4x4"
    topo = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", text, flags=re.IGNORECASE)
    if topo:
        chip = _generation(topo.group(1))
        shape = tuple(int(d) for d in topo.group(2).lower().split("x"))
        if len(shape) != chip.dims or min(shape) < 1:
            raise ValueError(f"topology {name!r}: a {chip.name} topology has {chip.dims} positive dimensions, e.g. "
                             f"{chip.name}:{'x'.join(['2'] * chip.dims)}")
        return Slice(chip, shape)
    named = re.fullmatch(r"([a-z0-9]+)-(\d+)", text, flags=re.IGNORECASE)
    if not named:
        raise ValueError(f"TPU slice {name!r} is not {forms}")
    chip = _generation(named.group(1))
    count = int(named.group(2))
    if count % chip.cores_per_chip:
        raise ValueError(f"slice {name!r}: {chip.name} slice names count TensorCores ({chip.cores_per_chip} per "
                         f"chip), so the number must be even")
    chips = count // chip.cores_per_chip
    table = _TOPOLOGIES_3D if chip.dims == 3 else _TOPOLOGIES_2D
    if chips not in table:
        sizes = ", ".join(f"{chip.name if chip.name != 'v5e' else 'v5litepod'}-{n * chip.cores_per_chip}"
                          for n in sorted(table))
        raise ValueError(f"slice {name!r}: {chips} chips is not a slice size this tool can compile for; "
                         f"use one of {sizes}, or a topology string such as {chip.topology_name}:"
                         f"{'x'.join(map(str, next(iter(table.values()))))}")
    return Slice(chip, table[chips])


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The chip a ``jax.Device.device_kind`` names (``TPU v5 lite`` -> v5e), or None for other devices."""
    for chip in sorted(CHIPS.values(), key=lambda c: -len(c.device_kind)):
        if device_kind.startswith(chip.device_kind):
            return chip
    return None


def topology_devices(tpu_slice: Slice) -> list:
    """The slice's devices, one per chip, without any TPU: libtpu describes the topology and XLA compiles
    for it. Needs the ``tpu`` extra (``pip install -e '.[tpu]'``)."""
    # A CPU host compiles with libtpu beside the CPU backend; both may load it in one process.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ValueError("compiling for a TPU slice needs libtpu: pip install -e '.[tpu]' (or "
                         "pip install 'libtpu==0.0.42.*')") from None
    from jax.experimental import topologies

    # libtpu lists v4 TensorCores by default; "megacore" is one device per chip, as TPU VMs run v4 (v5p lists
    # chips by default, v5e and v6e have one core per chip).
    kwargs = {"chip_config_name": "megacore"} if tpu_slice.chip.name == "v4" else {}
    try:
        desc = topologies.get_topology_desc(topology_name=tpu_slice.topology, platform="tpu", **kwargs)
    except Exception as e:  # libtpu's INVALID_ARGUMENT for a topology it does not know
        raise ValueError(f"libtpu cannot describe the topology {tpu_slice.topology}: {str(e).splitlines()[0]}") \
            from None
    devices = list(desc.devices)
    if len(devices) != tpu_slice.num_chips:
        raise ValueError(f"libtpu lists {len(devices)} devices for {tpu_slice.topology}, expected one per chip "
                         f"({tpu_slice.num_chips})")
    return devices

"""One user's stored state and its encoding as a database row.

Tensors are stored as safetensors bytes in float32, each blob with a CRC-32 so that a damaged row is
reported instead of being continued. The small hidden-state sum has its own blob so that reading an
embedding does not read the retention states.
"""

import zlib
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from ..retnet import RetNetState
from .errors import CorruptStateError

FORMAT = "use-user-state-1"
HIDDEN_SUM_KEY = "hidden_sum"


@dataclass(frozen=True)
class StateShapes:
    """Shapes a decoded row must have to continue with the store's model."""

    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int

    @classmethod
    def of(cls, config) -> "StateShapes":
        head_dim = config.hidden_size // config.num_heads
        return cls(config.num_hidden_layers, config.num_heads, head_dim, config.hidden_size)

    @property
    def layer_shape(self) -> tuple[int, int, int]:
        return (self.num_heads, self.head_dim, self.head_dim)


@dataclass
class UserRow:
    """One user's state on the CPU in float32.

    hidden_sum: `(hidden,)` sum of last-layer hidden states over all behaviors seen.
    retention: per layer, the retention state `(heads, head_dim, head_dim)`.
    position_offset: rotary position of the next behavior; the [CLS] takes position 0, so it is
    always `num_behaviors + 1`.
    """

    user_id: str
    fingerprint: str
    num_behaviors: int
    position_offset: int
    updated_at: float
    hidden_sum: Tensor
    retention: list[Tensor]

    def embedding(self) -> Tensor:
        """Mean-pooled embedding `(hidden,)`."""
        return self.hidden_sum / max(self.num_behaviors, 1)


@dataclass
class EncodedRow:
    """A `UserRow` as the column values of the `users` table."""

    user_id: str
    fingerprint: str
    num_behaviors: int
    position_offset: int
    updated_at: float
    hidden_sum_crc: int
    hidden_sum: bytes
    retention_crc: int
    retention: bytes

    def values(self) -> tuple:
        return (
            self.user_id,
            self.fingerprint,
            self.num_behaviors,
            self.position_offset,
            self.updated_at,
            self.hidden_sum_crc,
            self.hidden_sum,
            self.retention_crc,
            self.retention,
        )


def _layer_key(layer: int) -> str:
    return f"layer.{layer}"


def encode_row(row: UserRow) -> EncodedRow:
    """Serialise a row's tensors (as float32) to safetensors bytes with their CRC-32."""
    metadata = {"format": FORMAT}
    hidden_sum = save({HIDDEN_SUM_KEY: row.hidden_sum.detach().to("cpu", torch.float32).contiguous()}, metadata)
    retention = save(
        {_layer_key(layer): state.detach().to("cpu", torch.float32).contiguous() for layer, state in enumerate(row.retention)},
        metadata,
    )
    return EncodedRow(
        user_id=row.user_id,
        fingerprint=row.fingerprint,
        num_behaviors=row.num_behaviors,
        position_offset=row.position_offset,
        updated_at=row.updated_at,
        hidden_sum_crc=zlib.crc32(hidden_sum),
        hidden_sum=hidden_sum,
        retention_crc=zlib.crc32(retention),
        retention=retention,
    )


def _load_blob(user_id: str, column: str, blob, crc: int) -> dict[str, Tensor]:
    if not isinstance(blob, bytes):
        raise CorruptStateError({user_id: f"{column} is a {type(blob).__name__}, not bytes"})
    if zlib.crc32(blob) != crc:
        raise CorruptStateError({user_id: f"{column} fails its CRC-32 check"})
    try:
        return load(blob)
    except (SafetensorError, ValueError) as error:
        raise CorruptStateError({user_id: f"{column} is not valid safetensors ({error})"}) from error


def _check_tensor(user_id: str, name: str, tensor: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    if tensor is None:
        raise CorruptStateError({user_id: f"tensor {name!r} is missing"})
    if tensor.dtype != torch.float32 or tuple(tensor.shape) != shape:
        raise CorruptStateError(
            {user_id: f"tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, expected torch.float32 {shape}"}
        )
    if not bool(torch.isfinite(tensor).all()):
        raise CorruptStateError({user_id: f"tensor {name!r} contains NaN or infinite values"})
    return tensor


def _check_counts(user_id: str, num_behaviors: int, position_offset: int) -> None:
    if num_behaviors < 0 or position_offset != num_behaviors + 1:
        raise CorruptStateError(
            {user_id: f"num_behaviors={num_behaviors} and position_offset={position_offset} are inconsistent "
             "(expected position_offset = num_behaviors + 1)"}
        )


def decode_hidden_sum(user_id: str, num_behaviors: int, position_offset: int, crc: int, blob, shapes: StateShapes) -> Tensor:
    """Decode and check the hidden-state sum `(hidden,)`; raise CorruptStateError naming the user."""
    _check_counts(user_id, num_behaviors, position_offset)
    tensors = _load_blob(user_id, "hidden_sum", blob, crc)
    return _check_tensor(user_id, HIDDEN_SUM_KEY, tensors.get(HIDDEN_SUM_KEY), (shapes.hidden_size,))


def decode_row(record: tuple, shapes: StateShapes) -> UserRow:
    """Decode a full `users` row (columns in `EncodedRow` order); raise CorruptStateError naming the user."""
    user_id, fingerprint, num_behaviors, position_offset, updated_at, hidden_crc, hidden_blob, retention_crc, retention_blob = record
    hidden_sum = decode_hidden_sum(user_id, num_behaviors, position_offset, hidden_crc, hidden_blob, shapes)
    tensors = _load_blob(user_id, "retention", retention_blob, retention_crc)
    if len(tensors) != shapes.num_layers:
        raise CorruptStateError({user_id: f"retention contains {len(tensors)} layers, expected {shapes.num_layers}"})
    retention = [
        _check_tensor(user_id, _layer_key(layer), tensors.get(_layer_key(layer)), shapes.layer_shape)
        for layer in range(shapes.num_layers)
    ]
    return UserRow(user_id, fingerprint, num_behaviors, position_offset, updated_at, hidden_sum, retention)


def rows_to_state(rows: list[UserRow]) -> tuple[Tensor, Tensor, RetNetState]:
    """Stack rows into a batch: hidden_sum `(batch, hidden)`, count `(batch,)` and the RetNet state."""
    hidden_sum = torch.stack([row.hidden_sum for row in rows])
    count = torch.tensor([row.num_behaviors for row in rows], dtype=torch.long)
    num_layers = len(rows[0].retention)
    states = [torch.stack([row.retention[layer] for row in rows]) for layer in range(num_layers)]
    offsets = torch.tensor([row.position_offset for row in rows], dtype=torch.long)
    return hidden_sum, count, RetNetState(states, offsets)

"""States with more than one tensor: ``z`` may be a tuple or list of tensors of different shapes (MDEQ keeps one
feature map per resolution), and ``f`` returns the same structure.

The solvers and the gradient methods work on one ``(batch, N)`` tensor; :class:`Structure` flattens a state into
it and unflattens it back, at the boundary (:func:`deqkit.solvers.run`, :func:`deqkit.solve`, the
:class:`~deqkit.DEQ` layer), so that neither the solvers nor the user see the other's form. A plain tensor state
is never flattened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["Structure", "is_structured", "detach"]


def is_structured(z: Any) -> bool:
    """True for a tuple or list (a multi-tensor state), False otherwise."""
    return isinstance(z, (tuple, list))


def detach(z: Any) -> Any:
    """``z.detach()`` of a tensor, or of every tensor of a tuple/list state (its type kept)."""
    if is_structured(z):
        return _rebuild(type(z), [leaf.detach() if isinstance(leaf, torch.Tensor) else leaf for leaf in z])
    return z.detach()


def _rebuild(kind: type, leaves: Sequence[Any]) -> Any:
    """A tuple, list or namedtuple of ``kind`` holding ``leaves``."""
    return kind(*leaves) if hasattr(kind, "_fields") else kind(leaves)


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


class Structure:
    """The layout of a multi-tensor state: its type and each tensor's shape; flattens to ``(batch, N)`` and back.

    Parameters
    ----------
    kind : type
        ``tuple``, ``list`` or a namedtuple class.
    shapes : list of tuple
        Each tensor's shape without the batch dimension.
    dtype, device
        Shared by every tensor.
    """

    def __init__(self, kind: type, shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device):
        self.kind, self.shapes, self.dtype, self.device = kind, shapes, dtype, device
        self.sizes = [int(torch.Size(s).numel()) for s in shapes]

    @classmethod
    def of(cls, z: Any, what: str = "z0") -> Structure | None:
        """The structure of the state ``z``; None for a plain tensor (which is never flattened).

        Raises
        ------
        TypeError
            If a member of a tuple/list is not a tensor.
        ValueError
            If the tuple/list is empty, or its tensors do not share the batch dimension, the dtype and the device,
            or one is not floating-point or has no batch dimension.
        """
        if not is_structured(z):
            return None
        if len(z) == 0:
            raise ValueError(f"{what} is an empty {type(z).__name__}: a state needs at least one tensor")
        for i, leaf in enumerate(z):
            if not isinstance(leaf, torch.Tensor):
                raise TypeError(
                    f"{what} must be a torch.Tensor of shape (batch, ...), or a tuple or list of them "
                    f"(a state of several tensors), but {what}[{i}] is a {type(leaf).__name__}"
                )
            if leaf.dim() == 0 or leaf.shape[0] == 0:
                raise ValueError(
                    f"{what}[{i}] has shape {_shape(leaf.shape)}: every tensor of a state needs a "
                    "non-empty batch dimension first, (batch, ...)"
                )
            if not leaf.is_floating_point():
                raise ValueError(
                    f"{what}[{i}] has dtype {leaf.dtype}: a state must be floating-point, e.g. {what}[{i}].float()"
                )
        first, shapes = z[0], [_shape(t.shape) for t in z]
        for i, leaf in enumerate(z[1:], 1):
            for attr, value in (("batch size", leaf.shape[0]), ("dtype", leaf.dtype), ("device", leaf.device)):
                ref = first.shape[0] if attr == "batch size" else getattr(first, attr)
                if value != ref:
                    raise ValueError(
                        f"{what}[{i}] has {attr} {value} but {what}[0] has {ref}: the tensors of a "
                        f"state must share the batch dimension, dtype and device (shapes {shapes})"
                    )
        return cls(type(z), [_shape(leaf.shape[1:]) for leaf in z], first.dtype, first.device)

    def describe(self) -> str:
        """``"tuple of 2 tensors (16, 16, 16), (32, 8, 8) per sample"``, for messages."""
        return f"{self.kind.__name__} of {len(self.shapes)} tensors {', '.join(map(str, self.shapes))} per sample"

    def flatten(self, z: Any, what: str = "f(z)", batch: int | None = None) -> torch.Tensor:
        """One ``(batch, N)`` tensor holding every tensor of ``z`` (which must have this structure, and the batch
        size ``batch`` when given).

        Raises
        ------
        TypeError
            If ``z`` is not a tuple/list of tensors.
        ValueError
            If it holds another number of tensors, or one differs in shape, dtype or device.
        """
        if not is_structured(z):
            raise TypeError(
                f"{what} is a {type(z).__name__}, but the state is a {self.describe()}: f must return "
                "the same structure as z (a tuple or list of tensors of the same shapes)"
            )
        if len(z) != len(self.shapes):
            raise ValueError(
                f"{what} holds {len(z)} tensors, but the state is a {self.describe()}: f must return "
                "as many tensors as z has, in the same order"
            )
        for i, (leaf, shape) in enumerate(zip(z, self.shapes)):
            if not isinstance(leaf, torch.Tensor):
                raise TypeError(f"{what}[{i}] is a {type(leaf).__name__}, not a tensor")
            batch = leaf.shape[0] if batch is None and leaf.dim() else batch
            if leaf.dim() == 0 or _shape(leaf.shape[1:]) != shape or leaf.shape[0] != batch:
                raise ValueError(
                    f"{what}[{i}] has shape {_shape(leaf.shape)} but z[{i}] has shape "
                    f"{(batch, *shape)}: f must return each tensor of the state in the shape it got "
                    f"(the state is a {self.describe()})"
                )
            if leaf.dtype != self.dtype or leaf.device != self.device:
                raise ValueError(
                    f"{what}[{i}] is {leaf.dtype} on {leaf.device} but the state is {self.dtype} on "
                    f"{self.device}: f must not change the dtype or device"
                )
        return torch.cat([leaf.reshape(leaf.shape[0], -1) for leaf in z], dim=1)

    def unflatten(self, flat: torch.Tensor) -> Any:
        """The state whose flattening is ``flat``, of shape ``(batch, N)`` (views of it: differentiable)."""
        pieces = torch.split(flat, self.sizes, dim=1)
        return _rebuild(self.kind, [p.reshape(flat.shape[0], *s) for p, s in zip(pieces, self.shapes)])

    def map(self, f: Callable[[Any], Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``f`` on states as a map on flat tensors: ``z ↦ flatten(f(unflatten(z)))``."""
        return lambda z: self.flatten(f(self.unflatten(z)), batch=z.shape[0])

    def block(self, f: Callable[[Any, Any], Any]) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """A block ``f(z, x)`` on states as one on flat tensors: ``(z, x) ↦ flatten(f(unflatten(z), x))``."""
        return lambda z, x: self.flatten(f(self.unflatten(z), x), "f(z, x)", batch=z.shape[0])

"""Weight or spectral normalization of a block's linear and convolutional layers in one call, and its reverse.

DEQ blocks are usually trained with their weights normalized (TorchDEQ's ``apply_norm``/``reset_norm``): weight
normalization learns each output unit's direction and norm apart; spectral normalization keeps ``‖W‖₂ ≈ 1``, which
bounds the block's Lipschitz constant. Both are torch's own parametrizations
(``torch.nn.utils.parametrizations``), so state dicts, ``deepcopy`` and optimizers treat them as torch does, and
:class:`~deqkit.DEQ` computes the normalized weights once per call rather than once per evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

__all__ = ["NORMALIZED_TYPES", "normalize", "remove_normalization"]

#: The layers :func:`normalize` reparametrizes: linear and (transposed) convolutions.
NORMALIZED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_KINDS = ("weight", "spectral", None)


def normalize(
    module: nn.Module, kind: str | None = "weight", *, exclude: Iterable[str | type | nn.Module] = (), **options: Any
) -> nn.Module:
    """Apply weight or spectral normalization to every linear and conv layer of ``module``, in place.

    Parameters
    ----------
    module : nn.Module
        A DEQ block (or any module); a single ``nn.Linear`` or ``nn.Conv2d`` works too.
    kind : {"weight", "spectral", None}
        ``"weight"``: :func:`torch.nn.utils.parametrizations.weight_norm` (``W = g · V / ‖V‖`` per output unit);
        ``"spectral"``: :func:`torch.nn.utils.parametrizations.spectral_norm` (``W / σ(W)``, ``σ`` by power
        iteration); None: undo a normalization, as :func:`remove_normalization`.
    exclude : iterable of str, type or nn.Module
        Layers to leave alone: qualified names as in ``module.named_modules()`` (a name also excludes everything
        inside it, e.g. ``"head"`` excludes ``"head.0"``), layer classes (``nn.Conv2d``), or module objects.
    **options
        Passed to torch's function: ``dim`` for weight norm; ``n_power_iterations``, ``eps``, ``dim`` for
        spectral norm.

    Returns
    -------
    nn.Module
        ``module``, its layers reparametrized (their ``weight`` is now computed from
        ``parametrizations.weight.original*``).

    Raises
    ------
    ValueError
        If ``kind`` is unknown, an excluded name is not a submodule of ``module``, a layer is normalized already
        (call :func:`remove_normalization` first), or no layer is left to normalize.
    TypeError
        If ``module`` is not an ``nn.Module``, or an option is not one of torch's function.

    Examples
    --------
    >>> block = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    >>> normalize(block, "spectral", exclude=["2"])[0].parametrizations.weight[0]
    _SpectralNorm()
    """
    if kind is None:
        return remove_normalization(module, exclude=exclude)
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'weight', 'spectral' or None (remove), got {kind!r}")
    layers = _layers(module, exclude)
    for name, layer in layers:
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError(
                f"layer {name or type(layer).__name__!r} is normalized already: call "
                "deqkit.remove_normalization(module) first (or exclude it)"
            )
    if not layers:
        raise ValueError(
            f"no layer to normalize in {type(module).__name__}: normalize() reparametrizes "
            f"{', '.join(t.__name__ for t in NORMALIZED_TYPES[:3])} and other convolutions, and "
            "each was either absent or excluded"
        )
    if kind == "weight":  # W = g · V / ‖V‖ per output unit: a unit whose weights are all 0 would become 0/0 = NaN
        for name, layer in layers:
            weight = cast(Tensor, layer.weight)  # a Parameter on every NORMALIZED_TYPES layer
            dims = tuple(range(1, weight.dim()))
            if bool((weight.detach().abs().amax(dim=dims) == 0).any()):
                raise ValueError(
                    f"layer {name or type(layer).__name__!r} has an output unit whose weights are all 0: "
                    "weight normalization divides by their norm (0/0 = NaN). Initialise the weights "
                    "first, or exclude the layer"
                )
    apply = parametrizations.weight_norm if kind == "weight" else parametrizations.spectral_norm
    for _, layer in layers:
        try:
            apply(layer, "weight", **options)
        except TypeError as err:
            raise TypeError(
                f"{err}: the options of torch.nn.utils.parametrizations.{apply.__name__} are accepted "
                f"here, got {sorted(options)}"
            ) from err
    return module


def remove_normalization(module: nn.Module, *, exclude: Iterable[str | type | nn.Module] = ()) -> nn.Module:
    """Undo :func:`normalize`: each normalized layer gets back a plain ``weight`` holding its current value.

    Parameters
    ----------
    module : nn.Module
    exclude : iterable of str, type or nn.Module
        Layers to keep normalized (as in :func:`normalize`).

    Returns
    -------
    nn.Module
        ``module``; its outputs are unchanged (the normalized weight is kept as a plain parameter).

    Raises
    ------
    ValueError
        If no layer of ``module`` (outside ``exclude``) has a normalized ``weight``: nothing would change.
    """
    removed = 0
    for _, layer in _layers(module, exclude):
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            removed += 1
    if not removed:
        raise ValueError(f"no normalized layer in {type(module).__name__} to remove the normalization from")
    return module


def _layers(module: nn.Module, exclude: Iterable[str | type | nn.Module]) -> list[tuple[str, nn.Module]]:
    """The linear and conv layers of ``module`` outside ``exclude``, with their qualified names."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"normalize() needs an nn.Module (the block, or a layer), got {type(module).__name__}")
    if isinstance(exclude, (str, type, nn.Module)):
        exclude = [exclude]
    exclude = list(exclude)
    names = dict(module.named_modules())
    for item in exclude:
        if isinstance(item, str) and item not in names:
            known = [n for n in names if n][:12]
            raise ValueError(
                f"exclude names {item!r}, which is not a submodule of {type(module).__name__}; its "
                f"submodules include {known}"
            )
        if not isinstance(item, (str, type, nn.Module)):
            raise TypeError(f"exclude takes submodule names, layer classes or modules, got {item!r}")
    prefixes = tuple(item for item in exclude if isinstance(item, str))
    kinds = tuple(item for item in exclude if isinstance(item, type))
    objects = [item for item in exclude if isinstance(item, nn.Module)]

    def excluded(name: str, layer: nn.Module) -> bool:
        return (
            any(name == p or name.startswith(p + ".") for p in prefixes)
            or isinstance(layer, kinds)
            or any(layer is o for o in objects)
        )

    for name, layer in module.named_modules():
        if isinstance(layer, nn.MultiheadAttention) and not excluded(name, layer):
            raise ValueError(
                f"{name or type(layer).__name__!r} is an nn.MultiheadAttention: its input projection "
                "is a bare parameter (in_proj_weight), not a layer, so normalize() would reach only its "
                "out_proj; exclude it (exclude=[nn.MultiheadAttention]) or reparametrize it yourself with "
                "torch.nn.utils.parametrize"
            )
    return [
        (name, layer)
        for name, layer in module.named_modules()
        if isinstance(layer, NORMALIZED_TYPES) and not excluded(name, layer)
    ]

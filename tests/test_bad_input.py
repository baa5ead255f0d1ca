"""Bad input to the library, one row per case: what is done, what must be raised, what the message must say.

Read the table top to bottom: every case names the cause and the fix in deqkit's own words, never an error from
deep inside torch and never a silently wrong result. (Checkpoints, the training CLI and MNIST have their own table
in tests/train/.)
"""

import copy
import warnings

import numpy as np
import pytest
import torch

import deqkit
from deqkit.problems import tanh_problem

Z = torch.zeros(2, 3)


def _block(dtype=torch.float32):
    return tanh_problem(4, 0.5, batch=2, dtype=dtype)


def _deq(**kw):
    return deqkit.DEQ(_block()[0], **kw)


def _x(dtype=torch.float32):
    return _block(dtype)[1]


def _backward_picard_past_one():
    """A DEQ whose forward converges at an equilibrium with ρ(∂f/∂z) = 1.31, differentiated with Picard."""
    torch.manual_seed(0)
    d = 6
    w = 1.5 * torch.linalg.qr(torch.randn(d, d))[0]
    deq = deqkit.DEQ(
        lambda z, x: torch.tanh(z @ w.T + x), solver="anderson", backward=deqkit.Implicit(solver="picard"), max_nfe=None
    )
    x = torch.randn(5, d, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
        deq(x).sum().backward()


def _linear_last_deq():
    lin = torch.nn.Linear(3, 3)
    return deqkit.DEQ(lambda z, x: lin(z + x))


def _reassigned_eval_budget():
    deq = _deq()
    deq.eval_max_nfe = 1
    return deq.eval()


def _scaled_loss_gradient(scale):
    """x's gradient of ``scale · sum(DEQ(x))`` (GMRES backward, float32), and the same at scale 1."""
    grads = []
    for s in (scale, 1.0):
        deq, x = _deq(solver="anderson"), _x().requires_grad_()
        (deq(x).sum() * s).backward()
        assert deq.last_stats.backward.all_converged
        grads.append(x.grad)
    return grads


def _copy_after_forward():
    import copy

    deq, x = _deq(), _x()
    deq(x.requires_grad_())
    twin = copy.deepcopy(deq)
    return twin, deq, x


def _writes_from_second_call():
    """0.5 z + 1, which from its second call on also copies its answer into its argument: the residual the
    solver then computes, f(z) − z, is exactly 0 (issue 22, cause 5: only the first call used to be checked)."""
    calls = []

    def f(z):
        out = 0.5 * z + 1
        calls.append(1)
        if len(calls) >= 2:
            z.copy_(out)
        return out

    return f


def _wide_block():
    """A block whose state is 8 wide while x is 4 wide (it needs z0=lambda x: x.new_zeros(len(x), 8))."""
    linear = torch.nn.Linear(8, 8)
    return lambda z, x: torch.tanh(linear(z)) + x.sum(1, keepdim=True)


def _used_deq():
    deq = _deq()
    deq(_x()).sum().backward()
    return deq


def _nan_beyond_half(z):
    """0.5 z + 1, undefined (NaN) for the first sample once its first entry passes 0.5."""
    out = 0.5 * z + 1
    return torch.where((z[:, :1] > 0.5) & (torch.arange(len(z))[:, None] == 0), float("nan"), out)


def _zero_linear():
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[0].zero_()
    return torch.nn.Sequential(layer)


# (case, call, exception, message fragment)
CASES = [
    # ---- solve: the starting point
    ("1-D z0", lambda: deqkit.solve(torch.cos, torch.zeros(5)), ValueError, r"shape \(batch, \.\.\.\).*z0\[None\]"),
    ("integer z0", lambda: deqkit.solve(torch.cos, torch.zeros(2, 3, dtype=torch.long)), ValueError, "floating-point"),
    ("z0 not a tensor", lambda: deqkit.solve(torch.cos, [[0.0]]), TypeError, "z0 must be a torch.Tensor"),
    (
        "old keyword method=",
        lambda: deqkit.solve(torch.cos, Z, method="picard"),
        TypeError,
        r"solver=\.\.\., not method=",
    ),
    # ---- solver options, checked where the object is built
    ("Anderson m=2.5", lambda: deqkit.Anderson(m=2.5), TypeError, "m must be an integer"),
    ("Anderson m='3'", lambda: deqkit.Anderson(m="3"), TypeError, "m must be an integer"),
    ("Anderson lam=nan", lambda: deqkit.Anderson(lam=float("nan")), ValueError, "lam must be in"),
    ("Picard damping=0", lambda: deqkit.Picard(damping=0), ValueError, r"damping must be in \(0, 1\]"),
    (
        "Euler step_size=0",
        lambda: deqkit.DynamicSS(ode_method="euler", step_size=0),
        ValueError,
        r"step_size must be in \(0",
    ),
    (
        "Euler step_size<0",
        lambda: deqkit.DynamicSS(ode_method="euler", step_size=-0.5),
        ValueError,
        r"step_size must be in \(0",
    ),
    ("first_step=-1", lambda: deqkit.StepSizeController(first_step=-1), ValueError, r"first_step must be in \(0"),
    ("rtol=-1", lambda: deqkit.StepSizeController(rtol=-1), ValueError, r"rtol must be in \(0"),
    (
        "StepSizeController(atol=inf) (accepted every step, then failed as 'the flow blows up')",
        lambda: deqkit.StepSizeController(atol=float("inf")),
        ValueError,
        r"atol must be in \(0, inf\)",
    ),
    (
        "StepSizeController(first_step=inf)",
        lambda: deqkit.StepSizeController(first_step=float("inf")),
        ValueError,
        r"first_step must be in \(0, inf\)",
    ),
    (
        "DEQ correction=None (was blamed on 'backward')",
        lambda: _deq(correction=None),
        TypeError,
        r"correction must be a name",
    ),
    ("DEQ correction='x'", lambda: _deq(correction="x"), ValueError, "unknown correction 'x'"),
    (
        "tuple state: f returns another batch size (was told in flattened shapes)",
        lambda: deqkit.solve(lambda z: (z[0][:1] * 0.5, z[1][:1] * 0.5), (torch.ones(2, 3), torch.ones(2, 2))),
        ValueError,
        r"f\(z\)\[0\] has shape \(1, 3\) but z\[0\] has shape \(2, 3\)",
    ),
    (
        "normalize a layer with an all-zero unit (gave NaN weights)",
        lambda: deqkit.normalize(_zero_linear()),
        ValueError,
        "has an output unit whose weights are all 0",
    ),
    (
        "normalize an nn.MultiheadAttention (only its out_proj was reached)",
        lambda: deqkit.normalize(torch.nn.Sequential(torch.nn.MultiheadAttention(4, 2))),
        ValueError,
        "is an nn.MultiheadAttention",
    ),
    (
        "DEQ with an option of neither the DEQ nor its solver",
        lambda: _deq(foo=1),
        TypeError,
        "unknown option.*'foo'.*DEQ passes every keyword it does not take itself to its solver; the DEQ's own "
        "settings are: f, solver, backward",
    ),
    (
        "torchdiffeq's step-size options given to DynamicSS",
        lambda: deqkit.DynamicSS(first_step=0.1, polish_m=3),
        TypeError,
        r"first_step: use controller=deqkit.StepSizeController\(first_step=...\); polish_m: not an option",
    ),
    (
        "a torchdiffeq option by name",
        lambda: deqkit.solve(torch.cos, Z, safety=0.5),
        TypeError,
        r"'safety'.*for safety, use controller=deqkit.StepSizeController\(safety=...\)",
    ),
    (
        "controller of the wrong type",
        lambda: deqkit.DynamicSS(controller={"rtol": 1e-3}),
        TypeError,
        "controller must be a deqkit.StepSizeController",
    ),
    (
        "polisher of the wrong kind",
        lambda: deqkit.DynamicSS(polish=deqkit.Picard()),
        ValueError,
        r"polish must be 'anderson', a deqkit.Anderson\(...\) or None",
    ),
    ("unknown ode_method", lambda: deqkit.DynamicSS(ode_method="rk45"), ValueError, "unknown ode_method 'rk45'"),
    ("GMRES restart=0", lambda: deqkit.GMRES(restart=0), ValueError, "restart must be an integer >= 1"),
    (
        "unknown option",
        lambda: deqkit.solve(torch.cos, Z, solver="anderson", memory=5),
        TypeError,
        "unknown option.*'memory'.*its options are: m, beta, lam",
    ),
    (
        "options with an object",
        lambda: deqkit.solve(torch.cos, Z, solver=deqkit.Anderson(), m=3),
        TypeError,
        "set them on the object",
    ),
    ("solver of the wrong type", lambda: deqkit.solve(torch.cos, Z, solver=3), TypeError, "solver must be a name"),
    (
        "backward-only solver forward",
        lambda: deqkit.solve(torch.cos, Z, solver=deqkit.GMRES()),
        ValueError,
        "GMRES cannot be used here",
    ),
    # ---- tolerances, of any numeric library, refused when impossible
    ("abstol=-1", lambda: deqkit.solve(torch.cos, Z, abstol=-1), ValueError, r"abstol must be in \[0"),
    (
        "both tolerances 0",
        lambda: deqkit.solve(torch.cos, Z, abstol=0, reltol=0),
        ValueError,
        "abstol and reltol are both 0",
    ),
    ("max_steps=2.0", lambda: deqkit.solve(torch.cos, Z, max_steps=2.0), TypeError, "max_steps must be an integer"),
    # bounded above too: an infinite abstol or a reltol >= 1 accepts every iterate (issue 22, cause 2)
    (
        "abstol=inf",
        lambda: deqkit.solve(torch.cos, Z, abstol=float("inf")),
        ValueError,
        r"abstol must be in \[0, inf\).*accepts any iterate",
    ),
    (
        "reltol=1",
        lambda: deqkit.solve(torch.cos, Z, reltol=1.0),
        ValueError,
        r"reltol must be in \[0, 1\).*accepts any iterate",
    ),
    ("reltol=nan", lambda: deqkit.solve(torch.cos, Z, reltol=float("nan")), ValueError, r"reltol must be in \[0, 1\)"),
    ("DEQ abstol=inf", lambda: _deq(abstol=float("inf")), ValueError, r"abstol must be in \[0, inf\)"),
    ("DEQ reltol=1.5", lambda: _deq(reltol=1.5), ValueError, r"reltol must be in \[0, 1\)"),
    (
        "Implicit(abstol=inf)",
        lambda: deqkit.Implicit(abstol=float("inf")),
        ValueError,
        r"abstol must be in \[0, inf\).*accepts any iterate",
    ),
    ("Implicit(reltol=1.0)", lambda: deqkit.Implicit(reltol=1.0), ValueError, r"reltol must be in \[0, 1\)"),
    (
        "backward reltol inherited from abstol=5",
        lambda: _deq(abstol=5.0)(_x().requires_grad_()).sum().backward(),
        ValueError,
        r"backward reltol defaults to the larger forward tolerance, 5.*Implicit\(reltol=",
    ),
    # ---- the map
    (
        "f changes z in place",
        lambda: deqkit.solve(lambda z: z.mul_(0.5), torch.ones(2, 3), solver="picard"),
        ValueError,
        "changed its input in place.*returned its argument",
    ),
    (
        "f writes into z",
        lambda: deqkit.solve(lambda z: z.add_(1).mul(0.5), torch.ones(2, 3), solver="anderson"),
        ValueError,
        "changed its input in place.*wrote into it",
    ),
    *[
        (
            f"f writes into z from its second call on, {name}",
            lambda name=name: deqkit.solve(_writes_from_second_call(), torch.zeros(2, 3), solver=name),
            ValueError,
            "changed its input in place at its evaluation 2.*wrote into it",
        )
        for name in deqkit.SOLVERS
    ],
    ("f changes the shape", lambda: deqkit.solve(lambda z: z[:, :2], Z), ValueError, "f\\(z\\) has shape"),
    # issue 22, "wrong cause": these were all blamed on an expansive map
    (
        "float32 overflow of the problem's own scale, broyden",
        lambda: deqkit.solve(lambda z: 0.5 * z + 1e30, torch.zeros(2, 3), solver="broyden"),
        deqkit.DivergenceError,
        "already 1e\\+30 at the start.*overflow float32.*says nothing about f's stability",
    ),
    (
        "float32 overflow of the problem's own scale, the flow alone",
        lambda: deqkit.solve(lambda z: 0.5 * z + 1e38, torch.zeros(2, 3), solver=deqkit.DynamicSS(polish=None)),
        deqkit.DivergenceError,
        "dynamic_ss.*already 1e\\+38 at the start.*overflow float32.*The solver's own report",
    ),
    # absurd ODE settings, once reported as a flow that blows up
    (
        "dynamic_ss ODE rtol = atol = 1e-30",
        lambda: deqkit.solve(
            lambda z: 0.5 * z + 1,
            torch.zeros(2, 3),
            solver=deqkit.DynamicSS(polish=None, controller=deqkit.StepSizeController(rtol=1e-30, atol=1e-30)),
        ),
        deqkit.DivergenceError,
        "below float32's precision.*set them above eps",
    ),
    (
        "dynamic_ss first_step=1e10",
        lambda: deqkit.solve(
            lambda z: 0.5 * z + 1,
            torch.zeros(2, 3),
            solver=deqkit.DynamicSS(polish=None, controller=deqkit.StepSizeController(first_step=1e10)),
        ),
        deqkit.DivergenceError,
        "first_step=1e\\+10\\) is far beyond the flow's time scale",
    ),
    (
        "f returns NaN at a trial point of the flow (was: the flow blows up)",
        lambda: deqkit.solve(_nan_beyond_half, torch.zeros(3, 4), solver=deqkit.DynamicSS(polish=None)),
        deqkit.DivergenceError,
        "because f returned NaN at a finite trial point for 1 of 3 samples: f is undefined there",
    ),
    (
        "f returns NaN in one sample, dynamic_ss with its default polish (was: the flow blows up)",
        lambda: deqkit.solve(_nan_beyond_half, torch.zeros(3, 4), solver="dynamic_ss"),
        deqkit.DivergenceError,
        "for 1 of 3 samples. f returned NaN at a finite iterate.*no sign of an expansive map",
    ),
    (
        "dynamic_ss euler step_size=1e6",
        lambda: deqkit.solve(
            lambda z: 0.5 * z + 1,
            torch.zeros(2, 3),
            solver=deqkit.DynamicSS(ode_method="euler", step_size=1e6, polish=None),
        ),
        deqkit.DivergenceError,
        "step_size=1e\\+06 is itself unstable.*lower step_size",
    ),
    (
        "f returns NaN at a finite iterate",
        lambda: deqkit.solve(
            lambda z: torch.where(z > 1.5, torch.sqrt(-z), 0.5 * z + 1), torch.zeros(2, 3), solver="anderson"
        ),
        deqkit.DivergenceError,
        "f returned NaN at a finite iterate.*no sign of an expansive map",
    ),
    # raw errors from deep inside torch, now named
    (
        "meta-device z0 in solve",
        lambda: deqkit.solve(torch.cos, torch.zeros(2, 3, device="meta")),
        ValueError,
        "z0 is on the meta device",
    ),
    (
        "z0 of the wrong feature size",
        lambda: _deq()(_x(), z0=torch.zeros(2, 5)),
        ValueError,
        r"first evaluation, at the starting point of shape \(2, 5\).*check z0",
    ),
    (
        "Anderson(m=10**9) on a large batch (was an allocator error naming no option)",
        lambda: deqkit.solve(torch.cos, torch.zeros(2000, 300), solver=deqkit.Anderson(m=10**9)),
        RuntimeError,
        r"ran out of memory with Anderson\(m=1000000000\).*lower m or the batch size",
    ),
    (
        "GMRES(restart=10**9) with a step limit as large, on a large batch (was an allocator error naming no option)",
        lambda: deqkit.solvers.run(
            deqkit.GMRES(restart=10**9),
            deqkit.solvers.AffineMap(torch.ones(2000, 300), lambda u: 0.5 * u),
            torch.zeros(2000, 300),
            deqkit.solvers.Tolerances(0.0, 1e-6, 10**9),
        ),
        RuntimeError,
        r"ran out of memory with GMRES\(restart=1000000000\).*lower restart or the batch size",
    ),
    (
        "z0=lambda x: 3.0",
        lambda: _deq()(_x(), z0=lambda x: 3.0),
        TypeError,
        "the callable z0 returned a float: it must return the starting state",
    ),
    (
        "f returns no tensor",
        lambda: deqkit.solve(lambda z: 1.0, Z, solver="picard"),
        TypeError,
        "must return a torch.Tensor",
    ),
    # ---- the DEQ: checked at construction, not at the first call
    ("DEQ max_steps=0", lambda: _deq(max_steps=0), ValueError, "max_steps must be an integer >= 1"),
    ("DEQ abstol=-1", lambda: _deq(abstol=-1), ValueError, r"abstol must be in \[0"),
    (
        "DEQ backward reltol=0",
        lambda: _deq(backward=deqkit.Implicit(reltol=0)),
        ValueError,
        "backward abstol and reltol are both 0",
    ),
    (
        "DEQ keyword neither its own nor its solver's",
        lambda: _deq(backward_solver="gmres"),
        TypeError,
        r"unknown option.*'backward_solver'.*the DEQ's own settings are: .*backward",
    ),
    ("DEQ strict='yes'", lambda: _deq(strict="yes"), TypeError, "strict must be True or False"),
    ("DEQ unknown backward", lambda: _deq(backward="adjoint"), ValueError, "unknown backward 'adjoint'"),
    (
        "eval_max_nfe reassigned to 1 (was named max_nfe)",
        lambda: _reassigned_eval_budget()(_x()),
        ValueError,
        r"eval_max_nfe must be an integer >= 2, got 1",
    ),
    (
        "backward budget inherited from the DEQ (was unexplained)",
        lambda: (
            _deq(
                solver="anderson",
                max_nfe=6,
                strict=True,
                abstol=1e-3,
                reltol=1e-3,
                backward=deqkit.Implicit(reltol=1e-12),
            )(_x().requires_grad_())
            .sum()
            .backward()
        ),
        deqkit.ConvergenceError,
        r"max_nfe=6 \(inherited from the DEQ's forward budget.*Implicit\(max_nfe=\.\.\.\)",
    ),
    (
        "DEQ with TorchDEQ's names",
        lambda: _deq(f_max_iter=30, n_states=3),
        TypeError,
        r"unknown option.*TorchDEQ's 'f_max_iter' is max_steps=\.\.\. / max_nfe=\.\.\. here.*'n_states' is "
        r"deq\(x, states=k\)",
    ),
    # ---- the DEQ's input
    ("0-d x", lambda: _deq()(torch.tensor(1.0)), ValueError, r"x must have shape \(batch, \.\.\.\).*x\[None\]"),
    ("empty x", lambda: _deq()(torch.zeros(0, 4)), ValueError, "non-empty batch"),
    ("integer x", lambda: _deq()(torch.zeros(2, 4, dtype=torch.long)), ValueError, "x must be a floating-point"),
    (
        "float64 x into a float32 f",
        lambda: _deq()(_x(torch.float64)),
        ValueError,
        "x is torch.float64 on cpu but f's parameters are torch.float32 on cpu",
    ),
    ("meta x", lambda: _deq()(torch.zeros(2, 4, device="meta")), ValueError, "meta device"),
    ("NaN x", lambda: _deq()(torch.full((2, 4), float("nan"))), ValueError, "input x contains NaN or Inf"),
    (
        "vmap over a DEQ",
        lambda: torch.func.vmap(_deq())(_x()[:, None]),
        RuntimeError,
        "cannot run under torch.func transforms",
    ),
    (
        "torch.func.grad over a DEQ",
        lambda: torch.func.grad(lambda x: _deq()(x).sum())(_x()),
        RuntimeError,
        "cannot run under torch.func transforms",
    ),
    # ---- states of several tensors (tuple/list): one structure throughout, shared batch, dtype and device
    (
        "tuple z0, batch sizes differ",
        lambda: deqkit.solve(lambda z: z, (torch.zeros(2, 3), torch.zeros(3, 3))),
        ValueError,
        r"z0\[1\] has batch size 3 but z0\[0\] has 2.*share the batch dimension",
    ),
    (
        "tuple z0, dtypes differ",
        lambda: deqkit.solve(lambda z: z, (Z, Z.double())),
        ValueError,
        "z0\\[1\\] has dtype torch.float64 but z0\\[0\\] has torch.float32",
    ),
    ("empty tuple z0", lambda: deqkit.solve(lambda z: z, ()), ValueError, "empty tuple"),
    (
        "f drops a tensor of the tuple",
        lambda: deqkit.solve(lambda z: (z[0] * 0.5,), (Z, torch.zeros(2, 5))),
        ValueError,
        r"f\(z\) holds 1 tensors, but the state is a tuple of 2 tensors \(3,\), \(5,\)",
    ),
    (
        "f returns a tensor for a tuple state",
        lambda: deqkit.solve(lambda z: z[0] * 0.5, (Z, Z)),
        TypeError,
        "f must return the same structure as z",
    ),
    (
        "f swaps the tuple's shapes",
        lambda: deqkit.solve(lambda z: (z[1] * 0.5, z[0] * 0.5), (Z, torch.zeros(2, 5)), solver="picard"),
        ValueError,
        r"f\(z\)\[0\] has shape \(2, 5\) but z\[0\] has shape \(2, 3\)",
    ),
    (
        "DEQ f returns a tuple for a tensor state",
        lambda: deqkit.DEQ(lambda z, x: (z, x))(_x()),
        TypeError,
        "the state z is one tensor.*z0 a tuple/list of tensors, or a callable",
    ),
    (
        "DEQ z0 tuple of another batch",
        lambda: _deq(z0=lambda x: (torch.zeros(3, 4),))(_x()),
        ValueError,
        r"z0\[0\] has shape \(3, 4\) but x has batch size 2",
    ),
    # ---- the state's shape against x's: z0="zeros" means zeros_like(x)
    (
        "z0='zeros', f multiplies by a wider matrix",
        lambda: deqkit.DEQ(_wide_block())(_x()),
        ValueError,
        r"z0='zeros' starts from zeros_like\(x\), shape \(2, 4\).*mat1 and mat2.*z0=lambda x: x.new_zeros",
    ),
    (
        "z0='zeros', f returns a wider state",
        lambda: deqkit.DEQ(lambda z, x: torch.cat([z, x], 1))(_x()),
        ValueError,
        r"zeros_like\(x\), shape \(2, 4\).*f\(z\) has shape torch.Size\(\[2, 8\]\).*x.new_zeros\(x.shape\[0\], 8\)",
    ),
    (
        "z0='f0', f multiplies by a wider matrix",
        lambda: deqkit.DEQ(_wide_block(), z0="f0")(_x()),
        ValueError,
        r"z0='f0' evaluates f\(z, x\) at zeros_like\(x\).*z0 as a callable of x",
    ),
    # ---- copies of a used DEQ: the graph of the last call stays with the original
    (
        "jacobian_penalty of a deep copy",
        lambda: deqkit.jacobian_penalty(copy.deepcopy(_used_deq())),
        ValueError,
        "no equilibrium with a graph; call it in grad mode first",
    ),
    # ---- diagnostics
    (
        "spectral_radius iters=2.5",
        lambda: deqkit.spectral_radius(torch.tanh, Z, iters=2.5),
        TypeError,
        "iters must be an integer",
    ),
    (
        "spectral_radius, detached f",
        lambda: deqkit.spectral_radius(lambda z: z.detach() * 0.5, Z),
        ValueError,
        "does not depend on z through autograd",
    ),
    (
        "spectral_radius, shape-changing f",
        lambda: deqkit.spectral_radius(lambda z: z[:, :2], Z),
        ValueError,
        "must be a tensor shaped like z",
    ),
    (
        "compare_gradients, unknown mode",
        lambda: deqkit.compare_gradients(_deq(), _x(), modes=("implict",)),
        ValueError,
        "unknown backward mode",
    ),
    # issue 22: directions=0 reported relative error 0 for every mode; eps=0, nan and directions < 0 were raw errors
    (
        "compare_gradients directions=0",
        lambda: deqkit.compare_gradients(_deq(), _x(), directions=0),
        ValueError,
        "directions must be an integer >= 1.*None for the full gradient",
    ),
    (
        "compare_gradients directions=-3",
        lambda: deqkit.compare_gradients(_deq(), _x(), directions=-3),
        ValueError,
        "directions must be an integer >= 1",
    ),
    (
        "compare_gradients eps=0",
        lambda: deqkit.compare_gradients(_deq(), _x(), eps=0.0),
        ValueError,
        r"eps must be in \(0, inf\).*finite-difference step",
    ),
    (
        "compare_gradients eps=nan",
        lambda: deqkit.compare_gradients(_deq(), _x(), eps=float("nan")),
        ValueError,
        r"eps must be in \(0, inf\)",
    ),
    (
        "spectral_radius at a NaN point (was NaN, no word)",
        lambda: deqkit.spectral_radius(torch.tanh, torch.full((2, 3), float("nan"))),
        ValueError,
        "z contains NaN or Inf",
    ),
    (
        "spectral_radius where f(z) overflows",
        lambda: deqkit.spectral_radius(lambda z: torch.exp(z), torch.full((2, 3), 100.0)),
        ValueError,
        r"f\(z\) contains NaN or Inf",
    ),
    # ---- configured objects: derived state is fixed with the settings it was built from
    (
        "DynamicSS.polish reassigned (polishing off, label still '+anderson')",
        lambda: setattr(deqkit.DynamicSS(), "polish", None),
        AttributeError,
        "cannot be changed after construction",
    ),
    (
        "DynamicSS.controller reassigned",
        lambda: setattr(deqkit.DynamicSS(), "controller", None),
        AttributeError,
        "cannot be changed after construction",
    ),
    # round six (2026-12-08, ninth session): a DEQ's attributes set after construction
    (
        "a near miss of a DEQ setting set as an attribute (was accepted and ignored)",
        lambda: setattr(_deq(), "max_stpes", 3),
        AttributeError,
        r"DEQ has no setting 'max_stpes'; did you mean 'max_steps'\?",
    ),
    (
        "deq.backwards = 'phantom' (was accepted and ignored)",
        lambda: setattr(_deq(), "backwards", "phantom"),
        AttributeError,
        "did you mean 'backward'",
    ),
    (
        "deq.f = None (was Python's \"'NoneType' object is not callable\" at the next call)",
        lambda: setattr(_deq(), "f", None),
        TypeError,
        "f must be an nn.Module or a callable f",
    ),
    (
        "deq.z0 set to an unknown name (was accepted; checked only by the constructor)",
        lambda: setattr(_deq(), "z0", "ones"),
        ValueError,
        "z0 must be 'zeros', 'f0', a callable or a tensor, got 'ones'",
    ),
    (
        "deq.strict = 1 (was accepted; checked only by the constructor)",
        lambda: setattr(_deq(), "strict", 1),
        TypeError,
        "strict must be True or False",
    ),
    # round five (a hostile review of 2026-12-08): settings accepted and then ignored, raw errors
    (
        "a step-size controller for a fixed-step ODE method (was ignored)",
        lambda: deqkit.DynamicSS(
            ode_method="euler", step_size=0.5, controller=deqkit.StepSizeController(max_step=1e-3)
        ),
        ValueError,
        "controller sets the adaptive methods' step sizes; 'euler' takes fixed steps",
    ),
    (
        "polish_* settings with polish=None (were ignored)",
        lambda: deqkit.DynamicSS(polish=None, polish_below=0.01, polish_stall=1),
        ValueError,
        "polish_below, polish_stall set the polisher's hand-overs, and polish=None turns the polisher off",
    ),
    (
        "a state with no entries per sample (was a raw IndexError from amax)",
        lambda: deqkit.solve(lambda z: 0.5 * z, torch.zeros(3, 0)),
        ValueError,
        r"z0 has no entries per sample \(shape \(3, 0\)\)",
    ),
    (
        "a DEQ on a state with no entries per sample",
        lambda: deqkit.DEQ(lambda z, x: 0.5 * z + x)(torch.zeros(3, 0)),
        ValueError,
        "no entries per sample",
    ),
    (
        "solve under torch.func.vmap (was torch's raw .item() error)",
        lambda: torch.func.vmap(lambda xi: deqkit.solve(lambda z: 0.5 * z + xi, torch.zeros_like(xi))[0])(
            torch.randn(3, 1, 4)
        ),
        RuntimeError,
        "a solve cannot run under torch.func.vmap",
    ),
    (
        "solve under torch.func.vmap, with f capturing the batched tensor and z0 made inside",
        lambda: torch.func.vmap(lambda a: deqkit.solve(lambda z: a * z + 1, torch.zeros(1, 2), solver="picard")[0])(
            torch.tensor([0.1, 0.5])
        ),
        RuntimeError,
        "a solve cannot run under torch.func.vmap",
    ),
    (
        "a DEQ whose block ends in a Linear, inside torch.autocast (was blamed on f changing dtype, or on shapes)",
        lambda: _autocast(lambda: _linear_last_deq()(torch.randn(2, 3))),
        ValueError,
        r"f\(z\) comes back as bfloat16 under torch.autocast\(bfloat16\) while the state z is float32.*out.to",
    ),
    (
        "DynamicSS(polish=None) with a polish_* setting that is not even a number",
        lambda: deqkit.DynamicSS(polish=None, polish_below=float("nan")),
        ValueError,
        r"polish_below must be in \(0, 1\), got nan",
    ),
    (
        "a 1-D x with the default z0 (was blamed on f's first evaluation)",
        lambda: deqkit.DEQ(lambda z, x: 0.5 * z + x)(torch.randn(5)),
        ValueError,
        r"x has shape \(5,\): one dimension.*x\[:, None\]",
    ),
    (
        "the implicit backward's Picard diverging past rho = 1 (read as a forward failure)",
        _backward_picard_past_one,
        deqkit.DivergenceError,
        r"implicit backward: the linear solve u = g \+ u·∂f/∂z .*Implicit\(solver='gmres'\)",
    ),
]


@pytest.mark.parametrize("call, exception, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message_that_names_it(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def _quiet(call):
    """Run ``call`` with every warning an error: a right answer comes without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


# Cases once answered silently wrong, now answered right: (case, call, check of its result)
RIGHT = [
    # z0 = -2 is a root of f: ‖f(z0)‖ = 0, and Broyden's secant step lands on z* = 2 exactly (residual 0). The
    # drift rule measured growth against ‖f(z0)‖ alone and called it a runaway (issue 22, cause 6).
    *[
        (
            f"exact solution from a root of f, {name}",
            lambda name=name: _quiet(
                lambda: deqkit.solve(lambda z: 0.5 * z + 1, torch.full((2, 3), -2.0, dtype=torch.float64), solver=name)
            ),
            lambda out: out[1].all_converged and torch.allclose(out[0], torch.full_like(out[0], 2.0), atol=1e-4),
        )
        for name in deqkit.SOLVERS
    ],
    (
        "exact solution from a near-root of f, broyden",
        lambda: _quiet(
            lambda: deqkit.solve(
                lambda z: 0.5 * z + 1, torch.full((2, 3), -2.0 + 1e-7, dtype=torch.float64), solver="broyden"
            )
        ),
        lambda out: out[1].all_converged,
    ),
    # the implicit backward solves for grad / 2^k (exact): a loss scaled by 1e20 or 1e-30 overflowed GMRES in
    # float32 and was blamed on an expansive map
    *[
        (
            f"loss scaled by {s:g} into GMRES",
            lambda s=s: _quiet(lambda: _scaled_loss_gradient(s)),
            lambda g, s=s: torch.allclose(g[0] / s, g[1], rtol=1e-5),
        )
        for s in (1e20, 1e-30)
    ],
    # float32 at 1e38 (its largest is 3.4e38): the default dynamic_ss said "the flow is probably blowing up"
    (
        "f = 0.5 z + 1e38 under the default dynamic_ss",
        lambda: _quiet(lambda: deqkit.solve(lambda z: 0.5 * z + 1e38, torch.zeros(2, 3), solver="dynamic_ss")),
        lambda out: out[1].all_converged and torch.allclose(out[0], torch.full_like(out[0], 2e38), rtol=1e-4),
    ),
    (
        "copy.deepcopy(deq) after a forward (was a raw RuntimeError)",
        _copy_after_forward,
        lambda out: out[0].last_equilibrium is None and torch.equal(out[0](out[2]), out[1](out[2])),
    ),
]


# Anderson's least squares (and GMRES's Krylov basis) ran their batched products under the caller's autocast, in
# bfloat16: "linalg.solve: Expected A and B to have the same dtype"; f itself still runs under autocast
RIGHT += [
    (
        f"{solver} inside torch.autocast(bfloat16)",
        lambda solver=solver: _autocast(lambda: deqkit.solve(lambda z: 0.5 * torch.tanh(z) + 1.0, Z, solver=solver)),
        lambda out: out[1].all_converged,
    )
    for solver in deqkit.SOLVERS
] + [
    (
        "a DEQ with a Linear block inside torch.autocast(bfloat16), implicit backward by Anderson",
        lambda: _autocast(_autocast_deq_gradient),
        lambda out: out[0].dtype == torch.float32 and bool(torch.isfinite(out[1]).all()),
    )
]


def _autocast(call):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return call()


def _autocast_deq_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3)
    deq = deqkit.DEQ(
        lambda z, x: torch.tanh(0.5 * lin(z) + x),
        solver="anderson",
        backward=deqkit.Implicit(solver="anderson"),
        abstol=1e-2,
        reltol=1e-2,
    )
    x = torch.randn(4, 3, requires_grad=True)
    out = deq(x)
    out.float().sum().backward()
    return out, x.grad


@pytest.mark.parametrize("call, check", [c[1:] for c in RIGHT], ids=[c[0] for c in RIGHT])
def test_cases_once_silently_wrong_are_right(call, check):
    assert check(call())


def test_numpy_numbers_are_numbers():
    z, stats = deqkit.solve(
        lambda z: 0.5 * z + 1,
        torch.zeros(2, 3, dtype=torch.float64),
        solver="anderson",
        abstol=np.float32(1e-8),
        reltol=np.float64(0),
        max_steps=np.int64(20),
        m=np.int32(3),
    )
    assert stats.all_converged and torch.allclose(z, torch.full_like(z, 2.0))
    assert deqkit.StepSizeController(rtol=np.float32(1e-6)).rtol == pytest.approx(1e-6)


def test_the_callers_z0_is_never_touched_by_an_in_place_map():
    z0 = torch.ones(2, 3)
    with pytest.raises(ValueError):
        deqkit.solve(lambda z: z.mul_(0.5), z0, solver="picard")
    assert torch.equal(z0, torch.ones(2, 3))


@pytest.mark.parametrize("solver", ["dynamic_ss", "picard"])
def test_a_map_without_fixed_point_is_never_reported_converged(solver):
    # z + 1 has no fixed point; its residual 1 is eventually tiny next to ‖f(z)‖, and z + 1 rounds to z at 2^24.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", deqkit.ConvergenceWarning)
        try:
            _, stats = deqkit.solve(lambda z: z + 1, torch.zeros(4, 8), solver=solver, max_steps=3000)
        except deqkit.DivergenceError as err:
            assert "drift away" in str(err) and "no fixed point" in str(err)
            return
    assert stats.num_converged == 0
    assert any("drift away" in str(w.message) for w in caught)


def test_polish_off_and_on_both_refuse_the_drift():
    # polished, the iterates run away until z + 1 rounds to z and none is accepted; after two failed polishes the
    # flow is left to finish, and fails loudly, as the flow alone does
    for polish in (None, "anderson"):
        with pytest.raises(deqkit.DivergenceError, match="drift away"):
            deqkit.solve(lambda z: z + 1, torch.zeros(4, 8), solver=deqkit.DynamicSS(polish=polish))


def test_a_genuine_far_fixed_point_is_still_found():
    # f(0) = 0.001 but z* = 1: ‖f(z)‖ grows 1000-fold, and the residual falls all the way — no drift.
    z, stats = deqkit.solve(
        lambda z: 0.999 * z + 0.001, torch.zeros(2, 3, dtype=torch.float64), solver="anderson", abstol=1e-10, reltol=0
    )
    assert stats.all_converged and torch.allclose(z, torch.ones_like(z))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", ["dynamic_ss", "anderson", "picard", "broyden"])
def test_low_precision_works_at_tolerances_it_can_reach(dtype, solver):
    block, x = tanh_problem(32, 0.9, batch=8, dtype=dtype)
    with torch.no_grad():
        z, stats = deqkit.solve(lambda z: block(z, x), torch.zeros_like(x), solver=solver, abstol=2e-2, reltol=2e-2)
    assert stats.all_converged and z.dtype == dtype


def test_low_precision_names_precision_when_it_is_the_limit():
    block, x = tanh_problem(32, 0.9, batch=8, dtype=torch.float16)
    with torch.no_grad(), pytest.warns(deqkit.ConvergenceWarning, match="at the precision of float16"):
        deqkit.solve(lambda z: block(z, x), torch.zeros_like(x), solver="picard", abstol=1e-6, reltol=1e-6)


def test_plain_torch_compile_still_works_and_fullgraph_says_why_not():
    deq = _deq(solver="anderson")
    x = _x()
    expected = deq(x)
    assert torch.allclose(torch.compile(deq)(x), expected, atol=1e-6)
    torch.compiler.reset()  # else the frames compiled with graph breaks above are reused
    with pytest.raises(Exception, match="(?s)deqkit: a DEQ runs its solve eagerly.*without fullgraph"):
        torch.compile(deq, fullgraph=True)(x)


def test_saddle_starts_on_the_pitchfork_reach_a_stable_equilibrium():
    from deqkit.problems import system_map

    f = system_map("pitchfork", 1.2)
    for start in [(1e-9, 0.0), (0.0, 1e-9)]:
        for tol in (1e-5, 1e-8, 1e-10):
            z, stats = deqkit.solve(f, torch.tensor([start], dtype=torch.float64), abstol=tol, reltol=tol)
            assert stats.all_converged
            assert torch.allclose(z.abs(), torch.full_like(z, 0.9327), atol=1e-3), (start, tol, z)  # not the saddle


def test_a_rescaled_backward_reports_its_residuals_in_the_gradients_units():
    # the implicit backward solves for grad / 2^k where grad is huge; the warning and the statistics must both give
    # the residual of the gradient the user passed (they disagreed by the factor 2^k)
    block, x = tanh_problem(8, 0.9, batch=2, dtype=torch.float32)
    layer = deqkit.DEQ(block, backward=deqkit.Implicit(max_nfe=3))
    xg = x.clone().requires_grad_()
    with pytest.warns(deqkit.ConvergenceWarning) as caught:
        (layer(xg).sum() * 1e20).backward()
    stats = layer.last_stats.backward
    best = float(stats.residual[~stats.converged].min())
    assert best > 1e10 and f"best residual ‖f(z) − z‖∞ is {best:.3g}" in str(caught[-1].message)
    assert stats.history[0] > 1e18  # the history too: the first residual is the gradient's own size


def test_a_slow_contraction_is_not_called_a_residual_that_never_fell():
    # f = 0.999 z + 1 has the fixed point 1000; Picard's residual falls from 1 to 0.61 in 500 steps while ‖f(z)‖ grows
    # 394-fold: the drift rule holds it, and the warning said "the residual never fell", which was false
    with pytest.warns(deqkit.ConvergenceWarning) as caught:
        deqkit.solve(lambda z: 0.999 * z + 1.0, torch.zeros(2, 3), solver="picard")
    message = str(caught[0].message)
    assert "never fell below half its largest value (for the first: 0.606, largest 1)" in message
    assert "try more steps (max_steps) or solver='anderson'" in message


def test_autocast_precision_is_named_when_it_is_the_limit():
    # f's Linear runs in bfloat16 (eps 7.8e-3): this anderson solve to 1e-5 leaves 9 of 16 samples at 7e-4
    torch.manual_seed(3)
    lin = torch.nn.Linear(4, 4)
    deq = deqkit.DEQ(lambda z, x: torch.tanh(0.5 * lin(z) + x), solver="anderson")
    with pytest.warns(deqkit.ConvergenceWarning, match=r"f runs under torch.autocast\(bfloat16\): where it casts"):
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            deq(torch.randn(16, 4))


def test_an_unconverged_backward_gets_advice_for_a_linear_problem():
    # the implicit backward's u = g + uJ is linear: "damping" or "dynamic_ss, which converges where plain iteration
    # diverges" were the forward's advice; the backward's budget lives in deqkit.Implicit, and full GMRES always works
    from deqkit.teach.implicit_measures import near_one_deq

    model, x = near_one_deq(1.058, backward=deqkit.Implicit("gmres", abstol=1e-6, reltol=0.0, max_steps=40))
    with pytest.warns(deqkit.ConvergenceWarning) as caught:
        model(x.clone().requires_grad_()).sum().backward()
    message = str(caught[0].message)
    assert "This is a linear problem" in message and "deqkit.Implicit(max_steps=..., max_nfe=...)" in message
    assert "deqkit.GMRES(restart=None)" in message and "damping" not in message


def test_a_call_that_raises_leaves_no_earlier_statistics_behind():
    block, x = tanh_problem(4, 0.5, batch=2)
    deq = deqkit.DEQ(block, solver="picard", strict=True, max_steps=2, max_nfe=None)
    with pytest.raises(deqkit.ConvergenceError):
        deq(x)
    assert deq.last_stats is None and deq.last_equilibrium is None
    deq.strict = False
    with pytest.warns(deqkit.ConvergenceWarning):
        deq(x)
    assert deq.last_stats is not None and deq.last_stats.forward.steps == 2
    deq.strict = True
    with pytest.raises(deqkit.ConvergenceError):  # the statistics of the call before are not this call's
        deq(x)
    assert deq.last_stats is None


def test_settings_equal_to_the_defaults_are_not_refused_as_ignored():
    # an explicit default changes nothing, whatever its number type
    from fractions import Fraction

    assert deqkit.DynamicSS(polish=None, polish_below=Fraction(7, 10), polish_stall=np.int64(10)).polish is None
    assert deqkit.DynamicSS(ode_method="euler", step_size=0.5, controller=deqkit.StepSizeController()).step_size == 0.5


def test_torch_func_grad_through_a_solve_still_works():
    # the solve's steps are differentiable: torch.func.grad differentiates through them (z* = 1 / (1 − a))
    def total(a):
        z, _ = deqkit.solve(lambda z: a * z + 1, torch.zeros(1, 2), solver="picard", abstol=1e-10, reltol=0)
        return z.sum()

    assert abs(float(torch.func.grad(total)(torch.tensor(0.5))) - 8.0) < 1e-4

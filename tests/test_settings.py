"""Solvers and gradient methods keep the settings they were built with: a later assignment raises.

Before, ``Phantom(steps=5).steps = 0`` gave zero gradients without a word, and ``DynamicSS().polish_m = 9`` was
ignored (its polishing solver is built in the constructor).
"""

import copy
import inspect
import pickle

import pytest
import torch

import deqkit
from deqkit.adjoint import GRADIENTS
from deqkit.solvers import BACKWARD_SOLVERS

CLASSES = list(BACKWARD_SOLVERS.values()) + list(GRADIENTS.values())
SETTINGS = [
    (cls, name)
    for cls in CLASSES
    for name, p in inspect.signature(cls).parameters.items()
    if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
]


def test_every_class_has_settings_to_check():
    assert {cls for cls, _ in SETTINGS} == set(CLASSES) - {deqkit.Unrolled, deqkit.OneStep}  # these take none


@pytest.mark.parametrize("cls, name", SETTINGS, ids=lambda v: getattr(v, "__name__", v))
def test_a_setting_cannot_be_reassigned(cls, name):
    obj = cls()
    before = repr(obj), getattr(obj, name)
    with pytest.raises(
        AttributeError,
        match=rf"{cls.__name__}\.{name} cannot be changed after construction.*"
        rf"make a new one, e\.g\. {cls.__name__}\({name}=",
    ):
        setattr(obj, name, getattr(obj, name))
    assert (repr(obj), getattr(obj, name)) == before


def test_phantom_with_zero_steps_is_refused_however_it_is_written():
    phantom = deqkit.Phantom(steps=5)
    with pytest.raises(AttributeError, match=r"Phantom\(steps=0\)"):
        phantom.steps = 0
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        deqkit.Phantom(steps=0)
    assert phantom.steps == 5


def test_other_attributes_stay_assignable_and_copies_keep_the_rule():
    class Counting(deqkit.Picard):  # a user's solver with its own bookkeeping
        def run(self, f, z0, monitor):
            self.calls = getattr(self, "calls", 0) + 1
            return super().run(f, z0, monitor)

    solver = Counting(damping=0.5)
    deqkit.solve(lambda z: 0.5 * z + 1, torch.zeros(2, 3), solver=solver)
    assert solver.calls == 1
    for other in (copy.deepcopy(deqkit.Anderson(m=3)), pickle.loads(pickle.dumps(deqkit.Anderson(m=3)))):
        assert other.m == 3
        with pytest.raises(AttributeError, match="cannot be changed"):
            other.m = 4


def test_a_deq_with_strict_reassigned_to_a_non_bool_is_refused():
    deq = deqkit.DEQ(lambda z, x: torch.tanh(0.5 * z + x), solver="anderson")
    with pytest.raises(TypeError, match="strict must be True or False, got 'yes'"):  # when set (was: at the call)
        deq.strict = "yes"
    deq.strict, deq.solver = True, deqkit.Anderson(m=3)  # the layer's own settings stay assignable
    assert deq(torch.zeros(2, 3)).shape == (2, 3) and deq.solver.m == 3


def test_an_integer_beyond_float_range_is_refused_with_the_interval():
    """Before: a raw ``OverflowError: int too large to convert to float`` (e.g. ``Implicit(abstol=10**400)``)."""
    from deqkit.settings import check_real

    with pytest.raises(ValueError, match=r"abstol must be in \[0, 1\], got inf"):
        check_real("abstol", 10**400, 0, 1)
    with pytest.raises(ValueError, match=r"got -inf"):
        check_real("abstol", -(10**400), 0, 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda n: deqkit.Anderson(m=n),
        lambda n: deqkit.GMRES(restart=n),
        lambda n: deqkit.DynamicSS(polish_stall=n),
    ],
)
def test_a_setting_that_sizes_tensors_refuses_an_integer_beyond_64_bits(make):
    """Before: ``Anderson(m=10**30)`` failed in torch (``new_empty(): ... Overflow when unpacking long long``),
    ``DynamicSS(polish_stall=10**30)`` with ``OverflowError: int too big to convert`` mid-solve."""
    with pytest.raises(ValueError, match=r"must be an integer from 1 to 9223372036854775807 \(it sizes or counts"):
        make(10**30)
    make(2**63 - 1)  # the largest accepted


def test_limits_compared_only_in_python_take_any_integer():
    # the step and evaluation limits are only compared with counters in Python: no 64-bit bound applies
    z, stats = deqkit.solve(torch.cos, torch.zeros(2, 3), max_steps=2**64, max_nfe=10**20)
    assert stats.all_converged
    deqkit.Picard(sync_every=10**30)

"""deqkit.teach.menus.solver_menu: the notebooks' solver dropdowns, built from deqkit's registries."""

import pytest

from deqkit import solvers
from deqkit.solvers import GMRES, Anderson, DynamicSS, Picard
from deqkit.teach import digits, fixed_point, implicit_measures, y2x
from deqkit.teach.menus import solver_menu


def test_no_entries_is_every_registered_solver_with_its_defaults():
    menu = solver_menu()
    assert list(menu) == list(solvers.SOLVERS)
    assert all(type(s) is solvers.SOLVERS[name] and s == solvers.SOLVERS[name]() for name, s in menu.items())


def test_entries_keep_their_order_and_labels():
    menu = solver_menu("picard", Picard(damping=0.5), ("mine", Anderson(m=3)), "anderson")
    assert list(menu) == ["picard", "picard(damping=0.5)", "mine", "anderson"]
    assert menu["mine"].m == 3 and menu["picard(damping=0.5)"].damping == 0.5


def test_options_configure_a_registry_name_under_its_name():
    menu = solver_menu(*solvers.BACKWARD_SOLVERS, registry=solvers.BACKWARD_SOLVERS, options={"gmres": {"trace": True}})
    assert menu["gmres"] == GMRES(trace=True) and list(menu) == list(solvers.BACKWARD_SOLVERS)


def test_a_newly_registered_solver_appears_in_a_registry_menu(monkeypatch):
    class Lazy(Picard):
        name = "lazy"

    monkeypatch.setitem(solvers.SOLVERS, "lazy", Lazy)
    assert type(solver_menu()["lazy"]) is Lazy


def test_bad_entries_are_refused_with_the_cause():
    with pytest.raises(ValueError, match="gmres"):
        solver_menu("gmres")  # backward-only: not in the forward registry
    with pytest.raises(ValueError, match="labelled 'anderson'"):
        solver_menu("anderson", Anderson())
    with pytest.raises(ValueError, match=r"options for \['broyden'\]"):
        solver_menu("picard", options={"broyden": {"m": 3}})
    with pytest.raises(TypeError, match="registry name, a configured Solver"):
        solver_menu(42)


def test_the_notebooks_menus_are_built_from_the_registries():
    assert list(fixed_point.METHODS) == ["picard", "picard(damping=0.5)", "anderson", "broyden"]
    assert list(y2x.SOLVERS) == [*solvers.SOLVERS, "dynamic_ss(tsit5)"]
    assert list(digits.SOLVERS) == ["dynamic_ss(tsit5)", *solvers.SOLVERS]
    assert digits.SOLVERS["dynamic_ss(tsit5)"] == DynamicSS(polish=None)
    assert list(implicit_measures.BACKWARD_SOLVERS) == [*solvers.BACKWARD_SOLVERS, "gmres(full)"]
    assert all(getattr(s, "trace", None) for n, s in implicit_measures.BACKWARD_SOLVERS.items() if "gmres" in n)

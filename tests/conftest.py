"""Fixtures and parametrisations over the registries: operators, random networks, penalties, algorithms.

A test asks for a registry by naming its parameter:

* ``operator_name`` — every operator of ``helpers.OPERATORS`` (``op``: a fresh instance of it);
* ``network`` — every random network of ``helpers.NETWORKS`` (``(arch, act, softmax, seed)``);
* ``penalty_name`` — every penalty of ``helpers.PENALTIES``;
* ``algorithm_name`` — every algorithm in ``dbpaper.algorithms.REGISTRY``;
* ``grid_case`` — every ``(network, penalty, algorithm)`` of the random-network grid in which the
  algorithm applies to the penalty on that network: each registered algorithm explicitly, not only
  the one ``"auto"`` picks, so a changed cost constant does not change what is tested.

The grid reads the registry once, when its tests are collected: an algorithm registered in
``conftest.py`` or by a test module imported before it is in it. One registered inside a test (the
``register_algorithm`` fixture, which removes it afterwards) is seen by
``helpers.applicable_algorithms`` and ``helpers.check_grid_case``, which the grid test runs.
"""

from __future__ import annotations

import pytest
import torch

from dbpaper.algorithms import REGISTRY

from .helpers import NETWORKS, OPERATORS, PENALTIES, grid_cases, network_id, temporary_algorithms


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "operator_name" in names:
        metafunc.parametrize("operator_name", sorted(OPERATORS))
    if "network" in names:
        metafunc.parametrize("network", NETWORKS, ids=[network_id(n) for n in NETWORKS])
    if "penalty_name" in names:
        metafunc.parametrize("penalty_name", list(PENALTIES))
    if "algorithm_name" in names:
        metafunc.parametrize("algorithm_name", list(REGISTRY))
    if "grid_case" in names:
        metafunc.parametrize("grid_case", grid_cases())


@pytest.fixture
def op(operator_name):
    """A fresh instance of the operator ``operator_name``."""
    return OPERATORS[operator_name]()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine the
    thread synchronisation of every small operation can cost milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def register_algorithm():
    """``register_algorithm(name, fn, **kw)`` as :func:`dbpaper.algorithms.register_algorithm`; the
    algorithms registered through it are removed from the registry when the test ends."""
    with temporary_algorithms() as register:
        yield register

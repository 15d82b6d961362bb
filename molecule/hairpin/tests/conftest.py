"""The hairpin verifiers: each test module lists its TARGETS, (namespace, address, port), probed once."""
import pytest


@pytest.fixture(scope="module")
def probes(node, probe, request):
    """{(namespace, address, port): [answer, answer]}: two connections to each of the module's TARGETS."""
    return dict((target, probe(node, *target, count=2)) for target in request.module.TARGETS)

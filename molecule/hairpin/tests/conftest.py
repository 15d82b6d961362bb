"""Each remote command costs a round trip through ansible, so a test module sends its probes in one command."""
import pytest


def probe_all(host, targets, count=2, timeout=2):
    """{(namespace, address, port): [answer, ...]}: COUNT connections from each namespace to each address:port."""
    script = "; ".join("echo '== %s %s %s'; lab.py probe %s %s %s --count %d --timeout %s" % (
        ns, addr, port, ns, addr, port, count, timeout) for ns, addr, port in targets)
    answers, current = {}, None
    for line in host.check_output("bash -c %s", script).splitlines():
        if line.startswith("== "):
            ns, addr, port = line.split()[1:4]
            current = (ns, addr, int(port))
            answers[current] = []
        else:
            answers[current].append(line)
    return answers


@pytest.fixture(scope="module")
def probes(host, request):
    """The answers to the test module's TARGETS, a list of (namespace, address, port)."""
    return probe_all(host, request.module.TARGETS)

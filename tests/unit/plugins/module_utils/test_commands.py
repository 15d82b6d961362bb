# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ModuleHost.run_command: real commands, their output whole, stdin exactly as given."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import shutil

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils.commands import ModuleHost


class FakeModule(object):
    """The parts of an AnsibleModule that ModuleHost uses."""
    check_mode = False
    _diff = False

    def __init__(self, environ_update=None):
        self.run_command_environ_update = environ_update or {}

    def get_bin_path(self, name):
        return shutil.which(name)


def test_a_listing_of_megabytes_comes_back_whole_and_data_goes_in_exactly():
    # As big as the iptables-save of 50 000 services, in lines of their length.
    text = "".join("-A NODENET-PRE-0123456789ab -p tcp -m tcp --dport %d -j DNAT --to-destination 10.244.0.1:8080\n" % port
                   for port in range(120000))
    assert ModuleHost(FakeModule()).run_command(["cat"], data=text) == (0, text, "")
    assert ModuleHost(FakeModule()).run_command(["cat"], data="no newline added") == (0, "no newline added", "")


def test_without_data_stdin_is_empty():
    assert ModuleHost(FakeModule()).run_command(["cat"]) == (0, "", "")


def test_rc_stderr_and_the_module_environment():
    host = ModuleHost(FakeModule(dict(NODENET_PROBE="C")))
    assert host.run_command(["sh", "-c", 'echo "$NODENET_PROBE $1"; echo failed >&2; exit 3', "sh", "$HOME"]) == (3, "C $HOME\n", "failed\n")


def test_a_missing_binary_raises_enoent():
    with pytest.raises(OSError) as raised:
        ModuleHost(FakeModule()).run_command(["nodenet-no-such-binary"])
    assert raised.value.errno == errno.ENOENT

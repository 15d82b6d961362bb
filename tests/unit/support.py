# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers the unit tests share."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type


class FakeHost(object):
    """The ``host`` an engine takes (module_utils/commands.py), for tests: ``runner(argv)`` or
    ``runner(argv, data)`` answers commands, ``which(name)`` finds binaries, warnings are collected."""

    def __init__(self, runner=None, which=None, check_mode=False, diff=False):
        self.runner = runner
        self.which = which or (lambda name: "/usr/sbin/" + name)
        self.check_mode = check_mode
        self.diff = diff
        self.warnings = []

    def run_command(self, argv, data=None):
        if self.runner is None:
            raise AssertionError("unexpected command %r" % (argv,))
        return self.runner(argv) if data is None else self.runner(argv, data)

    def warn(self, message):
        self.warnings.append(message)

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers the unit tests share."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import shutil
import subprocess


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


class Netns(object):
    """A throwaway network namespace, held open by a ``sleep`` that ``unshare --net`` started and gone once closed.

    ``run(argv, data=None)`` -> (rc, stdout, stderr) runs a command inside it (``env``: its environment);
    ``enter`` is the nsenter prefix for commands started otherwise."""

    def __init__(self, env=None):
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "echo ready; exec sleep 600"],
                                       stdout=subprocess.PIPE, universal_newlines=True)
        if self.holder.stdout.readline() != "ready\n":
            self.close()
            raise AssertionError("unshare --net did not start")
        self.path = "/proc/%d/ns/net" % self.holder.pid
        self.enter = ["nsenter", "--net=" + self.path, "--"]
        self.env = env

    def run(self, argv, data=None):
        done = subprocess.run(self.enter + list(argv), input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, check=False, env=self.env)
        return done.returncode, done.stdout, done.stderr

    def close(self):
        self.holder.kill()
        self.holder.wait()
        self.holder.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def can_make_netns():
    return os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("nsenter"))

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one contract between a module file and its engine in module_utils.

Every engine is ``engine(params, host) -> result`` and raises ModuleFailure. ``host`` is what the
engine may ask of the node: run a command (``host.run_command(argv, data=None)`` -> ``(rc, stdout,
stderr)``), find a binary (``host.which(name)``), warn (``host.warn(message)``), and whether this is
check mode or diff mode (``host.check_mode``, ``host.diff``). ModuleHost builds it from an
AnsibleModule; unit tests pass their own. ``run_module`` is a module file's whole ``main()``.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_text


class ModuleFailure(Exception):
    """A failure the module reports with ``fail_json``; ``result`` holds what is known so far."""

    def __init__(self, message, result=None):
        super(ModuleFailure, self).__init__(message)
        self.result = result or {}


class ModuleHost(object):
    """The node as an engine sees it, through an AnsibleModule."""

    def __init__(self, module):
        self.module = module
        self.check_mode = module.check_mode
        self.diff = module._diff

    def which(self, name):
        """The path of binary ``name`` or None; also searches /sbin and /usr/sbin, which a remote PATH may lack."""
        return self.module.get_bin_path(name)

    def run_command(self, argv, data=None):
        """``(rc, stdout, stderr)`` of ``argv`` (no shell, nothing expanded), ``data`` on stdin exactly as given.

        Not AnsibleModule.run_command, which grows the output it reads by concatenation, 32 KiB at a time: quadratic
        in its size, seconds for the listing of 50 000 rules. communicate() joins what it reads once.
        A missing binary raises OSError(ENOENT), which callers turn into a message naming what needed it.
        """
        executable = self.which(argv[0])
        if executable is None:
            raise OSError(errno.ENOENT, "command not found", argv[0])
        process = subprocess.Popen([executable] + list(argv[1:]), stdin=subprocess.DEVNULL if data is None else subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=dict(os.environ, **self.module.run_command_environ_update))
        stdout, stderr = process.communicate(None if data is None else to_bytes(data, errors="surrogate_or_strict"))
        return process.returncode, to_text(stdout, errors="surrogate_or_strict"), to_text(stderr, errors="surrogate_or_strict")

    def warn(self, message):
        self.module.warn(message)


def run_module(argument_spec, engine, **module_options):
    """A module's ``main()``: parse the arguments, run ``engine(params, host)``, report its result.

    ``module_options`` go to AnsibleModule (mutually_exclusive, required_if ...); every module of
    the collection supports check mode. A ``diff`` in the result is returned in diff mode only.
    """
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, **module_options)
    host = ModuleHost(module)
    try:
        result = engine(module.params, host)
    except ModuleFailure as failure:
        module.fail_json(msg=str(failure), **failure.result)
    if not host.diff:
        result.pop("diff", None)
    module.exit_json(**result)

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``run_command(argv)`` callable that the module_utils take, built from an AnsibleModule."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno


def command_runner(module):
    """``run_command(argv) -> (rc, stdout, stderr)`` that finds ``argv[0]`` as get_bin_path does.

    get_bin_path also searches /sbin and /usr/sbin, which a remote PATH may lack; a missing
    command raises OSError(ENOENT), which the callers turn into a message naming what needed it.
    """
    def run_command(argv):
        executable = module.get_bin_path(argv[0])
        if executable is None:
            raise OSError(errno.ENOENT, "command not found", argv[0])
        return module.run_command([executable] + list(argv[1:]))
    return run_command

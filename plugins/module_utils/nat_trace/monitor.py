# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``nft -a monitor`` as a child process whose lines are read as they come, with a timeout.

The monitor prints both ruleset changes (which tell that it listens) and trace events. It is the one
command of the collection that runs while others do, so it does not go through ``run_command``;
its argv is a list (no shell) and it is stopped (SIGTERM, then SIGKILL) when the trace ends.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import select
import subprocess
import time


class MonitorError(Exception):
    """The monitor could not start, or it ended before the trace did; the message says what it printed."""


class NftMonitor(object):
    def __init__(self, argv):
        self.argv = list(argv)
        self._buffer = b""
        try:
            self._process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as error:
            raise MonitorError("cannot run %s: %s" % (" ".join(self.argv), error.strerror or error))

    def readline(self, timeout):
        """The next line (without its newline), or None when none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, dummy, dummy = select.select([self._process.stdout], [], [], remaining)
            if not ready:
                return None
            data = os.read(self._process.stdout.fileno(), 65536)
            if not data:
                printed = self._process.stderr.read().decode("utf-8", "replace").strip()
                raise MonitorError("%s ended (rc=%s): %s" % (" ".join(self.argv), self._process.wait(), printed))
            self._buffer += data
        line, dummy, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def stop(self):
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            stream.close()

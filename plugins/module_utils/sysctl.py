# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel parameters under /proc/sys, kernel modules, and the files that persist them.

Every host path is taken below a ``root`` directory (modules pass "/"), so unit tests run on
a temporary tree. Keys use the sysctl(8) dotted form; a dot inside one component (the
interface ``eth0.100``) is written as '/' in the key (``net.ipv4.conf.eth0/100.forwarding``).
Build keys from components with ``key_from_parts`` instead of joining strings.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import tempfile


# Key names the modules share (forwarding and conntrack set them, nat_info reads them).
IPV4_FORWARD = "net.ipv4.ip_forward"
IPV6_FORWARD = "net.ipv6.conf.all.forwarding"
BRIDGE_KEYS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
MAX_KEY = "net.netfilter.nf_conntrack_max"


class SysctlError(Exception):
    """A key, file or kernel module could not be read, written or loaded; the message names it."""


def host_path(root, path):
    """The absolute host ``path`` as found below ``root``."""
    return os.path.join(root, path.lstrip("/"))


def key_from_parts(parts):
    """Dotted key from /proc/sys path components, e.g. ["net", "ipv4", "conf", "eth0.100", "forwarding"]."""
    for part in parts:
        if not part or "/" in part or part in (".", ".."):
            raise ValueError("invalid sysctl key component %r" % (part,))
    return ".".join(part.replace(".", "/") for part in parts)


def conf_key(family, interface, leaf):
    """``net.<family>.conf.<interface>.<leaf>``; a dotted interface name (VLAN eth0.100) is encoded."""
    return key_from_parts(["net", family, "conf", interface, leaf])


def key_parts(key):
    """The /proc/sys path components of a dotted key (inverse of ``key_from_parts``)."""
    return [part.replace("/", ".") for part in key.split(".")]


def key_path(root, key):
    return os.path.join(host_path(root, "/proc/sys"), *key_parts(key))


def key_problem(root, key):
    """None when ``key`` exists and may be written, else why not (naming the key and its path)."""
    path = key_path(root, key)
    if not os.path.isfile(path):
        return "%s does not exist (%s)" % (key, path)
    # /proc/sys reports read-only keys (and read-only mounts) through access(2), even to root.
    if not os.access(path, os.W_OK):
        return "%s is not writable (%s)" % (key, path)
    return None


def read_key(root, key):
    """The value of ``key`` with whitespace normalized (multi-value keys are tab separated), or None if absent."""
    path = key_path(root, key)
    try:
        with open(path) as handle:
            return " ".join(handle.read().split())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SysctlError("cannot read %s (%s): %s" % (key, path, exc.strerror or exc))


def write_key(root, key, value):
    path = key_path(root, key)
    try:
        # The kernel reports a refused value (EINVAL) on write or on close: both are inside the try.
        with open(path, "w") as handle:
            handle.write("%s\n" % value)
    except OSError as exc:
        raise SysctlError("cannot set %s to %r (%s): %s" % (key, value, path, exc.strerror or exc))


def apply_keys(root, changes):
    """Write each (key, before, after) in order; if one fails, restore those already written and raise.

    Restores run in write order, not reverse: some writes cascade (net.ipv4.ip_forward resets every
    interface's forwarding) and a later, more specific key must win again.
    """
    written = []
    for key, before, after in changes:
        try:
            write_key(root, key, after)
        except SysctlError as exc:
            raise SysctlError("%s; %s" % (exc, _restore(root, written)))
        written.append((key, before))


def _restore(root, written):
    restored, failed = [], []
    for key, before in written:
        if before is None:
            continue
        try:
            write_key(root, key, before)
            restored.append(key)
        except SysctlError as exc:
            failed.append(str(exc))
    if failed:
        return "restoring the keys already written failed too: %s" % "; ".join(failed)
    if restored:
        return "restored the keys already written: %s" % ", ".join(restored)
    return "nothing was changed"


def render_sysctl_conf(values, header_lines=(), sort_key=None):
    """sysctl.d text: ``header_lines`` as comments, then one ``key = value`` per key in sorted order."""
    lines = [("# %s" % line).rstrip() for line in header_lines]
    lines.extend("%s = %s" % (key, values[key]) for key in sorted(values, key=sort_key))
    return "".join(line + "\n" for line in lines)


def parse_sysctl_conf(text):
    """({key: value}, [comment lines without their '# ']) from sysctl.d text; blank lines are skipped."""
    values, comments = {}, []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("#", ";")):
            comments.append(line[1:].strip())
        elif "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = " ".join(value.split())
    return values, comments


def read_text(path):
    """The text of ``path``, or None if it does not exist."""
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SysctlError("cannot read %s: %s" % (path, exc.strerror or exc))


def file_problem(path):
    """None when ``path`` can be (re)written or removed, else why not."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return "%s is a directory" % path
    # write_file_atomic creates missing directories: the nearest existing one must be writable.
    directory = os.path.dirname(path)
    while not os.path.lexists(directory):
        directory = os.path.dirname(directory)
    if not os.path.isdir(directory):
        return "%s: %s is not a directory" % (path, directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        return "%s: directory %s is not writable" % (path, directory)
    return None


NAME_MAX = 255


def owned_file_problem(path):
    """Why ``path`` cannot name an owned file (a sysctl_file option), or None."""
    if not path or not os.path.isabs(path):
        return "is not an absolute path"
    if path.endswith("/") or os.path.basename(path) in (".", ".."):
        return "names a directory, not a file"
    if any(len(part.encode("utf-8")) > NAME_MAX for part in path.split("/")):
        return "has a part longer than %d bytes" % NAME_MAX
    if any(ord(char) < 32 or char == "\x7f" for char in path):
        return "holds a control character"
    return None


def write_file_atomic(path, text, mode=0o644):
    """Replace ``path`` with ``text`` (str, or bytes) atomically (temp file in the same directory, then rename)."""
    directory = os.path.dirname(path)
    temp_path = None
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, temp_path = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, mode)
        os.rename(temp_path, path)
    except OSError as exc:
        if temp_path is not None and os.path.lexists(temp_path):
            os.unlink(temp_path)
        raise SysctlError("cannot write %s: %s" % (path, exc.strerror or exc))


def write_or_remove(path, text):
    """Write ``text`` to ``path`` atomically, or remove ``path`` when ``text`` is None."""
    if text is None:
        remove_file(path)
    else:
        write_file_atomic(path, text)


def remove_file(path):
    """Remove ``path``; True if it existed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SysctlError("cannot remove %s: %s" % (path, exc.strerror or exc))
    return True


def kernel_module_loaded(root, name):
    return os.path.isdir(host_path(root, "/sys/module/%s" % name))


def load_kernel_module(run_command, name):
    """Load ``name`` with ``modprobe``; ``run_command(argv)`` returns (rc, stdout, stderr) as AnsibleModule's does."""
    argv = ["modprobe", name]
    try:
        rc, dummy, err = run_command(argv)
    except OSError as exc:
        raise SysctlError("cannot load kernel module %s: cannot run %s: %s" % (name, " ".join(argv), exc.strerror or exc))
    if rc != 0:
        raise SysctlError(
            "cannot load kernel module %s: %s exited with %d: %s (inside a container, load it on the host)"
            % (name, " ".join(argv), rc, err.strip()))

# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection tracking tuning: table size, hash size, timeouts, and their persistence.

Every host path is taken below ``root`` (modules pass "/"), commands run through a
``run_command(argv)`` callable returning ``(rc, stdout, stderr)``, so the whole flow is
unit-testable on a temporary tree.

Read-only keys: outside the initial network namespace (in a container) the kernel refuses
``nf_conntrack_max`` (EACCES or EINVAL, although the file may look writable) and the hash size
(EOPNOTSUPP); a read-only /proc/sys or /sys mount gives EROFS. Nothing tells these cases apart
reliably before writing, so a real run writes each key that must change and classifies the
error; check mode can only use access(2), which catches read-only mounts and keys the kernel
marks read-only, but not the hash size inside a privileged container.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import errno
import os

from ansible_collections.nodenet.nat.plugins.module_utils.commands import ModuleFailure
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import owned_file_problem
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import (
    MAX_KEY, SysctlError, file_problem, host_path, key_path, load_kernel_module, read_text, render_sysctl_conf, write_or_remove,
)

CONNTRACK_KERNEL_MODULE = "nf_conntrack"
HASHSIZE_PATH = "/sys/module/nf_conntrack/parameters/hashsize"
CPU_ONLINE_PATH = "/sys/devices/system/cpu/online"
BE_LIBERAL_KEY = "net.netfilter.nf_conntrack_tcp_be_liberal"
# Suboption of ``timeouts`` -> sysctl key (seconds).
TIMEOUT_KEYS = collections.OrderedDict([
    ("tcp_established", "net.netfilter.nf_conntrack_tcp_timeout_established"),
    ("tcp_close_wait", "net.netfilter.nf_conntrack_tcp_timeout_close_wait"),
    ("tcp_time_wait", "net.netfilter.nf_conntrack_tcp_timeout_time_wait"),
    ("udp", "net.netfilter.nf_conntrack_udp_timeout"),
    ("udp_stream", "net.netfilter.nf_conntrack_udp_timeout_stream"),
    ("generic", "net.netfilter.nf_conntrack_generic_timeout"),
])
# kube-proxy sizes the hash table at a quarter of the table size.
MAX_PER_HASH_BUCKET = 4
ON_READONLY = ("fail", "warn", "skip")
DEFAULT_SYSCTL_FILE = "/etc/sysctl.d/90-nodenet-nat-conntrack.conf"
STATES = ("present", "absent")
# The modprobe.d and modules-load.d companions of the sysctl file carry its file name.
MODPROBE_DIR = "/etc/modprobe.d"
MODULES_LOAD_DIR = "/etc/modules-load.d"
FILE_HEADER = "Managed by nodenet.nat.conntrack; changes here are overwritten."

_INT_MAX = 2 ** 31 - 1
# Timeouts are kept in jiffies as a C int: with HZ up to 1000 this is the largest safe value.
_TIMEOUT_MAX = _INT_MAX // 1000
# What the kernel answers when a key cannot be set from here (see the module docstring).
_READ_ONLY_ERRNOS = frozenset([errno.EINVAL, errno.EACCES, errno.EPERM, errno.EROFS, errno.EOPNOTSUPP])
_READ_ONLY_HINT = ("nf_conntrack_max and the hash size can only be set from the initial network namespace "
                   "(on the host, not in a container)")

# One value this module manages: ``name`` as reported (sysctl key or /sys path), ``path`` below root,
# ``raise_only``: never lower a higher value found on the host.
ARGUMENT_SPEC = dict(
    max=dict(type="int"),
    max_per_core=dict(type="int"),
    min=dict(type="int"),
    raise_only=dict(type="bool", default=True),
    hashsize=dict(type="int"),
    # A dict {TIMEOUT_KEYS option: seconds}, checked by checked_timeouts: ansible's own check of a dict
    # with suboptions fails without naming the option.
    timeouts=dict(type="raw"),
    tcp_be_liberal=dict(type="bool"),
    on_readonly=dict(type="str", choices=list(ON_READONLY), default="warn"),
    persist=dict(type="bool", default=True),
    sysctl_file=dict(type="path", default=DEFAULT_SYSCTL_FILE),
    state=dict(type="str", choices=list(STATES), default="present"),
)
MODULE_OPTIONS = dict(mutually_exclusive=[("max", "max_per_core")], required_by=dict(min="max_per_core"))

Setting = collections.namedtuple("Setting", ["name", "path", "desired", "raise_only"])


class ConntrackError(ModuleFailure):
    """A failure the module reports with ``fail_json``; ``result`` holds what is known so far."""


def checked_timeouts(value):
    """{option: int} of the ``timeouts`` option; ValueError naming the field of the first bad entry."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("timeouts: %r is not a dict of timeouts (%s)" % (value, ", ".join(TIMEOUT_KEYS)))
    timeouts = {}
    for option, seconds in value.items():
        if option not in TIMEOUT_KEYS:
            raise ValueError("timeouts.%s: is not a timeout (valid: %s)" % (option, ", ".join(TIMEOUT_KEYS)))
        if seconds is None:
            continue
        if isinstance(seconds, bool) or not (isinstance(seconds, int) or (isinstance(seconds, str) and seconds.strip().isdigit())):
            raise ValueError("timeouts.%s: %r is not a number of seconds" % (option, seconds))
        timeouts[option] = int(seconds)
    return timeouts


def validate_params(params):
    """Raise ValueError naming the field and value of the first out-of-range number.

    The argument spec checks types, choices and exclusions; ranges are checked here.
    """
    timeouts = checked_timeouts(params.get("timeouts"))
    checks = [(field, params.get(field), low, _INT_MAX)
              for field, low in (("max", 1), ("max_per_core", 1), ("min", 0), ("hashsize", 1))]
    checks.extend(("timeouts.%s" % option, timeouts.get(option), 1, _TIMEOUT_MAX) for option in TIMEOUT_KEYS)
    for field, value, low, high in checks:
        if value is not None and not low <= value <= high:
            raise ValueError("%s must be between %d and %d, got %r" % (field, low, high, value))


def parse_cpu_list(text):
    """Number of CPUs in a kernel CPU list such as "0-3,6,8-9"."""
    count = 0
    for part in text.strip().split(","):
        first, dummy, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def online_cpus(root):
    path = host_path(root, CPU_ONLINE_PATH)
    text = read_text(path)
    if not text or not text.strip():
        raise ConntrackError("cannot count CPUs for max_per_core: %s is missing or empty" % path)
    return parse_cpu_list(text)


def conntrack_max(params, cpus):
    """The table size asked for: ``max``, or kube-proxy's max(min, max_per_core * CPUs); None if unmanaged."""
    if params.get("max") is not None:
        return params["max"]
    if params.get("max_per_core") is None:
        return None
    scaled = max(params.get("min") or 0, params["max_per_core"] * cpus)
    if scaled > _INT_MAX:
        raise ValueError("max_per_core (%d) x %d CPUs = %d exceeds the kernel limit %d"
                         % (params["max_per_core"], cpus, scaled, _INT_MAX))
    return scaled


def desired_settings(params, root, cpus):
    """[Setting] in write order: the keys a container may refuse first, so ``on_readonly: fail``
    stops before the timeouts change."""
    raise_only = params.get("raise_only", True)
    table_size = conntrack_max(params, cpus)
    hashsize = params.get("hashsize")
    if hashsize is None and table_size is not None:
        hashsize = max(1, table_size // MAX_PER_HASH_BUCKET)
    settings = []
    if table_size is not None:
        settings.append(Setting(MAX_KEY, key_path(root, MAX_KEY), table_size, raise_only))
    if hashsize is not None:
        settings.append(Setting(HASHSIZE_PATH, host_path(root, HASHSIZE_PATH), hashsize, raise_only))
    timeouts = checked_timeouts(params.get("timeouts"))
    for option, key in TIMEOUT_KEYS.items():
        if timeouts.get(option) is not None:
            settings.append(Setting(key, key_path(root, key), timeouts[option], False))
    if params.get("tcp_be_liberal") is not None:
        settings.append(Setting(BE_LIBERAL_KEY, key_path(root, BE_LIBERAL_KEY), int(params["tcp_be_liberal"]), False))
    return settings


def read_value(path):
    """The integer in ``path`` (a sysctl or module parameter), or None when it does not exist."""
    text = read_text(path)
    return None if text is None else int(text.split()[0])


def target_value(setting, current):
    """The value ``setting`` should have given the ``current`` one (None: unknown, module not loaded yet)."""
    if current is not None and setting.raise_only:
        return max(current, setting.desired)
    return setting.desired


def _write_value(path, value):
    # The kernel may refuse on write or on close: both are inside the caller's try.
    with open(path, "w") as handle:
        handle.write("%d\n" % value)


def render_files(settings, after, sysctl_file):
    """{host path: text or None (absent)} persisting the ``after`` values of ``settings``.

    The modules-load.d entry makes systemd load nf_conntrack before systemd-sysctl runs, without
    which the net.netfilter keys of the sysctl.d file do not exist yet at boot.
    """
    keys = dict((setting.name, after[setting.name]) for setting in settings if setting.name != HASHSIZE_PATH)
    hashsize = [after[setting.name] for setting in settings if setting.name == HASHSIZE_PATH]
    header = "# %s\n" % FILE_HEADER
    name = os.path.basename(sysctl_file)
    return {
        sysctl_file: render_sysctl_conf(keys, [FILE_HEADER]) if keys else None,
        os.path.join(MODPROBE_DIR, name): "%soptions %s hashsize=%d\n" % (header, CONNTRACK_KERNEL_MODULE, hashsize[0]) if hashsize else None,
        os.path.join(MODULES_LOAD_DIR, name): "%s%s\n" % (header, CONNTRACK_KERNEL_MODULE),
    }


def _with_hint(setting, reason):
    if setting.name in (MAX_KEY, HASHSIZE_PATH):
        return "%s; %s" % (reason, _READ_ONLY_HINT)
    return reason


class ConntrackTuner(object):
    """One run: load nf_conntrack, set the keys, persist them; ``result`` collects what happened."""

    def __init__(self, params, root, host):
        self.params = params
        self.root = root
        self.run_command = host.run_command
        self.check_mode = host.check_mode
        self.warn = host.warn
        self.sysctl_file = params.get("sysctl_file") or DEFAULT_SYSCTL_FILE
        self.result = dict(changed=False, loaded_module=False, settings={}, skipped_keys=[], files={})
        self.diff = []

    def fail(self, message):
        raise ConntrackError(message, self.result)

    def run(self):
        """The module result; raises ConntrackError (with the partial result) on failure."""
        problem = owned_file_problem(self.sysctl_file)
        if problem:
            self.fail("sysctl_file: %r %s" % (self.sysctl_file, problem))
        if self.params.get("state", "present") == "absent":
            return self._remove_files()
        try:
            validate_params(self.params)
            cpus = online_cpus(self.root) if self.params.get("max_per_core") is not None else None
            settings = desired_settings(self.params, self.root, cpus)
        except ValueError as exc:
            self.fail(str(exc))
        was_loaded = os.path.exists(key_path(self.root, MAX_KEY))
        before = dict((setting.name, read_value(setting.path)) for setting in settings) if was_loaded else {}
        planned = dict((setting.name, target_value(setting, before.get(setting.name))) for setting in settings)
        persist = self.params.get("persist", True)
        if persist:
            # Refuse before the kernel changes, not halfway.
            self._check_writable(render_files(settings, planned, self.sysctl_file))
        if not was_loaded:
            self._load_conntrack()
            before = dict((setting.name, read_value(setting.path)) for setting in settings) if not self.check_mode else {}
        after = self._set_values(settings, before)
        if persist:
            skipped = set(entry["key"] for entry in self.result["skipped_keys"])
            kept = [setting for setting in settings if setting.name not in skipped]
            self._persist(render_files(kept, after, self.sysctl_file))
        if self.diff:
            self.result["diff"] = self.diff
        return self.result

    def _remove_files(self):
        # The kernel has no record of the values before the collection's; they stay until reboot.
        files = dict((path, None) for path in render_files([], {}, self.sysctl_file))
        self._check_writable(files)
        self._persist(files)
        if self.diff:
            self.result["diff"] = self.diff
        return self.result

    def _load_conntrack(self):
        self.result["loaded_module"] = self.result["changed"] = True
        if self.check_mode:
            return
        try:
            load_kernel_module(self.run_command, CONNTRACK_KERNEL_MODULE)
        except SysctlError as exc:
            self.fail(str(exc))
        if not os.path.exists(key_path(self.root, MAX_KEY)):
            self.fail("modprobe %s succeeded but %s is still missing" % (CONNTRACK_KERNEL_MODULE, key_path(self.root, MAX_KEY)))

    def _set_values(self, settings, before):
        """Write the values that differ; {name: value after the run (predicted in check mode)}."""
        after = {}
        for setting in settings:
            current = before.get(setting.name)
            if current is None and not self.check_mode:
                self.fail("%s does not exist (%s) although %s is loaded" % (setting.name, setting.path, CONNTRACK_KERNEL_MODULE))
            wanted = target_value(setting, current)
            after[setting.name] = wanted
            if wanted != current:
                reason = self._write(setting, wanted)
                if reason:
                    self._read_only(setting.name, reason)
                    after[setting.name] = current
                else:
                    self.result["changed"] = True
            self.result["settings"][setting.name] = dict(before=current, after=after[setting.name])
        changed = [setting.name for setting in settings if after[setting.name] != before.get(setting.name)]
        if changed:
            self.diff.append(dict(
                before_header="kernel settings", after_header="kernel settings",
                before="".join("%s = %s\n" % (name, before.get(name)) for name in changed),
                after="".join("%s = %s\n" % (name, after[name]) for name in changed)))
        return after

    def _write(self, setting, value):
        """None once ``value`` is written (or would be), else why ``setting`` is read-only."""
        if self.check_mode:
            if os.path.exists(setting.path) and not os.access(setting.path, os.W_OK):
                return _with_hint(setting, "may be read-only: %s is not writable" % setting.path)
            return None
        try:
            _write_value(setting.path, value)
        except (IOError, OSError) as exc:
            if exc.errno in _READ_ONLY_ERRNOS:
                return _with_hint(setting, "read-only: writing %s failed: %s" % (setting.path, os.strerror(exc.errno)))
            self.fail("cannot set %s to %d (%s): %s" % (setting.name, value, setting.path, exc.strerror or exc))
        return None

    def _read_only(self, name, reason):
        policy = self.params.get("on_readonly", "warn")
        self.result["skipped_keys"].append(dict(key=name, reason=reason))
        if policy == "fail":
            self.fail("%s: %s" % (name, reason))
        if policy == "warn":
            self.warn("%s left unchanged: %s" % (name, reason))

    def _check_writable(self, files):
        for path, text in files.items():
            full_path = host_path(self.root, path)
            try:
                problem = read_text(full_path) != text and file_problem(full_path)
            except SysctlError as exc:
                problem = str(exc)
            if problem:
                self.fail("cannot persist the conntrack settings: %s" % problem)

    def _persist(self, files):
        for path in sorted(files):
            text = files[path]
            full_path = host_path(self.root, path)
            current = read_text(full_path)
            if current == text:
                self.result["files"][path] = "absent" if text is None else "unchanged"
                continue
            self.result["files"][path] = "removed" if text is None else "written"
            self.result["changed"] = True
            self.diff.append(dict(before_header=path, after_header=path, before=current or "", after=text or ""))
            if self.check_mode:
                continue
            try:
                write_or_remove(full_path, text)
            except SysctlError as exc:
                self.fail(str(exc))


def tune(params, host, root="/"):
    """The module's engine (commands.run_module): apply the conntrack ``params`` below ``root``; the module result.

    Raises ConntrackError, whose ``result`` holds what was done before the failure.
    """
    tuner = ConntrackTuner(params, root, host)
    try:
        return tuner.run()
    except SysctlError as exc:
        raise ConntrackError(str(exc), tuner.result)

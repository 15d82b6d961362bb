# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The forwarding module: params -> desired sysctls -> compare with the host -> apply and persist.

state=present writes the managed keys at runtime and, with persist, renders them into the owned
sysctl.d file. The file's header records each key's value from before the module first set it;
state=absent writes those values back and removes the file (and its modules-load.d companion).
Every key, interface and file is checked before the first write; a write that still fails
restores what was already changed.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import os

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.nodenet.nat.plugins.module_utils import sysctl
from ansible_collections.nodenet.nat.plugins.module_utils.commands import ModuleFailure
from ansible_collections.nodenet.nat.plugins.module_utils.sysctl import BRIDGE_KEYS, IPV4_FORWARD, IPV6_FORWARD, conf_key

# Writing one of these sets the forwarding key of every interface of that family.
CASCADING_KEYS = {IPV4_FORWARD: "ipv4", "net.ipv4.conf.all.forwarding": "ipv4", IPV6_FORWARD: "ipv6"}
RP_FILTER_VALUES = {"off": "0", "strict": "1", "loose": "2"}
BRIDGE_MODULE = "br_netfilter"
MODULES_LOAD_DIR = "/etc/modules-load.d"
OWNER_LINE = "Managed by nodenet.nat.forwarding; rewritten on every run, do not edit."
RECORD_LINE = "Values before nodenet.nat.forwarding first set them (state=absent writes them back):"
RESTORE_PREFIX = "restore "
IFNAMSIZ = 16
DEFAULT_SYSCTL_FILE = "/etc/sysctl.d/90-nodenet-nat.conf"
STATES = ("present", "absent")

_RP_FILTER_CHOICES = sorted(RP_FILTER_VALUES)
INTERFACE_KEYS = ("name", "forwarding", "ipv6_forwarding", "rp_filter", "route_localnet")
ARGUMENT_SPEC = dict(
    ipv4=dict(type="bool"),
    ipv6=dict(type="bool"),
    rp_filter=dict(type="str", choices=_RP_FILTER_CHOICES),
    route_localnet=dict(type="bool"),
    bridge_nf_call_iptables=dict(type="bool"),
    # A list of dicts {name, forwarding, ipv6_forwarding, rp_filter, route_localnet}, checked by desired_settings:
    # ansible's own check of such a list fails without naming the option.
    interfaces=dict(type="raw"),
    persist=dict(type="bool", default=True),
    sysctl_file=dict(type="path", default=DEFAULT_SYSCTL_FILE),
    state=dict(type="str", choices=list(STATES), default="present"),
)

# One key the task manages; ``field`` names the option it comes from, for error messages.
Setting = collections.namedtuple("Setting", ["key", "value", "field"])

# A file to rewrite (``after`` text) or remove (``after`` None); ``shown`` is its path on the host.
FileChange = collections.namedtuple("FileChange", ["path", "shown", "before", "after"])


class ForwardingError(ModuleFailure):
    """Bad input, or a host that cannot take the change; nothing is left half changed."""


def _flag(value, field):
    try:
        return "1" if boolean(value, strict=True) else "0"
    except TypeError:
        raise ForwardingError("%s: %r is not a boolean" % (field, value))


def _rp_filter(value, field):
    if not isinstance(value, str) or value not in RP_FILTER_VALUES:
        raise ForwardingError("%s: %r is not one of %s" % (field, value, ", ".join(sorted(RP_FILTER_VALUES))))
    return RP_FILTER_VALUES[value]


# Per-interface option -> (family, leaf key, converter).
INTERFACE_OPTIONS = (
    ("forwarding", "ipv4", "forwarding", _flag),
    ("ipv6_forwarding", "ipv6", "forwarding", _flag),
    ("rp_filter", "ipv4", "rp_filter", _rp_filter),
    ("route_localnet", "ipv4", "route_localnet", _flag),
)


def _check_interface_name(name, field):
    # The kernel's dev_valid_name().
    if (not isinstance(name, str) or not name or len(name) >= IFNAMSIZ or name in (".", "..")
            or any(char in "/:" or char.isspace() for char in name)):
        raise ForwardingError("%s: %r is not a valid interface name" % (field, name))


def desired_settings(params):
    """[Setting] for every option that is set (None leaves its keys unmanaged); validates params."""
    settings = []
    if params.get("ipv4") is not None:
        settings.append(Setting(IPV4_FORWARD, _flag(params["ipv4"], "ipv4"), "ipv4"))
    if params.get("ipv6") is not None:
        settings.append(Setting(IPV6_FORWARD, _flag(params["ipv6"], "ipv6"), "ipv6"))
    if params.get("rp_filter") is not None:
        value = _rp_filter(params["rp_filter"], "rp_filter")
        settings.extend(Setting(conf_key("ipv4", scope, "rp_filter"), value, "rp_filter") for scope in ("all", "default"))
    if params.get("route_localnet") is not None:
        settings.append(Setting(conf_key("ipv4", "all", "route_localnet"), _flag(params["route_localnet"], "route_localnet"), "route_localnet"))
    if params.get("bridge_nf_call_iptables") is not None:
        value = _flag(params["bridge_nf_call_iptables"], "bridge_nf_call_iptables")
        settings.extend(Setting(key, value, "bridge_nf_call_iptables") for key in BRIDGE_KEYS)
    seen = {}
    interfaces = params.get("interfaces") or []
    if not isinstance(interfaces, list):
        raise ForwardingError("interfaces: %r is not a list of interfaces" % (interfaces,))
    for index, interface in enumerate(interfaces):
        prefix = "interfaces[%d]" % index
        if not isinstance(interface, dict):
            raise ForwardingError("%s: %r is not a dict of interface options" % (prefix, interface))
        unknown = sorted(str(key) for key in interface if key not in INTERFACE_KEYS)
        if unknown:
            raise ForwardingError("%s.%s: is not an interface option (valid: %s)" % (prefix, unknown[0], ", ".join(INTERFACE_KEYS)))
        name = interface.get("name")
        _check_interface_name(name, prefix + ".name")
        if name in seen:
            raise ForwardingError("%s.name: %r is already listed as interfaces[%d]" % (prefix, name, seen[name]))
        seen[name] = index
        for option, family, leaf, convert in INTERFACE_OPTIONS:
            field = "%s.%s" % (prefix, option)
            if interface.get(option) is not None:
                settings.append(Setting(conf_key(family, name, leaf), convert(interface[option], field), field))
    return _without_repeats(settings)


def _without_repeats(settings):
    """Drop a key set twice to the same value (interfaces 'all'/'default'); fail if the values differ."""
    by_key = {}
    for setting in settings:
        other = by_key.setdefault(setting.key, setting)
        if other.value != setting.value:
            raise ForwardingError("%s and %s both set %s, to %s and %s" % (other.field, setting.field, setting.key, other.value, setting.value))
    return [setting for setting in settings if by_key[setting.key] is setting]


def write_order(key):
    """Sort key for writing and rendering: cascading keys first, so the per-interface keys after them win."""
    return (key not in CASCADING_KEYS, key)


def _cascaded_family(key):
    """The family whose cascading keys overwrite ``key`` (an interface's forwarding), else None."""
    parts = sysctl.key_parts(key)
    if len(parts) == 5 and parts[0] == "net" and parts[2] == "conf" and parts[4] == "forwarding" and key not in CASCADING_KEYS:
        return parts[1]
    return None


def plan_changes(settings, before):
    """[(key, before, after)] in write order: keys that differ, plus interface keys a changed cascading key will reset."""
    cascading = set(CASCADING_KEYS[s.key] for s in settings if s.key in CASCADING_KEYS and before[s.key] != s.value)
    return [(s.key, before[s.key], s.value) for s in sorted(settings, key=lambda s: write_order(s.key))
            if before[s.key] != s.value or _cascaded_family(s.key) in cascading]


def persisted_paths(sysctl_file):
    """(sysctl_file, its modules-load.d companion of the same name) as the host sees them."""
    problem = sysctl.owned_file_problem(sysctl_file)
    if problem:
        raise ForwardingError("sysctl_file: %r %s" % (sysctl_file, problem))
    return sysctl_file, os.path.join(MODULES_LOAD_DIR, os.path.basename(sysctl_file))


def _file_change(root, shown, after=None):
    path = sysctl.host_path(root, shown)
    return FileChange(path, shown, sysctl.read_text(path), after)


def parse_owned_file(path, text):
    """({key: value}, {key: recorded previous value}) of the owned file's ``text`` (None: no file)."""
    if text is None:
        return {}, {}
    values, comments = sysctl.parse_sysctl_conf(text)
    if OWNER_LINE not in comments:
        raise ForwardingError("sysctl_file: %s exists but was not written by nodenet.nat.forwarding; refusing to replace it" % path)
    record = {}
    for comment in comments:
        if comment.startswith(RESTORE_PREFIX) and "=" in comment:
            key, value = comment[len(RESTORE_PREFIX):].split("=", 1)
            record[key.strip()] = value.strip()
    return values, record


def render_owned_file(values, record):
    restore_lines = ["%s%s = %s" % (RESTORE_PREFIX, key, record[key]) for key in sorted(record, key=write_order)]
    return sysctl.render_sysctl_conf(values, [OWNER_LINE, RECORD_LINE] + restore_lines + [""], sort_key=write_order)


def _modules_load_text(module_name):
    return "# %s\n%s\n" % (OWNER_LINE, module_name)


def _check(problems):
    problems = [problem for problem in problems if problem]
    if problems:
        raise ForwardingError("; ".join(problems))


def _file_problems(files):
    return [sysctl.file_problem(change.path) for change in files]


def converge(params, host, root="/"):
    """The module's engine (commands.run_module): the result dict. Raises ForwardingError (message names field and value)."""
    try:
        if params["state"] == "absent":
            return _converge_absent(params, root, host)
        return _converge_present(params, root, host)
    except sysctl.SysctlError as exc:
        raise ForwardingError(str(exc))


def _converge_present(params, root, host):
    settings = desired_settings(params)
    conf_file, modules_load_file = persisted_paths(params["sysctl_file"])
    bridge = params.get("bridge_nf_call_iptables")
    # A br_netfilter built into the kernel has no /sys/module entry; its keys existing is what counts.
    bridge_loaded = sysctl.kernel_module_loaded(root, BRIDGE_MODULE) or os.path.isdir(sysctl.host_path(root, "/proc/sys/net/bridge"))
    load_bridge = bridge is True and not bridge_loaded
    # net.bridge.* exists only with br_netfilter loaded; left unloaded, bridged traffic skips netfilter already.
    runtime = [s for s in settings if s.key not in BRIDGE_KEYS or bridge_loaded or load_bridge]

    # An unknown interface would also fail each of its keys: report it alone.
    _check(_unknown_interface(root, index, interface) for index, interface in enumerate(params.get("interfaces") or []))
    problems = [_key_problem(root, s) for s in runtime if s.key not in BRIDGE_KEYS or bridge_loaded]
    files, persisted_values, record = [], {}, {}
    if params["persist"]:
        files.append(_file_change(root, conf_file))
        persisted_values, record = parse_owned_file(files[0].path, files[0].before)
        if bridge is not None:
            files.append(_file_change(root, modules_load_file, _modules_load_text(BRIDGE_MODULE) if bridge else None))
        problems.extend(_file_problems(files))
    _check(problems)

    if load_bridge and not host.check_mode:
        sysctl.load_kernel_module(host.run_command, BRIDGE_MODULE)
        _check(_key_problem(root, s) for s in settings if s.key in BRIDGE_KEYS)

    before = dict((s.key, sysctl.read_key(root, s.key)) for s in settings)
    changes = plan_changes(runtime, before)
    if params["persist"]:
        persisted_values.update((s.key, s.value) for s in settings)
        record.update((s.key, before[s.key]) for s in settings if s.key not in record and before[s.key] is not None)
        files[0] = files[0]._replace(after=render_owned_file(persisted_values, record))
    files = [change for change in files if change.before != change.after]

    after = _commit(root, settings, before, changes, files, host.check_mode)
    return _result(settings, before, after, changes or load_bridge, files,
                   persisted_file=conf_file if params["persist"] else None,
                   kernel_modules_loaded=[BRIDGE_MODULE] if load_bridge else [])


def _converge_absent(params, root, host):
    files = [_file_change(root, shown) for shown in persisted_paths(params["sysctl_file"])]
    dummy, record = parse_owned_file(files[0].path, files[0].before)
    files = [change for change in files if change.before is not None]
    settings = [Setting(key, value, "sysctl_file") for key, value in record.items()]
    before = dict((s.key, sysctl.read_key(root, s.key)) for s in settings)
    for setting in settings:
        if before[setting.key] is None:
            host.warn("%s no longer exists; its recorded value %s was not restored" % (setting.key, setting.value))
    present = [s for s in settings if before[s.key] is not None]
    changes = plan_changes(present, before)
    changed_keys = set(change[0] for change in changes)
    _check([_key_problem(root, s) for s in present if s.key in changed_keys] + _file_problems(files))

    after = _commit(root, settings, before, changes, files, host.check_mode)
    return _result(settings, before, after, changes, files, persisted_file=None, kernel_modules_loaded=[])


def _unknown_interface(root, index, interface):
    conf_dir = sysctl.key_path(root, sysctl.key_from_parts(["net", "ipv4", "conf", interface["name"]]))
    if not os.path.isdir(conf_dir):
        return "interfaces[%d].name: unknown interface %r (%s does not exist)" % (index, interface["name"], conf_dir)
    return None


def _key_problem(root, setting):
    problem = sysctl.key_problem(root, setting.key)
    return "%s: cannot set %s: %s" % (setting.field, setting.value, problem) if problem else None


def _commit(root, settings, before, changes, files, check_mode):
    """Apply (unless check mode) and return each key's value after: re-read, or predicted in check mode."""
    if check_mode:
        predicted = dict((key, value) for key, dummy, value in changes)
        return dict((s.key, predicted.get(s.key, before[s.key])) for s in settings)
    _write(root, changes, files)
    return dict((s.key, sysctl.read_key(root, s.key)) for s in settings)


def _write(root, changes, files):
    """Write the runtime keys, then the files; if a file fails, put the keys and earlier files back."""
    sysctl.apply_keys(root, changes)
    done = []
    try:
        for change in files:
            sysctl.write_or_remove(change.path, change.after)
            done.append(change)
    except sysctl.SysctlError as exc:
        undo = [(key, after, before) for key, before, after in changes if before is not None]
        try:
            sysctl.apply_keys(root, undo)
            for change in done:
                sysctl.write_or_remove(change.path, change.before)
        except sysctl.SysctlError as undo_exc:
            raise ForwardingError("%s; undoing the changes already made failed too: %s" % (exc, undo_exc))
        raise ForwardingError("%s; the keys and files already changed were restored" % exc)


def _result(settings, before, after, changed, files, **extra):
    values_before = dict((s.key, before[s.key]) for s in settings if before[s.key] is not None)
    values_after = dict((s.key, after[s.key]) for s in settings if after[s.key] is not None)
    diff = [dict(before_header="sysctl (runtime)", after_header="sysctl (runtime)",
                 before=sysctl.render_sysctl_conf(values_before, sort_key=write_order),
                 after=sysctl.render_sysctl_conf(values_after, sort_key=write_order))]
    diff.extend(dict(before_header=change.shown, after_header=change.shown, before=change.before or "", after=change.after or "")
                for change in files)
    result = dict(
        changed=bool(changed or files),
        sysctls=dict((s.key, dict(before=before[s.key], after=after[s.key])) for s in settings),
        diff=diff,
    )
    result.update(extra)
    return result

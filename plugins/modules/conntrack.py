#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: conntrack
short_description: Size and tune the connection tracking table (nf_conntrack) of a NAT node
version_added: 0.1.0
description:
  - Sets the table size (C(net.netfilter.nf_conntrack_max)), the hash size
    (C(/sys/module/nf_conntrack/parameters/hashsize)), timeouts and C(tcp_be_liberal) at runtime and, with O(persist),
    in owned files that apply them at boot.
  - Only the values of options that are set are managed; an option left unset (V(null)) is neither read nor written.
  - Loads C(nf_conntrack) with C(modprobe) when C(/proc/sys/net/netfilter/nf_conntrack_max) does not exist (the module
    is not loaded yet), which inside a container fails (load it on the host).
  - Persistence writes three owned files that share the file name of O(sysctl_file) - the sysctl.d file with the
    managed keys, a C(/etc/modprobe.d) file with C(options nf_conntrack hashsize=N), and a C(/etc/modules-load.d)
    entry for C(nf_conntrack) (so that the module is loaded before systemd applies the sysctl.d file at boot).
    They hold the values in effect after the task, so a value kept by O(raise_only) is persisted as found,
    and keys skipped as read-only are left out.
  - Read-only keys. Outside the initial network namespace (in a container) the kernel refuses C(nf_conntrack_max)
    (C(EACCES) or C(EINVAL), even when the file looks writable) and the hash size (C(EOPNOTSUPP)); a read-only
    C(/proc/sys) or C(/sys) mount refuses every key (C(EROFS)). The module writes each key that must change and
    treats these errors as "read-only", handled as O(on_readonly) says. The timeouts and C(tcp_be_liberal) are per
    network namespace and writable in a container.
  - In check mode nothing is written, so only what access(2) reports can be detected - a read-only mount or a key the
    kernel marks read-only is reported as "may be read-only"; the hash size inside a privileged container shows only
    on a real run.
author:
  - nodenet.nat maintainers (@nodenet)
options:
  max:
    description:
      - Absolute table size, C(net.netfilter.nf_conntrack_max). Mutually exclusive with O(max_per_core).
    type: int
  max_per_core:
    description:
      - Table size per online CPU, as kube-proxy's C(conntrack.maxPerCore) (its default is 32768).
        The size set is the larger of O(min) and O(max_per_core) times the number of online CPUs
        (C(/sys/devices/system/cpu/online)).
    type: int
  min:
    description:
      - Lower bound of the size computed from O(max_per_core), as kube-proxy's C(conntrack.min) (its default is 131072).
        Requires O(max_per_core).
    type: int
  raise_only:
    description:
      - Never lower the table size or the hash size below a value found on the host (someone else set it higher).
      - Does not apply to the timeouts.
    type: bool
    default: true
  hashsize:
    description:
      - Number of hash buckets of the table. When unset and the table size is managed, a quarter of the table size,
        as kube-proxy does.
      - Writable only from the initial network namespace.
    type: int
  timeouts:
    description:
      - Timeouts in seconds (C(net.netfilter.nf_conntrack_*timeout*)). Per network namespace.
      - A dict of the suboptions below. The module checks it itself, so that every error names the timeout.
    type: raw
    suboptions:
      tcp_established:
        description: C(net.netfilter.nf_conntrack_tcp_timeout_established) (kube-proxy sets 86400).
        type: int
      tcp_close_wait:
        description: C(net.netfilter.nf_conntrack_tcp_timeout_close_wait) (kube-proxy sets 3600).
        type: int
      tcp_time_wait:
        description: C(net.netfilter.nf_conntrack_tcp_timeout_time_wait).
        type: int
      udp:
        description: C(net.netfilter.nf_conntrack_udp_timeout), for UDP flows seen in one direction.
        type: int
      udp_stream:
        description: C(net.netfilter.nf_conntrack_udp_timeout_stream), for UDP flows seen in both directions.
        type: int
      generic:
        description: C(net.netfilter.nf_conntrack_generic_timeout), for protocols without their own tracker.
        type: int
  tcp_be_liberal:
    description:
      - C(net.netfilter.nf_conntrack_tcp_be_liberal) - accept TCP packets outside the tracked window instead of
        marking them INVALID (which kube-proxy works around to avoid spurious connection resets).
    type: bool
  on_readonly:
    description:
      - What to do when a key that must change is read-only (see the description).
      - V(fail) fails the task at the first such key. The table size and the hash size are written first, so the
        timeouts are still untouched then.
      - V(warn) leaves the key as it is, warns, and lists it in RV(skipped_keys).
      - V(skip) leaves the key as it is and lists it in RV(skipped_keys) without a warning.
    type: str
    choices: [fail, warn, skip]
    default: warn
  persist:
    description:
      - Also write the owned files (see the description) so that the values apply at boot.
      - With V(false) the files are left as they are.
    type: bool
    default: true
  sysctl_file:
    description:
      - The owned sysctl.d file. Its companions are C(/etc/modprobe.d/) and C(/etc/modules-load.d/) plus the same file name.
      - A companion with nothing to hold (no managed hash size) is removed.
    type: path
    default: /etc/sysctl.d/90-nodenet-nat-conntrack.conf
  state:
    description:
      - V(present) applies and persists the options.
      - V(absent) removes the three owned files and ignores the other options but O(sysctl_file). The running kernel
        keeps its current values (it holds no record of earlier ones) until the next boot, which then starts from the
        kernel defaults or other files.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Run one conntrack task per host - the owned files hold exactly what the last task managed.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - nodenet.nat.node_changes
attributes:
  diff_mode:
    support: full
    details: Shows the kernel values that change, and each owned file that changes.
"""

EXAMPLES = r"""
- name: Size the table as kube-proxy does, a day for established TCP flows
  nodenet.nat.conntrack:
    max_per_core: 32768
    min: 131072
    timeouts:
      tcp_established: 86400
      tcp_close_wait: 3600

- name: Absolute size with an explicit hash size, short UDP timeouts, liberal TCP window tracking
  nodenet.nat.conntrack:
    max: 1048576
    hashsize: 262144
    timeouts:
      udp: 30
      udp_stream: 120
    tcp_be_liberal: true

- name: In a container, set what the network namespace allows and skip the rest quietly
  nodenet.nat.conntrack:
    max: 524288
    timeouts:
      tcp_time_wait: 30
    on_readonly: skip

- name: Stop persisting the tuning (the values in effect stay until reboot)
  nodenet.nat.conntrack:
    state: absent
"""

RETURN = r"""
settings:
  description:
    - Each managed value (sysctl key, or the hash size under its C(/sys) path) and its value before and after.
    - Empty with O(state=absent).
    - V(before) is V(null) in check mode when C(nf_conntrack) is not loaded yet. In check mode V(after) is the value
      the module would set.
  returned: always
  type: dict
  contains:
    KEY:
      description: A sysctl key such as C(net.netfilter.nf_conntrack_max), or C(/sys/module/nf_conntrack/parameters/hashsize).
      type: dict
      contains:
        before:
          description: Value before the task.
          type: int
        after:
          description: Value after the task.
          type: int
  sample:
    net.netfilter.nf_conntrack_max: {before: 262144, after: 1048576}
    /sys/module/nf_conntrack/parameters/hashsize: {before: 65536, after: 262144}
skipped_keys:
  description: Read-only values left unchanged (see O(on_readonly)), and why.
  returned: always
  type: list
  elements: dict
  contains:
    key:
      description: The value's name, as in RV(settings).
      type: str
    reason:
      description: The error the kernel gave (or, in check mode, that the file is not writable) and what it means.
      type: str
  sample:
    - key: net.netfilter.nf_conntrack_max
      reason: >-
        read-only: writing /proc/sys/net/netfilter/nf_conntrack_max failed: Permission denied; nf_conntrack_max and
        the hash size can only be set from the initial network namespace (on the host, not in a container)
loaded_module:
  description: Whether the task loaded C(nf_conntrack) (in check mode, would load it).
  returned: always
  type: bool
files:
  description: Each owned file and what the task did to it - V(written), V(removed), V(unchanged) or V(absent).
  returned: always
  type: dict
  sample:
    /etc/sysctl.d/90-nodenet-nat-conntrack.conf: written
    /etc/modprobe.d/90-nodenet-nat-conntrack.conf: written
    /etc/modules-load.d/90-nodenet-nat-conntrack.conf: unchanged
"""

from ansible_collections.nodenet.nat.plugins.module_utils.commands import run_module
from ansible_collections.nodenet.nat.plugins.module_utils.conntrack import ARGUMENT_SPEC, MODULE_OPTIONS, tune


def main():
    run_module(ARGUMENT_SPEC, tune, **MODULE_OPTIONS)


if __name__ == "__main__":
    main()

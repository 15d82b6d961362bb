#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: forwarding
short_description: IP forwarding, rp_filter, route_localnet and bridge netfilter sysctls for NAT nodes
version_added: 0.1.0
description:
  - Sets the kernel parameters a NAT node needs, at runtime (C(/proc/sys)) and, with O(persist), in an owned file
    under C(/etc/sysctl.d) that applies them at boot.
  - Only the keys of options that are set are managed; an option left unset (V(null)) is neither read nor written.
  - Every key, interface and file is validated (existence, writability) before anything is written.
    If a runtime write still fails, the keys already written are restored and the task fails naming the key and value.
  - The persisted file is owned by the module and rendered deterministically. Keys this task manages replace their
    lines; lines written by earlier tasks for other keys are kept, so several tasks may share one O(sysctl_file).
    A file at O(sysctl_file) that the module did not write is never replaced.
  - When the module first persists a key, the file's header records the key's runtime value from before.
    O(state=absent) writes those recorded values back and removes the file and its modules-load.d companion.
  - Works in a privileged container with its own network namespace (the C(net.*) keys it manages are per namespace).
    C(net.bridge.*) exists only while C(br_netfilter) is loaded or built into the kernel; the module runs C(modprobe) only
    when neither C(/sys/module/br_netfilter) nor C(/proc/sys/net/bridge) exists, which inside a container fails (load it on the host).
author:
  - nodenet.nat maintainers (@nodenet)
options:
  ipv4:
    description:
      - IPv4 forwarding, C(net.ipv4.ip_forward).
      - The kernel sets every interface's C(net.ipv4.conf.*.forwarding) when this key is written; the module then
        writes the per-interface values of O(interfaces[].forwarding) again, so they win.
    type: bool
  ipv6:
    description:
      - IPv6 forwarding, C(net.ipv6.conf.all.forwarding). Writing it sets every interface's IPv6 forwarding, as for O(ipv4).
    type: bool
  rp_filter:
    description:
      - Reverse path filtering for C(all) and C(default) (C(net.ipv4.conf.{all,default}.rp_filter)).
      - V(strict) is 1, V(loose) is 2, V(off) is 0. The kernel uses the higher of C(all) and the interface's own value.
    type: str
    choices: [strict, loose, "off"]
  route_localnet:
    description:
      - Allow routing to 127.0.0.0/8 (needed to DNAT to a localhost address), C(net.ipv4.conf.all.route_localnet).
        The kernel applies it to an interface when C(all) or the interface's own value is set.
    type: bool
  bridge_nf_call_iptables:
    description:
      - Pass bridged traffic through iptables/nftables (C(net.bridge.bridge-nf-call-iptables) and C(net.bridge.bridge-nf-call-ip6tables)).
      - V(true) loads C(br_netfilter) with C(modprobe br_netfilter) unless it is loaded or built in (C(/sys/module/br_netfilter) or
        C(/proc/sys/net/bridge) exists) and, with O(persist),
        lists the module in the modules-load.d companion file so that it is loaded at boot.
      - V(false) writes 0 when C(br_netfilter) is loaded; when it is not, bridged traffic already skips netfilter and only the
        persisted file and the companion file are updated.
    type: bool
  interfaces:
    description:
      - Per-interface settings. Each interface must exist (C(/proc/sys/net/ipv4/conf/<name>)). Names with dots (VLANs such as
        C(eth0.100)) are accepted; their keys are written C(net.ipv4.conf.eth0/100.forwarding) as sysctl(8) does.
      - A list of dicts. The module checks them itself, so that every error names the entry and the field.
    type: raw
    suboptions:
      name:
        description: Interface name.
        type: str
        required: true
      forwarding:
        description: IPv4 forwarding on packets received by this interface, C(net.ipv4.conf.<name>.forwarding).
        type: bool
      ipv6_forwarding:
        description: IPv6 forwarding on this interface, C(net.ipv6.conf.<name>.forwarding).
        type: bool
      rp_filter:
        description: Reverse path filtering on this interface, C(net.ipv4.conf.<name>.rp_filter) (see O(rp_filter)).
        type: str
        choices: [strict, loose, "off"]
      route_localnet:
        description: Allow routing to 127.0.0.0/8 from this interface, C(net.ipv4.conf.<name>.route_localnet).
        type: bool
  persist:
    description:
      - Also write the managed keys to O(sysctl_file) so that they apply at boot.
      - With V(false) the file is left as it is and nothing is recorded for O(state=absent).
    type: bool
    default: true
  sysctl_file:
    description:
      - The owned sysctl.d file. Its modules-load.d companion is C(/etc/modules-load.d/) plus the same file name.
    type: path
    default: /etc/sysctl.d/90-nodenet-nat.conf
  state:
    description:
      - V(present) applies and persists the options.
      - V(absent) ignores the other options and O(persist); it writes back the values recorded in O(sysctl_file) (keys that
        no longer exist, such as a removed interface's, are skipped with a warning), then removes O(sysctl_file) and its
        modules-load.d companion. It does not unload C(br_netfilter).
    type: str
    choices: [present, absent]
    default: present
notes:
  - Keys in the persisted file are ordered with C(net.ipv4.ip_forward), C(net.ipv4.conf.all.forwarding) and
    C(net.ipv6.conf.all.forwarding) first, then by name, because writing those resets the per-interface forwarding keys.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - nodenet.nat.node_changes
attributes:
  diff_mode:
    support: full
    details: Shows the managed keys before and after, and each persisted file that changes.
"""

EXAMPLES = r"""
- name: Forward IPv4 and IPv6, loose reverse path filtering, persisted
  nodenet.nat.forwarding:
    ipv4: true
    ipv6: true
    rp_filter: loose

- name: Forward between pods on a bridge, through iptables, except on the management VLAN
  nodenet.nat.forwarding:
    ipv4: true
    bridge_nf_call_iptables: true
    interfaces:
      - name: eth0.100
        forwarding: false
        rp_filter: strict

- name: Allow DNAT to 127.0.0.1 (NodePort on localhost) at runtime only
  nodenet.nat.forwarding:
    route_localnet: true
    persist: false

- name: Put back what the module changed and remove its files
  nodenet.nat.forwarding:
    state: absent
"""

RETURN = r"""
sysctls:
  description:
    - Each managed key (with O(state=absent), each restored key) and its value before and after.
    - A value is V(null) when the key does not exist (for example C(net.bridge.*) before C(br_netfilter) is loaded).
    - In check mode, RV(sysctls.KEY.after) is the value the module would set.
  returned: always
  type: dict
  contains:
    KEY:
      description: The sysctl key, for example C(net.ipv4.ip_forward).
      type: dict
      contains:
        before:
          description: Runtime value before the task.
          type: str
        after:
          description: Runtime value after the task.
          type: str
  sample:
    net.ipv4.ip_forward: {before: "0", after: "1"}
    net.ipv4.conf.eth0/100.forwarding: {before: "1", after: "0"}
persisted_file:
  description: The sysctl.d file holding the managed keys; V(null) when O(persist=false) or O(state=absent).
  returned: always
  type: str
  sample: /etc/sysctl.d/90-nodenet-nat.conf
kernel_modules_loaded:
  description: Kernel modules the task loaded (in check mode, would load).
  returned: always
  type: list
  elements: str
  sample: [br_netfilter]
"""

from ansible_collections.nodenet.nat.plugins.module_utils.commands import run_module
from ansible_collections.nodenet.nat.plugins.module_utils.forwarding import ARGUMENT_SPEC, converge


def main():
    run_module(ARGUMENT_SPEC, converge)


if __name__ == "__main__":
    main()

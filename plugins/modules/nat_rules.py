#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: nat_rules
short_description: Declarative NAT rules (masquerade, SNAT, DNAT, mark, return) on nftables or iptables
version_added: 0.1.0
description:
  - Manages the NAT rules this collection owns, as a list of rules keyed by O(config[].name), in the style of the
    network resource modules (O(state=merged), V(replaced), V(overridden), V(deleted), V(gathered), V(rendered), V(parsed)).
  - "Owned objects: with nft, the tables C(ip nodenet_nat) and C(ip6 nodenet_nat); with iptables, the chains
    C(NODENET-PREROUTING), C(NODENET-INPUT), C(NODENET-OUTPUT), C(NODENET-POSTROUTING) of table C(nat) and one jump rule
    to each from its built-in chain (and an empty marker chain C(NODENET-RUN-<token>), see the run record).
    An owned chain of more than 2048 lines is split into segment chains C(NODENET-PRE-<digest>) (C(IN), C(OUT), C(POST))
    that it jumps to in order, so that a change rewrites only the segments it touches. Rules of other tools (kube-proxy,
    docker, firewalld, people) are never modified or removed."
  - The rule name is the rule's identity and is written as its comment; the host's owned rules are read back and compared
    with the desired rules as normalized data, so a second run reports no change.
  - Every rule is validated first (a bad input fails naming the rule, the field and the value, before any command
    runs). The new ruleset then goes in as one atomic transaction (one C(nft -f) for both families; one
    C(iptables-restore --noflush) per family, each checked with C(--test) before either applies), all of it or none.
  - Built for tens of thousands of rules. With nft, same-shaped rules (NodePort-like, ClusterIP-like) become elements of
    shared verdict and data maps, so a packet meets one lookup whatever the number of services, and a change adds and
    deletes only the elements that differ. Rules unchanged since the last run are not validated or compiled again (the
    run record under C(/run/nodenet-nat) remembers them while the host carries the record's stamp, a marker chain named
    after the run that last changed the rules).
  - One run at a time per host (network namespace) - a second run waits for a lock under C(/run/nodenet-nat), and reads
    the host after the first one is done.
  - With the iptables backends, each family is one transaction; when a family fails to apply after another one did
    (both passed C(--test), so the host changed in between), the applied family is put back and the task fails. With
    nft both families are one transaction. On iptables-nft, removing the last owned object of a family also removes the
    empty C(nat) table iptables-nft created, when nothing else is in it.
  - With O(rollback_timeout), a change that cuts the controller off the host undoes itself - the host restores its previous owned
    rules unless the controller reaches it again over a new connection within the timeout.
author:
  - nodenet.nat maintainers (@nodenet)
options:
  config:
    description:
      - The rules. Each name may appear once. Within one chain of one family, rules apply in list order.
      - With O(state=deleted) only O(config[].name) is used.
      - A list of rules, or the JSON text of one (what C(to_json) makes). Ansible walks a list to template it and to pass it
        to the module, which costs seconds at ten thousand rules; a JSON text costs it almost nothing, so pass big rulesets
        that way (the roles of this collection do).
      - The module checks every item itself (ansible's per-item argument checks would cost more than the rest of a run at
        thousands of rules); values are taken as ansible's types would take them (booleans in ansible's spellings, a
        comma-separated string for a list), and an unknown key is an error naming it.
    type: raw
    suboptions:
      name:
        description:
          - Identity of the rule, written as its comment.
          - 1 to 64 characters, letters, digits and C(.), C(_), C(:), C(/), C(-), starting with a letter or digit.
        type: str
        required: true
      type:
        description:
          - What the rule does. V(masquerade) rewrites the source to the outgoing interface's address, V(snat) to
            O(config[].to_source), V(dnat) sends to O(config[].to_destination), V(mark) sets a packet mark
            (O(config[].set_mark)), V(return) stops processing the owned rules of this chain (an exemption for the
            rules after it).
          - Required for a new rule. With O(state=merged) it may be left out to keep the existing rule's type.
        type: str
        choices: [masquerade, snat, dnat, mark, return]
      chain:
        description:
          - The netfilter hook of the C(nat) table the rule runs in.
          - V(masquerade) is valid only in V(postrouting); V(snat) in V(postrouting) and V(input); V(dnat) in V(prerouting)
            and V(output); V(mark) and V(return) anywhere.
          - When omitted, V(postrouting) for V(masquerade), V(snat) and V(return), V(prerouting) for V(dnat) and V(mark).
        type: str
        choices: [prerouting, input, output, postrouting]
      family:
        description:
          - IP family of the rule. When omitted, inferred from the addresses of the rule, or V(ipv4) when it has none.
          - A rule with addresses of both families is an error (write one rule per family).
        type: str
        choices: [ipv4, ipv6]
      source:
        description:
          - Match source networks (CIDR) or addresses. An address means the host (C(/32) or C(/128)); a network with
            host bits set (V(10.0.0.1/24)) is an error. Overlapping entries are merged.
        type: list
        elements: str
      source_negate:
        description:
          - Match packets whose source is not in O(config[].source). Needs O(config[].source). When omitted, false.
        type: bool
      destination:
        description:
          - Match destination networks or addresses, as O(config[].source).
        type: list
        elements: str
      destination_negate:
        description:
          - Match packets whose destination is not in O(config[].destination). When omitted, false.
        type: bool
      destination_type:
        description:
          - Match packets addressed to a local address of the node (iptables C(addrtype), nft C(fib daddr type)).
        type: str
        choices: [local]
      destination_type_negate:
        description:
          - Match packets not addressed to a local address. Needs O(config[].destination_type). When omitted, false.
        type: bool
      in_interface:
        description:
          - Match the input interface (exact name). Only in chains V(prerouting) and V(input).
        type: str
      out_interface:
        description:
          - Match the output interface (exact name). Only in chains V(output) and V(postrouting).
        type: str
      protocol:
        description:
          - Match the layer 4 protocol. Needed by O(config[].destination_ports), O(config[].to_ports) and by
            O(config[].to_destination) entries with a port.
        type: str
        choices: [tcp, udp, sctp]
      destination_ports:
        description:
          - Match destination ports; each entry is a port (V(80)) or an inclusive range (V(30000-32767)).
            Overlapping and adjacent entries are merged.
        type: list
        elements: raw
      mark:
        description:
          - Match the packet mark, V(value/mask) (packet mark AND mask equals value) or V(value) (mask C(0xffffffff)).
            Hexadecimal (V(0x4000)) or decimal.
        type: str
      mark_negate:
        description:
          - Match packets whose mark does not match O(config[].mark). When omitted, false.
        type: bool
      ct_state:
        description:
          - Match conntrack states (any of them).
        type: list
        elements: str
        choices: [new, established, related, invalid, dnat, snat]
      to_source:
        description:
          - V(snat) only (required there). The new source address, or an address range V(first-last).
        type: str
      to_destination:
        description:
          - V(dnat) only (required there). The new destinations, each V(address), V(address:port) or V([ipv6]:port);
            either all entries have a port or none has.
          - With several entries every new connection picks one at random (load balancing, as kube-proxy does).
        type: list
        elements: str
      to_ports:
        description:
          - V(masquerade) and V(snat) only. The source port or port range V(first-last) to map to; needs O(config[].protocol).
        type: raw
      random_fully:
        description:
          - V(masquerade) and V(snat) only. Fully randomized source port mapping (avoids port collisions under
            heavy connection churn). When omitted, false.
        type: bool
      set_mark:
        description:
          - V(mark) only (required there). The mark to set, V(value/mask) (the bits of the mask are set to value, other
            bits kept; C(0x4000/0x4000) sets bit 0x4000 as kube-proxy's mark-for-masquerade) or V(value) (the whole mark).
        type: str
  config_path:
    description:
      - Path on the managed node of a file holding the JSON text of O(config) (the same rules, read the same way); mutually
        exclusive with O(config).
      - The action plugin of this module ships a O(config) given as JSON text of more than 1 MiB this way by itself, since
        ansible embeds a module's arguments in the module file it sends, escaped twice over (about half a second at 50 000
        rules), while a file is copied as it is.
    type: path
  state:
    description:
      - V(merged) adds the rules of O(config) and updates existing rules of the same name field by field
        (fields given replace the existing ones, lists are replaced, not extended; a different O(config[].type)
        replaces the whole rule). Existing rules keep their position, new ones are appended. Other owned rules stay.
      - V(replaced) adds the rules of O(config) and replaces existing rules of the same name as a whole (fields not
        given take their defaults), in place. Other owned rules stay.
      - V(overridden) makes the owned rules exactly O(config); owned rules not in it are removed.
      - V(deleted) removes the owned rules named in O(config); with an empty O(config), every owned rule.
      - V(gathered) returns the owned rules found on the host in RV(gathered), changing nothing.
      - V(rendered) returns, in RV(rendered), the script that creates O(config) on a host without owned rules. It
        works offline and needs an explicit O(backend).
      - V(parsed) reads O(running_config) offline into RV(parsed); needs an explicit O(backend).
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered, parsed]
    default: merged
  backend:
    description:
      - The netfilter front end. V(nft) uses the nft tool; V(iptables) the iptables-nft tools; V(iptables-legacy)
        the legacy tools.
      - V(auto) picks the one in use on the host, as Kubernetes' iptables-wrappers do, preferring one that already
        holds this collection's rules; RV(backend_reason) says why.
      - V(auto) lists every table of both iptables variants to decide, which costs seconds at tens of thousands of
        rules; once a run has left rules and its run record (see the description), the backend whose record the host
        still carries is kept without that listing.
    type: str
    choices: [auto, nft, iptables, iptables-legacy]
    default: auto
  scope:
    description:
      - Limits the task to the owned rules whose name starts with this prefix, so that several callers (the roles of
        this collection, or teams) can each own a part of the ruleset. Every O(config[].name) must start with it.
      - O(state=overridden) then makes the scope's rules exactly O(config) and keeps every rule outside the scope;
        O(state=deleted) with an empty O(config) removes the scope's rules only; V(merged), V(replaced) and V(gathered)
        see only the scope's rules. RV(before) and RV(after) list the scope's rules.
      - In each chain, the scope's rules take the place of its first existing rule there (or follow the other rules),
        so callers with different scopes reach a stable order whatever order they run in.
    type: str
  running_config:
    description:
      - With O(state=parsed), the output of one list command of the backend, that is C(nft -j list table ip nodenet_nat)
        (or C(ip6)) for V(nft), and C(iptables-save -t nat) or C(ip6tables-save -t nat) for the iptables backends.
      - The family is IPv6 for C(ip6tables-save) output (recognized by its C(# Generated by ip6tables-save) header line)
        and for an nft listing of an C(ip6) table; IPv4 otherwise.
    type: str
  result_rules:
    description:
      - How much of the ruleset the result lists. V(summary) gives RV(summary) only - counts, and the names of the rules
        the task adds, removes or changes, up to 1000 names - so that a run over ten thousand rules does not echo them.
        V(changed) lists every name there and adds
        RV(before) and RV(after) with those rules in full; V(all) lists every owned rule in O(scope) there, as resource
        modules do.
      - The diff (C(--diff)) shows the rules that change, whatever this says.
    type: str
    choices: [summary, changed, all]
    default: summary
  persist:
    description:
      - After converging, also write the whole owned ruleset (every O(scope)) to files that restore it on a host that
        lost it (at boot), and report a change when they differ. The files hold only the owned objects. Their second
        line names what loads them (C(nft), or the restore and save tools of the iptables variant in use).
      - The roles of this collection persist by default and install the boot path, C(nodenet-nat.service), which runs
        C(nodenet-nat-restore) on the files at their default paths once at boot, after C(nftables.service),
        C(netfilter-persistent.service), C(iptables.service) and C(ip6tables.service) and before C(network-pre.target).
        After this module alone, the role C(nodenet.nat.persist) installs it.
      - With V(nft), one file for both families. Loading it with C(nft -f) deletes the owned tables and creates them
        again, so loading it twice gives the same tables. A host whose C(/etc/nftables.conf) begins with C(flush ruleset)
        must load it after that file (C(nodenet-nat.service) does; an C(include) at the end of that file works too).
      - With the iptables backends, the IPv4 file at O(persist_path) and the IPv6 file at O(persist_path) followed by C(6),
        scripts for C(iptables-restore --noflush) and C(ip6tables-restore --noflush) of the variant in use, to load after
        the host's base rules. Each inserts one jump rule per built-in chain, so loading it twice with C(iptables-restore)
        alone duplicates them; C(nodenet-nat-restore) deletes the jumps to the C(NODENET-*) chains in the same transaction,
        so loading with it twice gives the same ruleset.
      - Ignored by O(state=gathered), V(rendered) and V(parsed).
    type: bool
    default: false
  persist_path:
    description:
      - File written by O(persist). When omitted, C(/etc/nftables.d/nodenet-nat.nft) for V(nft) and
        C(/etc/iptables/nodenet-nat.rules) (and C(/etc/iptables/nodenet-nat.rules6)) for the iptables backends, the files
        C(nodenet-nat.service) loads.
    type: path
  rollback_timeout:
    description:
      - A safety net for a change that might cut the controller off the host (a DNAT or masquerade catching the management
        connection). After applying a change the host waits this many seconds for the controller to reach it again over a new
        connection, and without that confirmation puts its previous owned rules back by itself, with no controller involved.
      - "How: the module applies the change as without this option, leaves a cookie file under C(/run/nodenet-nat) and starts a
        watcher process on the host that holds the host lock, and returns. The action plugin then resets the connection (an ssh
        ControlPersist master opened before the change would survive it: conntrack keeps an established flow's NAT) and removes
        the cookie over a new connection, trying again every second. If the cookie is gone before the deadline, the change stays.
        If it is still there, the watcher claims it (an atomic rename: the controller's removal and the claim cannot both succeed)
        and restores the previous owned rules."
      - The restore is a change like any other - one C(nft -f) for both families, or one C(iptables-restore --noflush) per
        family, all validated before any applies - and puts back exactly the owned rules this task found before its change. Rules
        of other tools are not touched. Connections opened while the change was in place keep the NAT they got (conntrack);
        new connections follow the restored rules.
      - When the change is not confirmed the task fails, and RV(rollback) says what the host did when the controller could reach
        it again within the timeout plus 30 seconds and one connection timeout (the host restores at the deadline either way).
      - With O(persist=true), the files are written once the change is confirmed and never before, so a host that reboots during
        the wait boots with the previous files; after a restore they are left as they were.
      - Other C(nat_rules) runs on the host wait for the lock until the change is confirmed or restored (they give up after 300 s).
      - Nothing is armed when the task changes no rule (RV(rollback.status=not_needed)), in check mode, or with O(state=gathered),
        V(rendered) or V(parsed).
      - Between 1 and 3600 seconds. Not with the C(async) keyword (the host does the waiting). Removing the cookie on the host by
        hand (C(/run/nodenet-nat/netns-*/rollback-*.cookie)) keeps the change.
    type: int
notes:
  - Supports check mode (nothing changes; RV(after) is predicted and RV(commands) lists what would run) and
    diff mode (the owned rules before and after).
  - The iptables backend cannot express a negated match of several networks in one rule; such a rule fails
    naming it. Write V(return) rules for the exemptions before it instead.
  - "What O(rollback_timeout) guarantees: a change the controller cannot confirm over a new connection is undone by the host at the
    deadline, with the previous owned rules, in one transaction (one per family with iptables). It relies on the watcher process:
    if that process is killed, or the host reboots, before the deadline, nothing restores the rules - the change stays (the files
    of O(persist) are then not written; a reboot drops both, as it drops every rule). If the watcher cannot be started the module
    restores the previous rules at once and fails. If the module's own result cannot come back to the controller (its connection
    broke), the task is unreachable and the host restores at the deadline. The outcome of each watched change is in
    C(/run/nodenet-nat/netns-*/rollback-*.outcome) until the controller has read it."
attributes:
  action:
    support: full
    details: The action plugin confirms a change made with O(rollback_timeout); without that option the module runs as any other.
  async:
    support: partial
    details: Not together with O(rollback_timeout).
  bypass_host_loop:
    support: none
requirements:
  - nft (nftables) for O(backend=nft), or iptables/ip6tables (nft or legacy variant, with their save and restore tools).
seealso:
  - module: nodenet.nat.forwarding
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
  - nodenet.nat.node_changes
"""

EXAMPLES = r"""
- name: Masquerade traffic from the pods leaving the node (node egress)
  nodenet.nat.nat_rules:
    config:
      - name: pods-to-pods
        type: return
        source: [10.244.0.0/16]
        destination: [10.244.0.0/16]
      - name: pods-egress
        type: masquerade
        source: [10.244.0.0/16]
        out_interface: eth0
        random_fully: true

- name: NodePort 30080 answered on every local address, balanced over three pods
  nodenet.nat.nat_rules:
    backend: nft
    config:
      - name: web-nodeport
        type: dnat
        destination_type: local
        protocol: tcp
        destination_ports: [30080]
        to_destination:
          - 10.244.1.10:8080
          - 10.244.2.11:8080
          - 10.244.3.12:8080

- name: Make the owned rules exactly these, one rule per family (other owned rules are removed)
  nodenet.nat.nat_rules:
    state: overridden
    config:
      - name: pods-egress-v4
        type: masquerade
        source: [10.244.0.0/16]
      - name: pods-egress-v6
        type: masquerade
        source: [fd00:10:244::/56]

- name: Remove one rule
  nodenet.nat.nat_rules:
    state: deleted
    config:
      - name: web-nodeport

- name: Remove every rule this collection owns
  nodenet.nat.nat_rules:
    state: deleted

- name: Own the rules named "team-a-" and nothing else (other owned rules stay where they are)
  nodenet.nat.nat_rules:
    state: overridden
    scope: team-a-
    config:
      - name: team-a-egress
        type: masquerade
        source: [10.10.0.0/16]

- name: Send ssh arriving on eth1 to a bastion; if that cuts this controller off, the host undoes it after 30 s
  nodenet.nat.nat_rules:
    state: merged
    rollback_timeout: 30
    config:
      - name: ssh-to-bastion
        type: dnat
        in_interface: eth1
        protocol: tcp
        destination_ports: [22]
        to_destination: [10.0.0.22:22]
  register: nat_change

- name: Read the owned rules
  nodenet.nat.nat_rules:
    state: gathered
  register: nat

- name: Show the nft script for a ruleset, without a host
  nodenet.nat.nat_rules:
    state: rendered
    backend: nft
    config:
      - name: mark-external
        type: mark
        in_interface: eth0
        set_mark: 0x4000/0x4000
      - name: masquerade-marked
        type: masquerade
        mark: 0x4000/0x4000
  delegate_to: localhost

- name: Read saved iptables output into rules
  nodenet.nat.nat_rules:
    state: parsed
    backend: iptables
    running_config: "{{ lookup('ansible.builtin.file', 'iptables-save-nat.txt') }}"
  delegate_to: localhost
"""

RETURN = r"""
before:
  description:
    - The owned rules (in O(scope)) found on the host before the task, in the shape of O(config) (fields at their defaults
      left out). With O(result_rules=changed), only those the task removes or changes.
  returned: when O(result_rules) is changed or all, and O(state) is merged, replaced, overridden or deleted
  type: list
  elements: dict
  sample:
    - name: pods-egress
      type: masquerade
      chain: postrouting
      family: ipv4
      source: [10.244.0.0/16]
      random_fully: true
after:
  description:
    - The owned rules (in O(scope)) after the task, as the applied transaction made them (it applies whole or not at all).
      In check mode, the rules it would make. With O(result_rules=changed), only those the task adds or changes.
  returned: when O(result_rules) is changed or all, and O(state) is merged, replaced, overridden or deleted
  type: list
  elements: dict
  sample:
    - name: web-nodeport
      type: dnat
      chain: prerouting
      family: ipv4
      destination_type: local
      protocol: tcp
      destination_ports: [30080]
      to_destination: [10.244.1.10:8080, 10.244.2.11:8080]
commands:
  description:
    - The lines of the scripts applied (in check mode, that would be applied), all families in order; empty when nothing
      changed.
    - With O(result_rules=summary) (the default), scripts of more than 1000 lines in all (a first run over thousands of
      rules) are not listed; RV(commands) is then empty and RV(commands_omitted) gives their number. V(changed) and
      V(all) list them.
  returned: when O(state) is merged, replaced, overridden or deleted
  type: list
  elements: str
  sample: ["*nat", ":NODENET-POSTROUTING - [0:0]", "-A NODENET-POSTROUTING -s 10.244.0.0/16 -m comment --comment pods-egress -j MASQUERADE", "COMMIT"]
commands_omitted:
  description: The number of script lines RV(commands) does not list (see there).
  returned: when the scripts have more than 1000 lines and O(result_rules=summary)
  type: int
  sample: 20008
summary:
  description:
    - How many owned rules (in O(scope)) there were before and after the task, the names of those it added, removed and
      changed, and the families that have rules after it.
    - With O(result_rules=summary) (the default), more than 1000 names in all (a first run over thousands of rules) are
      not listed; RV(summary.added), RV(summary.removed) and RV(summary.changed) are then empty and RV(summary.omitted)
      gives how many each would list. V(changed) and V(all) list them.
  returned: when O(state) is merged, replaced, overridden or deleted
  type: dict
  sample: {before: 10000, after: 10000, added: [], removed: [], changed: [svc-42], families: [ipv4]}
  contains:
    before:
      description: Rules before the task.
      type: int
    after:
      description: Rules after the task.
      type: int
    added:
      description: Names of the rules the task added.
      type: list
      elements: str
    removed:
      description: Names of the rules the task removed.
      type: list
      elements: str
    changed:
      description: Names of the rules the task changed.
      type: list
      elements: str
    families:
      description: The IP families that have rules (in O(scope)) after the task.
      type: list
      elements: str
    omitted:
      description: How many names RV(summary.added), RV(summary.removed) and RV(summary.changed) would list (see above).
      returned: when they are not listed
      type: dict
      sample: {added: 10000, removed: 0, changed: 0}
transactions:
  description:
    - The transactions behind RV(commands) (RV(rendered) for O(state=rendered)) - one for both families with nft, one per
      family with iptables. Their scripts are RV(commands), one after the other.
  returned: when O(state) is merged, replaced, overridden, deleted or rendered
  type: list
  elements: dict
  contains:
    families:
      description: The families the transaction changes, V(ipv4) and/or V(ipv6).
      type: list
      elements: str
    argv:
      description: The command that applies the script, reading it on standard input.
      type: list
      elements: str
    lines:
      description: The number of lines of its script in RV(commands).
      type: int
rendered:
  description: The lines of the scripts that create O(config) on a host without owned rules.
  returned: when O(state=rendered)
  type: list
  elements: str
  sample: ["add table ip nodenet_nat", "delete table ip nodenet_nat", "table ip nodenet_nat {", "}"]
gathered:
  description: The owned rules on the host, in the shape of O(config).
  returned: when O(state=gathered)
  type: list
  elements: dict
parsed:
  description: The owned rules found in O(running_config), in the shape of O(config).
  returned: when O(state=parsed)
  type: list
  elements: dict
backend:
  description: The backend used.
  returned: always
  type: str
  sample: nft
backend_reason:
  description: Why this backend was chosen (V(requested) when O(backend) named it).
  returned: always
  type: str
  sample: no iptables front end in use (legacy iptables holds 0 rules, iptables-nft 0) and nft is installed
drift:
  description:
    - Differences between the owned objects on the host and what the module writes although the rules compare equal
      (hand edits in owned chains, a missing or duplicated jump rule). Their presence makes the task rewrite the owned objects.
    - With O(state=parsed), the owned lines of O(running_config) that could not be read as rules.
  returned: when found
  type: list
  elements: str
cleared_flows:
  description:
    - The conntrack flows the task deleted (in check mode, would delete) because it removed or replaced their UDP or SCTP
      DNAT endpoint - clients that keep their source port would otherwise keep reaching the old endpoint until the flow
      times out. TCP needs none of this (a new connection is a new flow). Needs the C(conntrack) tool; without it the
      task warns.
  returned: when a change removes or replaces an endpoint of a udp or sctp dnat rule
  type: list
  elements: dict
  sample: [{rule: dns, protocol: udp, destinations: [10.96.0.10], port: 53, endpoint: 10.244.1.5}]
  contains:
    rule:
      description: The rule's name.
      type: str
    protocol:
      description: V(udp) or V(sctp).
      type: str
    destinations:
      description: The rule's destination hosts the flows were sent to (empty for any, such as a node port).
      type: list
      elements: str
    port:
      description: The rule's destination port, or V(null) for any.
      type: int
    endpoint:
      description: The removed endpoint the flows were translated to.
      type: str
persisted:
  description:
    - The files O(persist) wrote (in check mode, would write) because their content differed.
    - With O(rollback_timeout), the files written once the change was confirmed (none when it was rolled back).
  returned: when O(persist=true) and O(state) is merged, replaced, overridden or deleted
  type: list
  elements: str
  sample: [/etc/nftables.d/nodenet-nat.nft]
rollback:
  description:
    - What became of a change made with O(rollback_timeout).
  returned: when O(rollback_timeout) is set and O(state) is merged, replaced, overridden or deleted, except in check mode
  type: dict
  sample: {status: confirmed, timeout: 30, waited: 0.6, attempts: 1, watcher: 4242}
  contains:
    status:
      description:
        - V(not_needed) - the task changed no rule; nothing was armed.
        - V(confirmed) - the controller reached the host over a new connection in time; the change stays.
        - V(rolled_back) - no confirmation came in time and the host put its previous owned rules back; the task fails and
          RV(ignore:changed) is false (RV(commands) is the change that was undone, RV(rollback.restore) the restore).
        - V(restore_failed) - no confirmation came in time and the restore failed (RV(rollback.restore.error)); the task fails.
        - V(unconfirmed) - the controller could not reach the host again, or the host gave no outcome; the task fails. The host
          restored its previous rules at the deadline unless the cookie was removed there.
      type: str
      choices: [not_needed, confirmed, rolled_back, restore_failed, unconfirmed]
    timeout:
      description: O(rollback_timeout).
      type: int
    waited:
      description: Seconds from the module's return to the confirmation, or to the last attempt.
      type: float
      returned: unless RV(rollback.status=not_needed)
    attempts:
      description: How many times the controller tried to reach the host.
      type: int
      returned: unless RV(rollback.status=not_needed)
    watcher:
      description: The process id of the watcher on the host.
      type: int
      returned: unless RV(rollback.status=not_needed)
    restore:
      description: What the host ran to restore the previous owned rules.
      type: dict
      returned: when RV(rollback.status) is V(rolled_back) or V(restore_failed)
      contains:
        commands:
          description: The lines of the restore's scripts.
          type: list
          elements: str
        transactions:
          description: The restore's transactions, as RV(transactions).
          type: list
          elements: dict
        verified:
          description: Whether the owned rules read back after the restore are exactly those found before the change.
          type: bool
        error:
          description: Why the restore failed.
          type: str
"""

from ansible_collections.nodenet.nat.plugins.module_utils.commands import run_module
from ansible_collections.nodenet.nat.plugins.module_utils.rollback import ARGUMENT_SPEC, MODULE_OPTIONS, run_nat_rules


def main():
    run_module(ARGUMENT_SPEC, run_nat_rules, **MODULE_OPTIONS)


if __name__ == "__main__":
    main()

"""conntrack in a container: the network namespace's keys are set and persisted, the table size and
hash size (settable only from the initial network namespace) are reported per on_readonly."""
MAX_KEY = "net.netfilter.nf_conntrack_max"
HASHSIZE = "/sys/module/nf_conntrack/parameters/hashsize"
SYSCTL_FILE = "/etc/sysctl.d/90-nodenet-nat-conntrack.conf"
MODPROBE_FILE = "/etc/modprobe.d/90-nodenet-nat-conntrack.conf"
MODULES_LOAD_FILE = "/etc/modules-load.d/90-nodenet-nat-conntrack.conf"
# What converge.yml sets, in seconds.
TIMEOUTS = {
    "net.netfilter.nf_conntrack_tcp_timeout_established": 86400,
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait": 3600,
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": 90,
    "net.netfilter.nf_conntrack_udp_timeout": 25,
    "net.netfilter.nf_conntrack_udp_timeout_stream": 100,
    "net.netfilter.nf_conntrack_generic_timeout": 300,
}
CONVERGE = {
    "max_per_core": 2097152,
    "min": 1048576,
    "hashsize": 1048576,
    "timeouts": {"tcp_established": 86400, "tcp_close_wait": 3600, "tcp_time_wait": 90,
                 "udp": 25, "udp_stream": 100, "generic": 300},
    "tcp_be_liberal": True,
}


def conntrack(module, check_failed=True, **params):
    return module("nodenet.nat.conntrack", params, check_failed)


def sysctl_file_settings(text):
    return dict(
        line.split("=", 1) for line in (raw.replace(" ", "") for raw in text.splitlines()) if line and not line.startswith("#")
    )


def online_cpus(node):
    count = 0
    for part in node.file("/sys/devices/system/cpu/online").content_string.strip().split(","):
        first, dummy, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def test_the_namespace_keys_are_applied(node):
    for key, seconds in TIMEOUTS.items():
        assert node.sysctl(key) == seconds, key
    assert node.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal") == 1


def test_the_table_size_and_hash_size_are_skipped_with_the_reason(node, module):
    table_size = node.sysctl(MAX_KEY)
    hashsize = int(node.file(HASHSIZE).content_string)
    wanted = max(CONVERGE["min"], CONVERGE["max_per_core"] * online_cpus(node))
    # Both must need a raise, or nothing would be written and nothing refused.
    assert wanted > table_size and CONVERGE["hashsize"] > hashsize

    result = conntrack(module, on_readonly="warn", **CONVERGE)

    assert not result["changed"]
    skipped = dict((entry["key"], entry["reason"]) for entry in result["skipped_keys"])
    assert sorted(skipped) == [HASHSIZE, MAX_KEY]
    assert "Permission denied" in skipped[MAX_KEY]
    assert "Operation not supported" in skipped[HASHSIZE]
    for reason in skipped.values():
        assert reason.startswith("read-only")
        assert "initial network namespace" in reason
    assert result["settings"][MAX_KEY] == {"before": table_size, "after": table_size}
    assert result["settings"][HASHSIZE] == {"before": hashsize, "after": hashsize}
    warnings = " ".join(result.get("warnings", []))
    assert MAX_KEY in warnings and HASHSIZE in warnings
    assert node.sysctl(MAX_KEY) == table_size


def test_the_persisted_files_hold_what_was_applied(node):
    assert sysctl_file_settings(node.file(SYSCTL_FILE).content_string) == dict(
        [(key, str(seconds)) for key, seconds in TIMEOUTS.items()] + [("net.netfilter.nf_conntrack_tcp_be_liberal", "1")]
    )
    # The hash size was skipped: no modprobe option that the kernel refused at runtime.
    assert not node.file(MODPROBE_FILE).exists
    assert [line for line in node.file(MODULES_LOAD_FILE).content_string.splitlines() if not line.startswith("#")] == [
        "nf_conntrack"
    ]


def test_raise_only_keeps_and_persists_the_higher_values_found(node, module):
    sysctl_file = "/etc/sysctl.d/91-nodenet-verify.conf"
    modprobe_file = "/etc/modprobe.d/91-nodenet-verify.conf"
    table_size = node.sysctl(MAX_KEY)
    hashsize = int(node.file(HASHSIZE).content_string)
    try:
        result = conntrack(module, max=1000, hashsize=1000, sysctl_file=sysctl_file, on_readonly="fail")
        assert result["skipped_keys"] == []
        assert result["settings"][MAX_KEY] == {"before": table_size, "after": table_size}
        assert sysctl_file_settings(node.file(sysctl_file).content_string) == {MAX_KEY: str(table_size)}
        assert "options nf_conntrack hashsize=%d" % hashsize in node.file(modprobe_file).content_string.splitlines()
    finally:
        node.run("rm -f %s %s /etc/modules-load.d/91-nodenet-verify.conf", sysctl_file, modprobe_file)


def test_on_readonly_fail_names_the_key_and_changes_nothing(node, module):
    files = dict((path, node.file(path).content_string) for path in (SYSCTL_FILE, MODULES_LOAD_FILE))
    result = conntrack(module, False, max=CONVERGE["min"] * 4, timeouts={"tcp_established": 7200}, on_readonly="fail")
    assert result["failed"]
    assert result["msg"].startswith(MAX_KEY + ": read-only")
    assert node.sysctl("net.netfilter.nf_conntrack_tcp_timeout_established") == 86400
    assert dict((path, node.file(path).content_string) for path in files) == files
    assert not node.file(MODPROBE_FILE).exists


def test_on_readonly_skip_skips_silently(node, module):
    result = conntrack(module, on_readonly="skip", **CONVERGE)
    assert not result["changed"]
    assert sorted(entry["key"] for entry in result["skipped_keys"]) == [HASHSIZE, MAX_KEY]
    assert not result.get("warnings")

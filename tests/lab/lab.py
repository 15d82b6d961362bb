#!/usr/bin/env python
"""Lab topology and packet verifier, run as root inside a lab node container.

Every namespace and link it makes lives inside the container's own network namespace,
so removing the container removes them all.

  lab.py host NAME ADDR/PREFIX NODE_ADDR/PREFIX [--route CIDR ...]
      a host namespace on a veth to the node (node side: v-NAME); its routes go via the node
  lab.py bridge BRIDGE ADDR/PREFIX [ADDR/PREFIX ...]
      a bridge in the node holding the pods' gateway addresses
  lab.py pod NAME BRIDGE ADDR/PREFIX GATEWAY
      a pod namespace whose veth (node side: v-NAME) is a port of BRIDGE, default route via GATEWAY
  lab.py serve NAMESPACE PORT LABEL [--udp]
      a daemon answering each connection with "<source ip it saw> <LABEL>"
  lab.py probe NAMESPACE ADDRESS PORT [--udp] [--count N] [--timeout S] [--source-port P]
      connects N times and prints one answer per line ("timeout" when none came)

NAMESPACE "-" is the container's own network namespace (a client or upstream container of the lab).
"""
import argparse
import ipaddress
import os
import socket
import subprocess
import sys

NETNS_DIR = "/run/netns"


def run(*argv):
    subprocess.run(argv, check=True)


def in_netns(namespace, *argv):
    run("ip", "netns", "exec", namespace, *argv)


def netns_argv(namespace, argv):
    """ARGV run inside NAMESPACE; "-" is the current network namespace."""
    return argv if namespace == "-" else ["ip", "netns", "exec", namespace] + argv


def address_args(address, device):
    """`ip addr add` arguments; IPv6 skips duplicate address detection so the lab is usable at once."""
    nodad = ["nodad"] if ipaddress.ip_interface(address).version == 6 else []
    return ["ip", "addr", "add", address, "dev", device] + nodad


def route_args(route, gateway):
    family = "-6" if ipaddress.ip_address(gateway).version == 6 else "-4"
    return ["ip", family, "route", "add", route, "via", gateway]


def add_namespace_link(name, address, routes, gateway):
    """Create namespace NAME with eth0 (ADDRESS) paired to v-NAME in the node; route ROUTES via GATEWAY."""
    run("ip", "netns", "add", name)
    run("ip", "link", "add", "v-" + name, "type", "veth", "peer", "name", "eth0", "netns", name)
    in_netns(name, "ip", "link", "set", "lo", "up")
    in_netns(name, *address_args(address, "eth0"))
    in_netns(name, "ip", "link", "set", "eth0", "up")
    for route in routes:
        in_netns(name, *route_args(route, gateway))


def cmd_host(args):
    node_interface = ipaddress.ip_interface(args.node_address)
    add_namespace_link(args.name, args.address, args.route, str(node_interface.ip))
    link = "v-" + args.name
    run(*address_args(args.node_address, link))
    run("ip", "link", "set", link, "up")


def cmd_bridge(args):
    run("ip", "link", "add", args.bridge, "type", "bridge")
    for address in args.address:
        run(*address_args(address, args.bridge))
    run("ip", "link", "set", args.bridge, "up")


def cmd_pod(args):
    add_namespace_link(args.name, args.address, ["default"], args.gateway)
    link = "v-" + args.name
    run("ip", "link", "set", link, "master", args.bridge)
    run("ip", "link", "set", link, "up")


def daemonize():
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def serve(port, label, udp, ready_fd=None):
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    if not udp:
        sock.listen(64)
    if ready_fd is not None:
        os.write(ready_fd, b"ready")
        os.close(ready_fd)
    if udp:
        while True:
            peer = sock.recvfrom(512)[1]
            sock.sendto(answer(peer, label), peer)
    while True:
        conn, peer = sock.accept()
        with conn:
            conn.sendall(answer(peer, label))


def answer(peer, label):
    address = ipaddress.ip_address(peer[0])
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return ("%s %s\n" % (address, label)).encode()


def cmd_serve(args):
    if args.ready_fd is not None:
        serve(args.port, args.label, args.udp, args.ready_fd)
        return
    # The daemon reports through a pipe once it listens, so a probe right after `serve` never races it.
    ready_read, ready_write = os.pipe()
    os.set_inheritable(ready_write, True)
    argv = [sys.executable, os.path.abspath(__file__), "serve", args.namespace, str(args.port), args.label,
            "--ready-fd", str(ready_write)] + (["--udp"] if args.udp else [])
    pid = os.fork()
    if pid == 0:
        os.close(ready_read)
        daemonize()
        command = netns_argv(args.namespace, argv)
        os.execvp(command[0], command)
    os.close(ready_write)
    os.waitpid(pid, 0)
    with os.fdopen(ready_read, "rb") as ready:
        if ready.read() != b"ready":
            sys.exit("server %s:%d in %s did not start" % (args.label, args.port, args.namespace))


def probe_once(address, port, udp, timeout, source_port=None):
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source_port is not None:
        # A client that keeps its source port (as resolvers do) keeps its conntrack flow.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", source_port))
    try:
        if udp:
            sock.sendto(b"probe", (address, port))
        else:
            sock.connect((address, port))
        return sock.recv(512).decode().strip()
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as error:
        return "error: %s" % error.strerror
    finally:
        sock.close()


def cmd_probe(args):
    if args.inside:
        for attempt in range(args.count):
            print(probe_once(args.address, args.port, args.udp, args.timeout, args.source_port), flush=attempt == args.count - 1)
        return
    argv = [sys.executable, os.path.abspath(__file__), "probe", args.namespace, args.address, str(args.port),
            "--inside", "--count", str(args.count), "--timeout", str(args.timeout)] + (["--udp"] if args.udp else [])
    argv += ["--source-port", str(args.source_port)] if args.source_port is not None else []
    command = netns_argv(args.namespace, argv)
    os.execvp(command[0], command)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    host = commands.add_parser("host")
    host.add_argument("name")
    host.add_argument("address")
    host.add_argument("node_address")
    host.add_argument("--route", action="append", default=[])
    host.set_defaults(func=cmd_host)

    bridge = commands.add_parser("bridge")
    bridge.add_argument("bridge")
    bridge.add_argument("address", nargs="+")
    bridge.set_defaults(func=cmd_bridge)

    pod = commands.add_parser("pod")
    pod.add_argument("name")
    pod.add_argument("bridge")
    pod.add_argument("address")
    pod.add_argument("gateway")
    pod.set_defaults(func=cmd_pod)

    server = commands.add_parser("serve")
    server.add_argument("namespace")
    server.add_argument("port", type=int)
    server.add_argument("label")
    server.add_argument("--udp", action="store_true")
    server.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    server.set_defaults(func=cmd_serve)

    probe = commands.add_parser("probe")
    probe.add_argument("namespace")
    probe.add_argument("address")
    probe.add_argument("port", type=int)
    probe.add_argument("--udp", action="store_true")
    probe.add_argument("--count", type=int, default=1)
    probe.add_argument("--timeout", type=float, default=2.0)
    probe.add_argument("--source-port", type=int, help="send from this port (every connection, as a resolver does)")
    probe.add_argument("--inside", action="store_true")
    probe.set_defaults(func=cmd_probe)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()

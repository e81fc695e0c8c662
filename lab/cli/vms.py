"""`vfio-lab qmp` and `vfio-lab console`: the lab VMs running right now."""

from __future__ import annotations

import argparse
import json
import sys
import time

from qemu.qmp.legacy import QEMUMonitorProtocol

from lab.core.cache import Cache
from lab.core.errors import UsageError
from lab.core.exitcodes import EXIT_OK
from lab.vm import inventory


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    qmp = sub.add_parser(
        "qmp", help="send a QMP command to a running lab VM (no command: list them)"
    )
    qmp.add_argument("--vm", help="VM id or name (default: the only one running)")
    qmp.add_argument("qmp_command", nargs="?", metavar="COMMAND", help="e.g. query-status")
    qmp.add_argument(
        "arguments", nargs="?", metavar="JSON", help='arguments, e.g. \'{"id": "edu0"}\''
    )
    qmp.set_defaults(func=cmd_qmp)

    con = sub.add_parser("console", help="print a running lab VM's serial console")
    con.add_argument("--vm", help="VM id or name (default: the only one running)")
    con.add_argument("-f", "--follow", action="store_true", help="keep printing until the VM stops")
    con.set_defaults(func=cmd_console)


def cmd_qmp(args: argparse.Namespace) -> int:
    directory = Cache().running
    if args.qmp_command is None:
        vms = inventory.list_running(directory)
        for vm in vms:
            print(f"{vm.id}  {vm.name}  pid {vm.pid}  ssh 127.0.0.1:{vm.ssh_port}")
        if not vms:
            print("no lab VM is running", file=sys.stderr)
        return EXIT_OK
    vm = inventory.pick(directory, args.vm)
    try:
        arguments = json.loads(args.arguments) if args.arguments else {}
    except ValueError as e:
        raise UsageError(f"JSON arguments: {e}") from None
    qmp = QEMUMonitorProtocol(vm.qmp_socket)
    qmp.connect()
    try:
        print(json.dumps(qmp.cmd_raw(args.qmp_command, arguments), indent=2))
    finally:
        qmp.close()
    return EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    vm = inventory.pick(Cache().running, args.vm)
    with open(vm.console_log, errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                print(chunk, end="", flush=True)
            elif not args.follow or not vm.alive():
                return EXIT_OK
            else:
                time.sleep(0.2)

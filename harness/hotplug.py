#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Host side of the NVMe hot-unplug test (harness/hotplug.sh).

Follows the guest's console log and answers its markers over QEMU's QMP
socket: "RFL-HOTPLUG-UNPLUG <round>" gets a device_del of the current NVMe
controller (and the DEVICE_DELETED event that says QEMU removed it),
"RFL-HOTPLUG-PLUG <round>" a new raw disk image, its block node and a new
controller on the same PCIe root port (blockdev-add, device_add). Ends when
QEMU closes the socket. Prints one result per QMP step, tab-separated:
PASS|FAIL, name, detail.

Usage: hotplug.py LOG QMP_SOCKET IMAGE_PREFIX IMAGE_BYTES DEVICE_ID PORT
"""

import json
import os
import socket
import sys
import time

# Seconds for QEMU to start listening, and for a guest to let a controller go.
CONNECT_WITHIN = 60
DELETED_WITHIN = 60


class Qmp:
    """A QMP client: commands and their answers, events kept aside."""

    def __init__(self, path):
        deadline = time.monotonic() + CONNECT_WITHIN
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.buffer = b""
        self.events = []
        self.closed = False
        self.receive()  # the greeting
        self.command("qmp_capabilities")

    def receive(self, timeout=None):
        """Returns the next message, or None on timeout or a closed socket."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                self.closed = True
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def command(self, name, **arguments):
        """Runs a command; returns (True, result) or (False, error description)."""
        message = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self.receive()
            if reply is None:
                return False, "QMP socket closed"
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                return False, reply["error"].get("desc", str(reply["error"]))
            else:
                return True, reply.get("return")

    def wait_event(self, name, device, timeout):
        """Whether event NAME for DEVICE came (or comes within TIMEOUT s)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and event.get("data", {}).get("device") == device:
                    self.events.remove(event)
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event = self.receive(left)
            if event is None:
                return False
            if "event" in event:
                self.events.append(event)


def result(ok, name, detail):
    print(f"{'PASS' if ok else 'FAIL'}\t{name}\t{detail}", flush=True)


def follow(log):
    """Yields the lines of the growing file LOG; None when nothing new came."""
    with open(log, "rb") as f:
        partial = b""
        while True:
            data = f.readline()
            if not data:
                yield None
                continue
            partial += data
            if partial.endswith(b"\n"):
                yield partial.decode(errors="replace")
                partial = b""


def main():
    log, path, image_prefix, image_bytes, device, port = sys.argv[1:]
    while not os.path.exists(log):
        time.sleep(0.1)
    qmp = Qmp(path)
    plugged = 0
    for line in follow(log):
        if line is None:
            # Nothing new on the console: events are kept, and QEMU closing
            # the socket (the guest powered off, or was killed) ends it all.
            event = qmp.receive(0.2)
            if qmp.closed:
                break
            if event is not None and "event" in event:
                qmp.events.append(event)
            continue
        if "RFL-HOTPLUG-UNPLUG " in line:
            step = line.split("RFL-HOTPLUG-UNPLUG ", 1)[1].split()[0]
            ok, detail = qmp.command("device_del", id=device)
            result(ok, f"round{step}_device_del", f"{device}: {detail or 'accepted'}")
            if ok:
                deleted = qmp.wait_event("DEVICE_DELETED", device, DELETED_WITHIN)
                result(deleted, f"round{step}_device_deleted",
                       f"{device} removed by QEMU" if deleted else
                       f"no DEVICE_DELETED for {device} within {DELETED_WITHIN} s")
        elif "RFL-HOTPLUG-PLUG " in line:
            step = line.split("RFL-HOTPLUG-PLUG ", 1)[1].split()[0]
            plugged += 1
            image = f"{image_prefix}{plugged}.img"
            with open(image, "wb") as f:
                f.truncate(int(image_bytes))
            node = f"hotplug-disk{plugged}"
            device = f"hotplug-nvme{plugged}"
            ok, detail = qmp.command("blockdev-add", driver="raw", **{"node-name": node},
                                     file={"driver": "file", "filename": image})
            if ok:
                ok, detail = qmp.command("device_add", driver="nvme", id=device, bus=port,
                                         drive=node, serial=f"rfl-dma-hp{plugged}",
                                         mdts=10)
            result(ok, f"round{step}_device_add", f"{device} on {port}: {detail or 'added'}")


if __name__ == "__main__":
    main()

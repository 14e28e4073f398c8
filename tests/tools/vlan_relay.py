#!/usr/bin/env python3
"""A user-space 802.1Q sub-interface for test namespaces whose kernel has no 8021q module.

usage: vlan_relay.py TRUNK VID SUBIF

Creates the tap device SUBIF (owned by this process) and relays: frames received on TRUNK carrying
VLAN tag VID leave SUBIF untagged (as if received there); frames the host sends out of SUBIF go out of
TRUNK tagged with VID. Everything else on TRUNK is left to the kernel. Prints "ready" once SUBIF exists.
"""
import fcntl
import os
import select
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10


def main():
    trunk, vid, subif = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", subif.encode(), IFF_TAP | IFF_NO_PI))
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    raw.bind((trunk, 0))
    # The kernel moves a received tag out of the frame into metadata (even without 8021q loaded);
    # ask for it as auxiliary data.
    raw.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    print("ready", flush=True)
    tag = struct.pack("!HH", 0x8100, vid & 0x0FFF)
    while True:
        readable, _, _ = select.select([raw, tap], [], [])
        if raw in readable:
            frame, anc, _, addr = raw.recvmsg(65535, socket.CMSG_SPACE(20))
            if addr[2] == PACKET_OUTGOING:
                continue
            tci = None
            for level, kind, data in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 18:
                    status = struct.unpack("I", data[:4])[0]
                    if status & TP_STATUS_VLAN_VALID:
                        tci = struct.unpack("H", data[16:18])[0]  # tpacket_auxdata.tp_vlan_tci
            if tci is None and len(frame) >= 18 and frame[12:14] == b"\x81\x00":
                tci = struct.unpack("!H", frame[14:16])[0]
                frame = frame[:12] + frame[16:]
            if tci is not None and tci & 0x0FFF == vid:
                os.write(tap, frame)
        if tap in readable:
            frame = os.read(tap, 65535)
            if len(frame) >= 14:
                raw.send(frame[:12] + tag + frame[12:])


if __name__ == "__main__":
    main()

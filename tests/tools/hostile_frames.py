#!/usr/bin/env python3
"""Sends hostile traffic at the appliance from inside a test's network namespace.

usage: hostile_frames.py IFACE DST_MAC DST_IP SRC_NET(a.b.c) MODE [COUNT]
MODE: garbage - malformed Ethernet/ARP/IPv4/TCP/UDP/ICMP frames (deterministic, seeded)
      synflood - TCP SYNs to port 443 (the API) with valid checksums from spoofed sources SRC_NET.100-199
Frames are written with an AF_PACKET socket, so nothing of the host's own stack is involved.
"""
import random
import socket
import struct
import sys


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, payload, ihl=5, total=None, flags_frag=0, ttl=64, good_sum=True):
    total = 20 + len(payload) if total is None else total
    hdr = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, 0, total, random.randrange(65536), flags_frag, ttl,
                      proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    s = csum(hdr) if good_sum else 0x1234
    hdr = hdr[:10] + struct.pack("!H", s) + hdr[12:]
    return hdr + payload


def tcp(src, dst, sport, dport, flags, seq=0, ack=0, offset=5, payload=b"", good_sum=True):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
    s = csum(pseudo + hdr + payload) if good_sum else 0xBEEF
    return hdr[:16] + struct.pack("!H", s) + hdr[18:] + payload


def garbage(dst_mac, src_mac, dst_ip, net):
    rnd = random.Random(1234)
    random.seed(1234)
    src_ip = net + ".66"
    frames = []
    for n in (0, 1, 13, 14, 15, 60, 600, 1514):  # runts and random bytes
        frames.append(bytes(rnd.randrange(256) for _ in range(n)))
    for _ in range(200):  # random payloads under every interesting ethertype
        et = rnd.choice([0x0800, 0x0806, 0x86DD, 0x8100, 0x88CC, rnd.randrange(65536)])
        frames.append(eth(dst_mac, src_mac, et, bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 1500)))))
    t = tcp(src_ip, dst_ip, 4444, 443, 0x02)
    frames += [
        eth(dst_mac, src_mac, 0x0806, b"\x00\x01\x08\x00\x06\x04\x00\x01"),  # truncated ARP
        eth(b"\xff" * 6, src_mac, 0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac
            + socket.inet_aton(dst_ip) + b"\0" * 6 + socket.inet_aton(dst_ip)),  # ARP claiming the appliance's IP
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, t, ihl=3)),  # IHL below 5
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, t, ihl=15)),  # IHL beyond the packet
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, t, total=9000)),  # length beyond the frame
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, t, total=10)),  # length below the header
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, t, good_sum=False)),  # bad header checksum
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, t, flags_frag=0x2000)),  # first fragment only
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, t, flags_frag=0x1FFF)),  # last fragment, huge offset
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, tcp(src_ip, dst_ip, 1, 443, 0x02, offset=15))),
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, tcp(src_ip, dst_ip, 1, 443, 0x02, offset=2))),
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, tcp(src_ip, dst_ip, 1, 443, 0xFF))),  # every flag
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, tcp(src_ip, dst_ip, 1, 443, 0x02, good_sum=False))),
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, tcp(src_ip, dst_ip, 1, 443, 0x10, ack=5))),  # stray ACK
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, tcp(src_ip, dst_ip, 1, 443, 0x04))),  # stray RST
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 6, b"\x00\x50")),  # TCP header cut short
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 17, b"\x00\x44\x00\x43\xff\xff\x00\x00")),  # UDP len
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 1, b"\x08")),  # ICMP cut short
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, "255.255.255.255", 17, b"\x00\x43\x00\x44" + b"\0" * 300)),
        eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 99, b"x" * 40)),  # unknown protocol
        eth(dst_mac, src_mac, 0x8100, b"\x0f\xff\x08\x00" + ipv4(src_ip, dst_ip, 6, t)),  # VLAN 4095
    ]
    return frames


def synflood(dst_mac, src_mac, dst_ip, net, count):
    rnd = random.Random(99)
    frames = []
    for i in range(count):
        src = "%s.%d" % (net, 100 + i % 100)
        sport = 1024 + rnd.randrange(60000)
        frames.append(eth(dst_mac, src_mac, 0x0800,
                          ipv4(src, dst_ip, 6, tcp(src, dst_ip, sport, 443, 0x02, seq=rnd.randrange(1 << 32)))))
    return frames


def main():
    iface, dst_mac, dst_ip, net, mode = sys.argv[1:6]
    count = int(sys.argv[6]) if len(sys.argv) > 6 else 2000
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    src_mac = s.getsockname()[4]
    dmac = bytes.fromhex(dst_mac.replace(":", ""))
    frames = garbage(dmac, src_mac, dst_ip, net) if mode == "garbage" else synflood(dmac, src_mac, dst_ip, net, count)
    sent = 0
    for f in frames:
        try:
            s.send(f)
            sent += 1
        except OSError:
            pass  # the kernel refuses some malformed sizes (e.g. empty frames)
    print("sent %d of %d %s frames" % (sent, len(frames), mode))


if __name__ == "__main__":
    main()

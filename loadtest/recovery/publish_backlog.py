#!/usr/bin/env python3
"""Publishes N QoS 1 messages (64 B payloads) to b/x as fast as the broker acknowledges them,
1,000 in flight: the backlog of loadtest/recovery/run.sh."""
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
def s(x): return len(x).to_bytes(2,'big')+x
c = socket.create_connection(('127.0.0.1', port))
c.sendall(bytes([0x10, 12+len(b'bulk')]) + s(b'MQTT') + bytes([4, 2, 0, 60]) + s(b'bulk'))
assert c.recv(4)[0] == 0x20
topic = s(b'b/x')
batch = 1000
buf = b''
acked = 0
t0 = time.time()
for start in range(1, n + 1, batch):
    out = []
    for i in range(start, min(start + batch, n + 1)):
        pid = (i % 65535) + 1
        payload = b'%064d' % i
        body = topic + pid.to_bytes(2, 'big') + payload
        out.append(bytes([0x32, len(body)]) + body)
    c.sendall(b''.join(out))
    want = len(out) * 4
    while len(buf) < want:
        buf += c.recv(1 << 20)
    buf = buf[want:]
    acked += len(out)
print(f"published and acknowledged {acked} in {time.time()-t0:.1f} s")

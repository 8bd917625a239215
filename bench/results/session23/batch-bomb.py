# An authorized caller's EncryptBatch of 4 MiB of empty items: the crypto
# service's CPU and peak RSS for one such call (generic gRPC call, raw bytes).
import grpc, sys, time, os
pid = int(sys.argv[1]); target = sys.argv[2]; size = int(sys.argv[3])
def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def hwm():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmHWM"): return l.split()[1]
body = b"\x0a\x00" * (size // 2)   # field 1 (items), empty EncryptRequest, repeated
ch = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
call = ch.unary_unary("/agentregistry.crypto.v1.CryptoService/EncryptBatch", request_serializer=None, response_deserializer=None)
print("items", size // 2, "HWM before", hwm(), "kB")
for i in range(3):
    c0 = cpu(); t0 = time.time()
    try:
        call(body, timeout=30)
        print("ok?!")
    except grpc.RpcError as e:
        print(e.code(), e.details()[:100])
    print(f"  wall {1000*(time.time()-t0):.0f} ms, server CPU {1000*(cpu()-c0):.0f} ms, HWM {hwm()} kB")

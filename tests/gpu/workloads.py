"""Python programs the gpu tests run in children under the shim (each prints one JSON line)."""

# Allocate CHUNK-MiB tensors until PyTorch raises its out-of-memory error, then prove the process
# still works: free, allocate a small tensor and compute with it.
FILL_UNTIL_OOM = r"""
import json, sys, torch
chunk = int(sys.argv[1]) << 20
held, oom, message = [], False, ""
try:
    while len(held) < 4096:
        held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
except torch.cuda.OutOfMemoryError as err:
    oom, message = True, str(err).splitlines()[0]
allocated = len(held) * chunk
free, total = torch.cuda.mem_get_info()
held.clear()
torch.cuda.empty_cache()
x = torch.ones(1024, 1024, device="cuda")
alive = float((x @ x).sum().item()) == 1024.0 ** 3
print(json.dumps({"oom": oom, "allocated": allocated, "alive": alive, "message": message,
                  "free_at_oom": free, "total": total}))
"""

MEM_GET_INFO = r"""
import json, torch
torch.cuda.init()
free, total = torch.cuda.mem_get_info()
print(json.dumps({"free": free, "total": total}))
"""

# Allocate N MiB, say so, then wait for a line on stdin before exiting (holding the memory).
HOLD = r"""
import json, sys, torch
try:
    t = torch.empty(int(sys.argv[1]) << 20, dtype=torch.uint8, device="cuda")
    print(json.dumps({"ok": True}), flush=True)
except torch.cuda.OutOfMemoryError:
    print(json.dumps({"ok": False}), flush=True)
sys.stdin.readline()
"""

TRY_ALLOC = r"""
import json, sys, torch
try:
    t = torch.empty(int(sys.argv[1]) << 20, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    print(json.dumps({"ok": True}))
except torch.cuda.OutOfMemoryError:
    print(json.dumps({"ok": False}))
"""

# Matmul throughput (iterations/s) after a warm-up that also lets the SM-cap controller settle.
MATMUL = r"""
import json, sys, time, torch
seconds, size = float(sys.argv[1]), int(sys.argv[2])
a = torch.randn(size, size, device="cuda", dtype=torch.float16)
b = torch.randn(size, size, device="cuda", dtype=torch.float16)
for _ in range(20):
    a @ b
torch.cuda.synchronize()
start = time.perf_counter()
warm_until = start + min(3.0, seconds / 4)
iters, counted_from, counted = 0, None, 0
while time.perf_counter() - start < seconds:
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    iters += 10
    now = time.perf_counter()
    if counted_from is None and now >= warm_until:
        counted_from, counted = now, iters
print(json.dumps({"iters_per_s": (iters - counted) / (time.perf_counter() - counted_from)}))
"""


def gpu_uuid() -> str:
    """GPU 0's UUID as NVML and the claim config spell it ("GPU-...")."""
    import pynvml

    pynvml.nvmlInit()
    try:
        uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
        return uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    finally:
        pynvml.nvmlShutdown()

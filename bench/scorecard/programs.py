"""Python programs the card runs in children (each prints JSON lines). The PyTorch ones that
tests/gpu already has (matmul loop, mem_get_info, hold, try-alloc) are imported from
tests/gpu/workloads.py, so the card and the gpu tier measure the same code."""

from tests.gpu.workloads import HOLD, MATMUL, MEM_GET_INFO, TRY_ALLOC  # noqa: F401  (re-exported)

# NVML as the process sees it: GPU 0's memory info and the processes NVML lists, with the bytes
# each holds. Under the shim this is the claim's view; without it, the host's (the ground truth).
NVML_PROBE = r"""
import json, sys
import pynvml as n
n.nvmlInit()
try:
    h = n.nvmlDeviceGetHandleByIndex(0)
    m = n.nvmlDeviceGetMemoryInfo(h)
    procs = {}
    for p in n.nvmlDeviceGetComputeRunningProcesses(h):
        procs[str(p.pid)] = int(p.usedGpuMemory or 0)
    name = n.nvmlDeviceGetName(h)
    uuid = n.nvmlDeviceGetUUID(h)
    out = {"total": int(m.total), "used": int(m.used), "free": int(m.free), "procs": procs,
           "name": name.decode() if isinstance(name, bytes) else str(name),
           "uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid)}
    try:
        m2 = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
        out["reserved"] = int(m2.reserved)
    except Exception:
        out["reserved"] = 0
    try:
        drv = n.nvmlSystemGetDriverVersion()
        out["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
        out["cuda_driver"] = int(n.nvmlSystemGetCudaDriverVersion())
    except Exception as exc:
        out["driver_error"] = str(exc)
finally:
    n.nvmlShutdown()
print(json.dumps(out))
"""

TORCH_FACTS = r"""
import json, torch
ok = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "torch_cuda": torch.version.cuda, "available": ok,
                  "device": torch.cuda.get_device_name(0) if ok else ""}))
"""

# Fill the wall: 256 MiB tensors until PyTorch's OutOfMemoryError, then 16 MiB, then 1 MiB ones (so
# the figure is the wall's, not the chunk size's: PyTorch's caching allocator reserves 20 MiB
# segments for requests between 1 and 10 MiB, 2 MiB ones for requests up to 1 MiB, exact 2 MiB
# multiples above); print what it holds and wait on stdin (the parent reads the host's NVML
# meanwhile); then free and prove the process still computes.
FILL_AND_HOLD = r"""
import json, os, sys, torch
held, oom, message = [], False, ""
for chunk in (256 << 20, 16 << 20, 1 << 20):
    try:
        while len(held) < 100000:
            held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
    except torch.cuda.OutOfMemoryError as err:
        oom, message = True, str(err).splitlines()[0][:200]
torch.cuda.synchronize()
allocated = sum(t.numel() for t in held)
free, total = torch.cuda.mem_get_info()
print(json.dumps({"pid": os.getpid(), "oom": oom, "message": message, "allocated": allocated,
                  "free_at_wall": free, "total": total}), flush=True)
sys.stdin.readline()
held.clear()
torch.cuda.empty_cache()
x = torch.ones(1024, 1024, device="cuda")
alive = float((x @ x).sum().item()) == 1024.0 ** 3
print(json.dumps({"alive": alive}), flush=True)
"""

# Per-launch cost of a tiny kernel (best of 3 timed runs of N launches, after a warm-up).
LAUNCH = r"""
import json, sys, time, torch
n = int(sys.argv[1])
x = torch.zeros(1, device="cuda")
for _ in range(2000):
    x.add_(1)
torch.cuda.synchronize()
best = None
for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / n
    best = dt if best is None else min(best, dt)
print(json.dumps({"launch_us": best * 1e6}))
"""

# MATMUL, but replaying a captured CUDA graph of 10 matmuls (graph launches under the cap).
GRAPH_MATMUL = r"""
import json, sys, time, torch
seconds, size = float(sys.argv[1]), int(sys.argv[2])
a = torch.randn(size, size, device="cuda", dtype=torch.float16)
b = torch.randn(size, size, device="cuda", dtype=torch.float16)
stream = torch.cuda.Stream()
stream.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(stream):
    for _ in range(3):
        c = a @ b
torch.cuda.current_stream().wait_stream(stream)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    for _ in range(10):
        c = a @ b
graph.replay()
torch.cuda.synchronize()
start = time.perf_counter()
warm_until = start + min(3.0, seconds / 4)
iters, counted_from, counted = 0, None, 0
while time.perf_counter() - start < seconds:
    graph.replay()
    torch.cuda.synchronize()
    iters += 10
    now = time.perf_counter()
    if counted_from is None and now >= warm_until:
        counted_from, counted = now, iters
print(json.dumps({"iters_per_s": (iters - counted) / (time.perf_counter() - counted_from)}))
"""

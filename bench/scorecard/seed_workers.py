"""The user's two HAMi-era workers (gpu-worker-a / gpu-worker-b): their container scripts exactly
as their Deployments ran them, and their limits (memory percent of the GPU, SM percent).

The scripts loop forever; HARNESS runs one unchanged (``exec`` in ``__main__``) and watches it from
a thread: once the script holds its blob and has iterated, it prints what PyTorch sees, waits for
the parent's go (the parent probes nvidia-smi and NVML meanwhile), counts the script's own
iteration variable over a window, prints the rate and exits.
"""

WORKER_A = """\
import torch, time, os
pod = os.environ.get('POD_NAME', 'worker-a')
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
print(f'[{pod}] device={device} gpu={torch.cuda.get_device_name(0)}', flush=True)
# Allocate 1.5GB resident tensor (well within 2GB limit)
elements = (1500 * 1024 * 1024) // 4
blob = torch.zeros(elements, dtype=torch.float32, device=device)
print(f'[{pod}] VRAM allocated: {torch.cuda.memory_allocated() // 1024**2}MB', flush=True)
a = torch.randn(1024, 1024, device=device, dtype=torch.float16)
b = torch.randn(1024, 1024, device=device, dtype=torch.float16)
i = 0
while True:
    c = torch.matmul(a, b)
    torch.cuda.synchronize()
    i += 1
    if i % 100 == 0:
        print(f'[{pod}] iter={i} vram={torch.cuda.memory_allocated() // 1024**2}MB', flush=True)
    time.sleep(0.1)
"""

WORKER_B = """\
import torch, time, os
pod = os.environ.get('POD_NAME', 'worker-b')
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
print(f'[{pod}] device={device} gpu={torch.cuda.get_device_name(0)}', flush=True)
elements = (2000 * 1024 * 1024) // 4
blob = torch.zeros(elements, dtype=torch.float32, device=device)
print(f'[{pod}] VRAM allocated: {torch.cuda.memory_allocated() // 1024**2}MB', flush=True)
a = torch.randn(2048, 2048, device=device, dtype=torch.float16)
b = torch.randn(2048, 2048, device=device, dtype=torch.float16)
i = 0
while True:
    c = torch.matmul(a, b)
    torch.cuda.synchronize()
    i += 1
    if i % 100 == 0:
        print(f'[{pod}] iter={i} vram={torch.cuda.memory_allocated() // 1024**2}MB', flush=True)
    time.sleep(0.05)
"""

# name -> (script, gpumem-percentage, gpucores) as in the user's manifests.
WORKERS = {"a": (WORKER_A, 20, 25), "b": (WORKER_B, 30, 40)}

HARNESS = r"""
import json, os, sys, threading, time
script, window = sys.argv[1], float(sys.argv[2])
g = {"__name__": "__main__"}

def watch():
    while g.get("i", 0) < 3:
        time.sleep(0.05)
    import torch
    free, total = torch.cuda.mem_get_info()
    print(json.dumps({"pid": os.getpid(), "free": free, "total": total,
                      "allocated": torch.cuda.memory_allocated(),
                      "reserved": torch.cuda.memory_reserved()}), flush=True)
    sys.stdin.readline()
    i0, t0 = g["i"], time.perf_counter()
    time.sleep(window)
    i1, t1 = g["i"], time.perf_counter()
    print(json.dumps({"iters_per_s": (i1 - i0) / (t1 - t0), "iters": i1}), flush=True)
    os._exit(0)

threading.Thread(target=watch, daemon=True).start()
exec(compile(script, "<worker>", "exec"), g)
"""

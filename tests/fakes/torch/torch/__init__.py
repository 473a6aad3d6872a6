"""A stand-in for PyTorch over the fake CUDA driver, so the scorecard's GPU path (its PyTorch
programs, the user's worker scripts, the orchestration around them) runs end to end in CI.

Not PyTorch: only the calls the card's programs and the seed workers make. What matters is real
where it can be: every CUDA tensor is a ``cuMemAlloc_v2`` on ``libcuda.so.1`` (the fake driver, under
``libvgpu.so`` when the card preloads it), freed with ``cuMemFree_v2`` when the tensor goes;
a refused allocation raises ``torch.cuda.OutOfMemoryError``; ``mem_get_info`` is
``cuMemGetInfo_v2``; a matmul is a kernel launch whose simulated device time grows with its size;
``synchronize`` is ``cuCtxSynchronize``; a captured CUDA graph replays through ``cuGraphLaunch``.
Values are tracked only for constant tensors (ones, zeros), enough for the card's sanity checks.

Used by ``bench/gpu_scorecard.py --torch-on-fakes`` (tests/bench), never by a user.
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from typing import Any, Iterator

__version__ = "0.0-fake"


class _Version:
    cuda = "12.4"


version = _Version()


class _DType:
    def __init__(self, name: str, size: int) -> None:
        self.name, self.itemsize = name, size

    def __repr__(self) -> str:
        return f"torch.{self.name}"


float16, float32, uint8 = _DType("float16", 2), _DType("float32", 4), _DType("uint8", 1)

_lib = ctypes.CDLL("libcuda.so.1")
_lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
_lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
_lib.cuMemGetInfo_v2.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
_lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
_lib.cuGraphLaunch.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_lib.fakeCudaGraphExecCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_longlong]
_ctx = ctypes.c_void_p()
_init_lock = threading.Lock()
_ready = False
_allocated = 0
_capturing: list[int] | None = None  # launch device-times (us) while a graph is being captured


def _check(rc: int, what: str) -> None:
    if rc == 2:
        raise cuda.OutOfMemoryError(f"CUDA out of memory. {what} was refused (CUDA_ERROR_OUT_OF_MEMORY)")
    if rc != 0:
        raise RuntimeError(f"CUDA error {rc} in {what}")


def _current() -> None:
    """Initialise once; make the primary context current on the calling thread."""
    global _ready
    with _init_lock:
        if not _ready:
            _check(_lib.cuInit(0), "cuInit")
            _check(_lib.cuDevicePrimaryCtxRetain(ctypes.byref(_ctx), 0), "cuDevicePrimaryCtxRetain")
            _ready = True
    _check(_lib.cuCtxSetCurrent(_ctx), "cuCtxSetCurrent")


def _launch(us: int) -> None:
    if _capturing is not None:
        _capturing.append(us)
        return
    _current()
    _check(_lib.cuLaunchKernel(None, max(1, us), 1, 1, 1000, 1, 1, 0, None, None, None), "cuLaunchKernel")


class device:  # noqa: N801 - torch's spelling
    def __init__(self, kind: str) -> None:
        self.type = kind

    def __repr__(self) -> str:
        return self.type


class Tensor:
    def __init__(self, shape: tuple[int, ...], dtype: _DType, value: float | None) -> None:
        global _allocated
        self.shape, self.dtype, self.value, self.ptr = shape, dtype, value, ctypes.c_uint64(0)
        self.nbytes = self.numel() * dtype.itemsize
        _current()
        _check(_lib.cuMemAlloc_v2(ctypes.byref(self.ptr), self.nbytes), f"allocating {self.nbytes} bytes")
        _allocated += self.nbytes

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __del__(self) -> None:
        global _allocated
        ptr = getattr(self, "ptr", None)
        if ptr is not None and ptr.value and _lib is not None:
            _lib.cuMemFree_v2(ptr)
            _allocated -= self.nbytes
            self.ptr = None

    def __matmul__(self, other: Tensor) -> Tensor:
        n, k = self.shape[0], self.shape[-1]
        m = other.shape[-1]
        _launch(int(n * m * k / 70e6))  # ~1 ms for 4096^3, like a fast GPU's fp16 matmul
        value = self.value * other.value * k if self.value is not None and other.value is not None else None
        return Tensor((n, m), self.dtype, value)

    def add_(self, x: float) -> Tensor:
        _launch(1)
        if self.value is not None:
            self.value += x
        return self

    def sum(self) -> _Scalar:
        return _Scalar(self.value * self.numel() if self.value is not None else 0.0)


class _Scalar:
    def __init__(self, v: float) -> None:
        self.v = v

    def item(self) -> float:
        return self.v


def _shape(size: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple(int(s) for s in (size[0] if len(size) == 1 and isinstance(size[0], tuple) else size))


def _make(size: tuple[Any, ...], value: float | None, dtype: _DType | None, device: Any) -> Tensor:
    if str(device) != "cuda":
        raise RuntimeError("the fake torch has CUDA tensors only")
    return Tensor(_shape(size), dtype or float32, value)


def empty(*size: Any, dtype: _DType | None = None, device: Any = "cpu") -> Tensor:
    return _make(size, None, dtype, device)


def zeros(*size: Any, dtype: _DType | None = None, device: Any = "cpu") -> Tensor:
    return _make(size, 0.0, dtype, device)


def ones(*size: Any, dtype: _DType | None = None, device: Any = "cpu") -> Tensor:
    return _make(size, 1.0, dtype, device)


def randn(*size: Any, dtype: _DType | None = None, device: Any = "cpu") -> Tensor:
    return _make(size, None, dtype, device)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return a @ b


class _Cuda:
    class OutOfMemoryError(RuntimeError):
        pass

    class Stream:
        def wait_stream(self, other: Any) -> None:
            pass

    class CUDAGraph:
        def __init__(self) -> None:
            self.exec = ctypes.c_void_p()

        def replay(self) -> None:
            _current()
            _check(_lib.cuGraphLaunch(self.exec, None), "cuGraphLaunch")

    @staticmethod
    @contextmanager
    def graph(g: Any) -> Iterator[None]:
        global _capturing
        _capturing = []
        try:
            yield
        finally:
            us, _capturing = sum(_capturing), None
            _current()
            _check(_lib.fakeCudaGraphExecCreate(ctypes.byref(g.exec), us * 1000), "graph instantiate")

    @staticmethod
    @contextmanager
    def stream(s: Any) -> Iterator[None]:
        yield

    @staticmethod
    def current_stream() -> Any:
        return _Cuda.Stream()

    @staticmethod
    def is_available() -> bool:
        try:
            _current()
            return True
        except RuntimeError:
            return False

    @staticmethod
    def init() -> None:
        _current()

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def get_device_properties(index: int = 0) -> Any:
        class Properties:
            uuid = "fake"
        return Properties()

    @staticmethod
    def get_device_name(index: int = 0) -> str:
        return "NVIDIA Fake H100 80GB HBM3 (fake torch)"

    @staticmethod
    def mem_get_info(index: int = 0) -> tuple[int, int]:
        _current()
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        _check(_lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo_v2")
        return free.value, total.value

    @staticmethod
    def memory_allocated() -> int:
        return _allocated

    @staticmethod
    def memory_reserved() -> int:
        return _allocated

    @staticmethod
    def synchronize() -> None:
        _current()
        _check(_lib.cuCtxSynchronize(), "cuCtxSynchronize")

    @staticmethod
    def empty_cache() -> None:
        pass


cuda = _Cuda()

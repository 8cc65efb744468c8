"""A tiny, error-checked ctypes wrapper over the CUDA runtime (libcudart).

The kiosk needs device memory, a stream and the GPU's identity to run a TensorRT plan; torch, cupy or pycuda
would pull hundreds of MB for that. Nothing here is loaded until a GPU path asks for it, and every failure is a
``CudaError`` carrying CUDA's own error name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import InferenceError

_H2D, _D2H = 1, 2
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76
# cudaDeviceProp grows with CUDA versions but always starts with char name[256]; over-allocate generously.
_PROP_BYTES = 16384
_NO_DEVICE = {100: "no CUDA device", 35: "no NVIDIA driver, or one too old for this CUDA runtime"}


class CudaError(InferenceError):
    code = "cuda"


@dataclass(frozen=True, slots=True)
class CudaProbe:
    """What a GPU step needs to know before trying: is there a usable device, and if not, why not."""

    devices: int
    reason: str

    @property
    def available(self) -> bool:
        return self.devices > 0


def _candidates() -> list[str]:
    names = []
    if env := os.environ.get("STORECLERK_CUDART"):
        names.append(env)
    if found := ctypes.util.find_library("cudart"):
        names.append(found)
    names += ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]
    # pip's nvidia-cuda-runtime wheels put it under site-packages/nvidia/**/lib, outside the loader's path.
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        names += sorted(glob.glob(os.path.join(base, "**", "lib", "libcudart.so*"), recursive=True), reverse=True)
    names += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"), reverse=True)
    return names


@functools.cache
def _lib() -> ctypes.CDLL:
    tried = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            tried.append(Path(name).name)
            continue
        _declare(lib)
        return lib
    raise CudaError(f"libcudart not found (tried {', '.join(dict.fromkeys(tried))}); set STORECLERK_CUDART")


def _declare(lib: ctypes.CDLL) -> None:
    c_int, vp, size_t = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
    sigs = {
        "cudaGetDeviceCount": [ctypes.POINTER(c_int)],
        "cudaSetDevice": [c_int],
        "cudaDeviceGetAttribute": [ctypes.POINTER(c_int), c_int, c_int],
        "cudaMalloc": [ctypes.POINTER(vp), size_t],
        "cudaFree": [vp],
        "cudaMemcpy": [vp, vp, size_t, c_int],
        "cudaMemcpyAsync": [vp, vp, size_t, c_int, vp],
        "cudaStreamCreate": [ctypes.POINTER(vp)],
        "cudaStreamSynchronize": [vp],
        "cudaStreamDestroy": [vp],
        "cudaRuntimeGetVersion": [ctypes.POINTER(c_int)],
    }
    for name, argtypes in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, c_int
    for name in ("cudaGetErrorName", "cudaGetErrorString"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = [c_int], ctypes.c_char_p


def _check(status: int, what: str) -> None:
    if status != 0:
        lib = _lib()
        name = lib.cudaGetErrorName(status).decode()
        text = lib.cudaGetErrorString(status).decode()
        raise CudaError(f"{what} failed: {name} ({status}): {text}")


# --- device queries -------------------------------------------------------------------------------------------


def probe() -> CudaProbe:
    """Never raises: a missing library, driver or device is a reason, not an error."""
    try:
        lib = _lib()
    except CudaError as exc:
        return CudaProbe(0, str(exc))
    count = ctypes.c_int(0)
    status = lib.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0:
        return CudaProbe(0, _NO_DEVICE.get(status, f"cudaGetDeviceCount returned {status}"))
    if count.value == 0:
        return CudaProbe(0, "no CUDA device")
    return CudaProbe(count.value, f"{count.value} CUDA device(s)")


def set_device(device: int) -> None:
    _check(_lib().cudaSetDevice(device), f"cudaSetDevice({device})")


def compute_capability(device: int = 0) -> tuple[int, int]:
    lib, major, minor = _lib(), ctypes.c_int(), ctypes.c_int()
    _check(lib.cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device), "cudaDeviceGetAttribute")
    _check(lib.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device), "cudaDeviceGetAttribute")
    return major.value, minor.value


def device_name(device: int = 0) -> str:
    lib = _lib()
    # CUDA 12+ headers map cudaGetDeviceProperties to the _v2 symbol; older runtimes only have the plain one.
    fn = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int
    buf = ctypes.create_string_buffer(_PROP_BYTES)
    _check(fn(buf, device), "cudaGetDeviceProperties")
    return buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace")


def runtime_version() -> int:
    v = ctypes.c_int()
    _check(_lib().cudaRuntimeGetVersion(ctypes.byref(v)), "cudaRuntimeGetVersion")
    return v.value


# --- streams and memory ---------------------------------------------------------------------------------------


class Stream:
    def __init__(self) -> None:
        handle = ctypes.c_void_p()
        _check(_lib().cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        self._handle: int | None = handle.value or 0

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise CudaError("stream used after it was destroyed")
        return self._handle

    def synchronize(self) -> None:
        _check(_lib().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _check(_lib().cudaStreamDestroy(handle), "cudaStreamDestroy")

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class DeviceBuffer:
    """Grow-only device allocation: inference shapes vary per call, reallocation should not."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = 0
        self.nbytes = 0
        self._lock = threading.Lock()
        if nbytes:
            self.reserve(nbytes)

    def reserve(self, nbytes: int) -> int:
        with self._lock:
            if nbytes > self.nbytes or not self.ptr:
                self._free()
                ptr = ctypes.c_void_p()
                # cudaMalloc(0) returns NULL; keep one byte so every tensor has a real address.
                _check(_lib().cudaMalloc(ctypes.byref(ptr), max(nbytes, 1)), f"cudaMalloc({nbytes} bytes)")
                self.ptr, self.nbytes = ptr.value or 0, nbytes
            return self.ptr

    def copy_from(self, host: np.ndarray, stream: Stream | None = None) -> None:
        host = np.ascontiguousarray(host)
        self.reserve(host.nbytes)
        if stream is None:
            _check(_lib().cudaMemcpy(self.ptr, host.ctypes.data, host.nbytes, _H2D), "cudaMemcpy H2D")
        else:
            status = _lib().cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes, _H2D, stream.handle)
            _check(status, "cudaMemcpyAsync H2D")

    def copy_to(self, host: np.ndarray, stream: Stream | None = None) -> np.ndarray:
        """Fill the C-contiguous ``host`` array; with a stream, valid only after ``stream.synchronize()``."""
        if not host.flags.c_contiguous or host.nbytes > self.nbytes:
            raise CudaError(f"copy_to needs a contiguous host array of at most {self.nbytes} bytes")
        if stream is None:
            _check(_lib().cudaMemcpy(host.ctypes.data, self.ptr, host.nbytes, _D2H), "cudaMemcpy D2H")
        else:
            status = _lib().cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes, _D2H, stream.handle)
            _check(status, "cudaMemcpyAsync D2H")
        return host

    def _free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.nbytes = self.ptr, 0, 0
            _check(_lib().cudaFree(ptr), "cudaFree")

    def free(self) -> None:
        with self._lock:
            self._free()

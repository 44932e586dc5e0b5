"""Host -> GPU copies of streamed layers through two reused pinned buffers (the CUDA backend's
loading side; nothing here computes)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import InputError


class Stager:
    """Host -> GPU copies for streamed layers through two reused pinned buffers.

    Layer i+1 is read and copied while the GPU still computes layer i. Allocating pinned
    memory per tensor (or copying from pageable memory, which the driver stages through a
    small buffer) ends up waiting for the queued compute; here the only wait is, at the start
    of a layer, for the copies made two layers earlier from the same buffer. File bytes are
    read straight into the pinned buffer (`read`), in parallel chunks.

    On a CPU device the same code runs with pageable buffers and no events (the copies are
    synchronous), which is how CI tests the staging layout without a GPU."""

    ALIGN = 4096
    READ_CHUNK = 8 << 20

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self.bufs: list[torch.Tensor | None] = [None, None]
        self.events: list[Any] = [None, None]
        self.retired: list[list[torch.Tensor]] = [[], []]
        self.slot, self.off = 0, 0
        self._pool = None
        self._fds: dict[str, int] = {}  # files read with `read_file`, opened once

    def begin(self) -> None:
        self.slot ^= 1
        self.off = 0
        ev = self.events[self.slot]
        if ev is not None:
            ev.synchronize()
        if ev is not None or not self.pinned:  # this slot's copies have run: outgrown buffers can go
            self.retired[self.slot].clear()

    def end(self) -> None:
        if not self.pinned:  # CPU copies are done when they return
            return
        ev = torch.cuda.Event()
        ev.record()
        self.events[self.slot] = ev

    def reserve(self, n: int) -> torch.Tensor:
        """n bytes of this layer's (pinned) buffer (uint8, CPU), each reservation 4 KiB-aligned."""
        buf = self.bufs[self.slot]
        if buf is None or self.off + n > buf.numel():
            if buf is not None:
                self.retired[self.slot].append(buf)  # its copies may still be queued: keep it alive
            cap = max(self.off + n, 2 * (buf.numel() if buf is not None else 0), 1 << 24)
            with torch.inference_mode(False):  # a normal tensor: refilled in and out of inference mode
                buf = torch.empty(cap, dtype=torch.uint8, pin_memory=self.pinned)
            self.bufs[self.slot] = buf
            self.off = 0
        host = buf[self.off:self.off + n]
        self.off += (n + self.ALIGN - 1) // self.ALIGN * self.ALIGN
        return host

    def read(self, fd: int, offset: int, n: int) -> torch.Tensor:
        """File bytes [offset, offset+n) into pinned memory, several chunks at once."""
        host = self.reserve(n)
        view = memoryview(host.numpy()).cast("B")
        chunks = [(s, min(n, s + self.READ_CHUNK)) for s in range(0, n, self.READ_CHUNK)]

        def one(c: tuple[int, int]) -> None:
            s, e = c
            while s < e:
                got = os.preadv(fd, [view[s:e]], offset + s)
                if got <= 0:
                    raise InputError(f"unexpected end of file reading {n} bytes at offset {offset}")
                s += got

        if len(chunks) == 1:
            one(chunks[0])
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(4)
            list(self._pool.map(one, chunks))
        return host

    def read_file(self, path, offset: int, n: int) -> torch.Tensor:
        """`read` from the file at `path` (kept open until `close`)."""
        key = str(path)
        if key not in self._fds:
            self._fds[key] = os.open(key, os.O_RDONLY)
        return self.read(self._fds[key], offset, n)

    def close(self) -> None:
        """Close the files `read_file` opened (the buffers stay for reuse)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        """A pinned slice from `reserve`/`read` -> a device tensor (asynchronous)."""
        dev = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        dev.copy_(host, non_blocking=True)
        return dev

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """Any CPU tensor -> the device, through the pinned buffer."""
        t = t.contiguous()
        if t.numel() == 0:
            return t.to(self.device)
        src = t.reshape(-1).view(torch.uint8)
        host = self.reserve(src.numel())
        host.copy_(src)
        return self.upload(host).view(t.dtype).reshape(t.shape)


"""A whole denoising step (network + fused scheduler step) captured as one CUDA graph.

For fixed shapes the sampling loop then costs one graph replay per step: no Python in the
network, no kernel-launch overhead, no host synchronisation. The random state and the levels live
in static device buffers that are refreshed before each replay, so the captured graph draws new
noise and moves through the schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepBody = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class GraphedStep:
    """``step(x, net_t, current, target, rng) -> (x_next, x0)`` replayed from a CUDA graph.

    ``body(x, net_t, current, target, rng)`` is the eager step (network and scheduler step); it is
    warmed up on a side stream, then captured once for the shapes of ``example`` (B, C, H, W).
    ``rng`` may be None for deterministic steps (then it must be None on every call).
    """

    def __init__(self, body: StepBody, example: torch.Tensor, stochastic: bool) -> None:
        if example.device.type != "cuda":
            raise ValueError("CUDA-graph capture needs CUDA tensors; use cuda_graph=False on CPU")
        batch = example.shape[0]
        device = example.device
        self.x = example.clone()
        self.net_t = torch.zeros(batch, dtype=torch.long, device=device)
        self.current = torch.zeros(batch, dtype=torch.long, device=device)
        self.target = torch.zeros(batch, dtype=torch.long, device=device)
        self.rng = torch.zeros(2, dtype=torch.long, device=device) if stochastic else None
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: autotuning, lazy initialisation, allocator pools
                body(self.x, self.net_t, self.current, self.target, self.rng)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out_next, self.out_x0 = body(
                self.x, self.net_t, self.current, self.target, self.rng
            )

    def __call__(
        self,
        x: torch.Tensor,
        net_t: torch.Tensor,
        current: torch.Tensor,
        target: torch.Tensor,
        rng: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape != self.x.shape:
            raise ValueError(f"captured for {tuple(self.x.shape)}, got {tuple(x.shape)}")
        self.x.copy_(x)
        self.net_t.copy_(net_t)
        self.current.copy_(current)
        self.target.copy_(target)
        if self.rng is not None:
            if rng is None:
                raise ValueError("this step was captured drawing noise: pass its rng state")
            self.rng.copy_(rng)
        elif rng is not None:
            raise ValueError("this step was captured without noise: its rng must be None")
        self.graph.replay()
        return self.out_next.clone(), self.out_x0.clone()

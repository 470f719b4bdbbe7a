"""Respaced timestep sequences for samplers that skip steps."""

from __future__ import annotations


def respaced_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` integer timesteps in [0, T - 1], ascending, evenly spaced, always 0 and T - 1.

    ``steps == T`` gives every step. Sampling walks the list backwards from T - 1.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    if steps == 1:
        return [timesteps - 1]
    return [round(i * (timesteps - 1) / (steps - 1)) for i in range(steps)]


def solver_timesteps(timesteps: int, steps: int) -> list[int]:
    """The levels DPM-Solver++ evaluates the network at, descending: round(i (T - 1) / steps) for
    i = steps .. 1 (diffusers' "linspace" spacing); the last step goes on to clean data."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    return [round(i * (timesteps - 1) / steps) for i in range(steps, 0, -1)]

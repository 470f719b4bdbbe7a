"""The original implementation's model (nina-weng/patronus), trained the way its code trains it,
for side-by-side benchmarks. Its code is never committed here: copy a clone's ``models/`` folder
into ``benchmarks/.original/`` (git-ignored) with

    python benchmarks/original_code.py /path/to/a/clone/of/nina-weng/patronus

and carry that folder to the GPU machine (``make gpu-check`` uses it when present), or point
``PATRONUS_ORIGINAL_DIR`` at a clone. Without it the original's benchmarks skip, saying so.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import types
from pathlib import Path

import torch

from patronus.models.config import PatronusConfig

DEFAULT_DIR = Path(__file__).with_name(".original")
MODULES = ("patronus_unet.py", "encoders_basic.py", "receptive_field.py", "diffusion.py")


def original_dir() -> Path:
    return Path(os.environ.get("PATRONUS_ORIGINAL_DIR", DEFAULT_DIR))


def missing_reason() -> str | None:
    """None when the original's model code is here, otherwise how to bring it."""
    folder = original_dir()
    absent = [name for name in MODULES if not (folder / "models" / name).is_file()]
    if absent:
        return (
            f"the original's code is not in {folder} (missing models/{absent[0]}): run "
            "`python benchmarks/original_code.py CLONE` or set PATRONUS_ORIGINAL_DIR"
        )
    return None


def _import_models() -> types.ModuleType:
    """The original's ``models`` package; torchvision, imported there but not used by the model,
    is stubbed where it is not installed (the GPU machine has none)."""
    folder = str(original_dir())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        importlib.import_module("torchvision.models")
    except ImportError:
        stub = types.ModuleType("torchvision")
        stub.models = types.ModuleType("torchvision.models")
        sys.modules.setdefault("torchvision", stub)
        sys.modules.setdefault("torchvision.models", stub.models)
    return importlib.import_module("models.patronus_unet")


def original_model(config: PatronusConfig) -> torch.nn.Module:
    """The original ``Patronus_Unet`` with the architecture ``config`` describes (our configs
    describe the original's; checkpoints convert between them)."""
    encoder, unet = config.encoder, config.unet
    channels = config.image_channels
    module = _import_models()
    return module.Patronus_Unet(
        input_channels=channels,
        output_channels=channels,
        num_res_blocks=unet.num_res_blocks,
        base_channels=unet.base_channels,
        base_channels_multiples=unet.channel_mults,
        apply_attention=unet.attention,
        dropout_rate=unet.dropout,
        time_multiple=unet.time_emb_mult,
        num_proto=config.num_prototypes,
        prototype_vector_shape=(1, encoder.channels[-1]),
        img_size=(channels, config.image_size, config.image_size),
        plb_channel_inputs=[channels, *encoder.channels],
        plb_layer_filter_sizes=list(encoder.kernel_sizes),
        plb_layer_strides=list(encoder.strides),
        plb_layer_paddings=list(encoder.paddings),
    )


def original_diffusion(timesteps: int, device: torch.device):
    """The original's ``SimpleDiffusion`` (its forward noising)."""
    _import_models()
    module = importlib.import_module("models.diffusion")
    return module.SimpleDiffusion(num_diffusion_timesteps=timesteps, device=device)


def original_training_step(model, diffusion, optimizer, scaler, x0: torch.Tensor, timesteps: int):
    """One step as train/train_patronus.py takes it: activations in float32 outside autocast,
    the denoiser under float16 autocast with a GradScaler (CUDA; float32 elsewhere)."""
    ts = torch.randint(1, timesteps, (x0.shape[0],), device=x0.device)
    x_t, noise = diffusion.forward_diffusion(x0, ts)
    activations = model.get_proact(x0)
    with torch.autocast(x0.device.type, dtype=torch.float16, enabled=x0.device.type == "cuda"):
        prediction = model(x_t, ts, given_cond_vector=activations)
        loss = torch.nn.functional.mse_loss(noise, prediction)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def original_ddim_sampling(model, diffusion, x_T: torch.Tensor, activations: torch.Tensor):
    """The original's sampler: its ``ddim_sample_loop`` over all T steps (eta = 0, x0 clipped),
    conditioned on ``activations`` as its sampling code conditions the UNet."""
    return diffusion.ddim_sample_loop(
        model, noise=x_T, model_kwargs={"given_cond_vector": activations}, eta=0.0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clone", type=Path, help="a clone of nina-weng/patronus")
    args = parser.parse_args()
    target = DEFAULT_DIR / "models"
    target.mkdir(parents=True, exist_ok=True)
    for name in MODULES:
        shutil.copy2(args.clone / "models" / name, target / name)
    print(f"copied {len(MODULES)} files of {args.clone / 'models'} to {target}")


if __name__ == "__main__":
    main()

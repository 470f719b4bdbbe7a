"""The commands with ``--device cuda``, on a CUDA device simulated on the CPU (tests/fake_cuda.py):
a tensor left on the CPU beside the model's, or a generator of the wrong device, fails here as it
would on a GPU. Each test runs in a subprocess of its own (the simulation registers a CUDA device
guard for good) with ``PATRONUS_BACKEND=torch``: the kernels' own CUDA paths are tested on GPUs
(tests/ops, tests/test_cuda.py); what this covers is everything around them. Autograd does not run
on the simulated device, so training, prototype guidance and the classifiers' training are left to
tests/test_cuda.py; their trained results are made on the CPU here and then used on "cuda".
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
pytestmark = pytest.mark.skipif(
    torch.version.cuda is not None,
    reason="the simulated CUDA device needs a CPU-only build of torch (a CUDA build registers its "
    "own CUDA device guard); on GPUs tests/test_cuda.py and tests/ops run on the real one",
)
COMMANDS = {
    "sample": "sample {run} --num 2 --steps 3 --variations 2",
    "sample, DDIM with eta and clipping": "sample {run} --num 2 --steps 3 --sampler ddim --eta 0.5 "
    "--clip",
    "invert": "invert {run} --steps 3",
    "reconstruct": "reconstruct {run} --steps 3 --num 2",
    "visualize": "visualize {run} --steps 3 --num-images 2 --reference-size 16 --pool-size 16",
    "trace": "trace {run} --steps 3 --num-images 2 --reference-size 16",
    "report": "report {run} --steps 3 --num-images 2 --reference-size 16 --pool-size 16",
    "report, edits in their region, edit guidance": "report {run} --steps 3 --num-images 2 "
    "--reference-size 16 --pool-size 16 --edit-region --edit-guidance 2",
    "evaluate probes": "evaluate probes {run} --limit 64 --folds 2",
    "diagnose": "diagnose {run} --target size --limit 64 --num-images 2 --steps 2",
}


def run_on_fake_cuda(body: str, tmp_path: Path) -> str:
    """Run ``body`` (Python, inside ``fake_cuda()``) in a subprocess; its output. Fails with the
    output when the subprocess does."""
    script = (
        "import sys\nfrom pathlib import Path\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from fake_cuda import fake_cuda, load_guard\n"
        f"load_guard(Path({str(tmp_path / 'guard')!r}))\n"
    ) + textwrap.dedent(body)
    env = {**os.environ, "PATRONUS_BACKEND": "torch"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    return done.stdout


def test_the_simulated_device_refuses_what_cuda_refuses(tmp_path):
    run_on_fake_cuda(
        """
        import pytest, torch
        with fake_cuda():
            x = torch.randn(3, 4).to("cuda")
            model = torch.nn.Linear(4, 2).to("cuda")
            on_cuda = [x, torch.ones(3, device="cuda"), torch.zeros(2).to(x), torch.zeros(2).cuda(),
                       x.double(), model.weight, model(x), torch.tensor([1], device="cuda")]
            assert all(t.device == torch.device("cuda", 0) for t in on_cuda)
            assert x.cpu().device.type == "cpu" and (x.cpu() + torch.ones(3, 4)).shape == (3, 4)
            # what CUDA allows: CPU scalars, CPU indices, values read back to the host
            assert (x * torch.tensor(2.0)).device.type == "cuda"
            assert x[torch.tensor([0, 2])].shape == (2, 4) and x[[0, 1]].shape == (2, 4)
            x[torch.tensor([0])] = torch.ones(1, 4, device="cuda")
            assert x[0].tolist() == [1.0] * 4 and float(x[0, 0]) == 1.0 and x.sum().item() > -100
            assert torch.quantile(x, 0.5, dim=0).shape == (4,)
            generator = torch.Generator("cuda").manual_seed(0)
            assert isinstance(generator, torch.Generator)
            assert torch.randn(2, generator=generator, device="cuda").device.type == "cuda"
            # what it refuses
            refused = {
                "cpu tensor in a cuda op": lambda: x + torch.ones(3, 4),
                "cat across devices": lambda: torch.cat([x, torch.ones(1, 4)]),
                "where across devices": lambda: torch.where(x > 0, torch.ones(3, 4), -1),
                "cpu model, cuda input": lambda: torch.nn.Linear(4, 2)(x),
                "cuda indices of a cpu tensor": lambda: torch.ones(3)[torch.tensor([0]).cuda()],
                "cuda generator, cpu draw": lambda: torch.randn(2, generator=generator),
                "cpu generator, cuda draw": lambda: torch.randn(
                    2, generator=torch.Generator(), device="cuda"),
                "numpy of a cuda tensor": lambda: x.numpy(),
            }
            for name, op in refused.items():
                with pytest.raises((RuntimeError, TypeError)):
                    op()
                    print("not refused:", name)
        print("ok")
        """,
        tmp_path,
    )


@pytest.mark.parametrize("name", list(COMMANDS))
def test_inference_commands_run_on_cuda(name, tiny_run, tmp_path):
    command = COMMANDS[name].format(run=tiny_run).split()
    command += ["--device", "cuda", "--no-progress", "--out", str(tmp_path / "out")]
    run_on_fake_cuda(
        f"""
        from patronus.cli import main
        with fake_cuda():
            assert main({command!r}) == 0
        """,
        tmp_path,
    )


def test_fid_with_a_trained_classifier_and_prior_runs_on_cuda(tiny_run, tmp_path):
    """`evaluate fid --device cuda`, conditional and from the activation prior, in the project's
    classifier features and in Inception's (pytorch-fid's network, on stand-in weights); the
    classifier and the prior are trained first on the CPU (autograd does not run on the
    simulated device)."""
    out = tmp_path / "out"
    common = ["--num", "16", "--steps", "2", "--no-progress"]
    run_on_fake_cuda(
        f"""
        import json, torch
        from fid_inception_weights import fid_inception_weights
        from patronus.cli import main
        network = Path({str(TESTS / "fixtures" / "fid-inception" / "network.json")!r})
        inception = {str(tmp_path / "stand-in.pth")!r}
        torch.save(fid_inception_weights(json.loads(network.read_text())["shapes"]), inception)
        assert main(["evaluate", "fid", {str(tiny_run)!r}, *{common!r}, "--classifier-steps", "2",
                     "--out", {str(out / "cpu")!r}]) == 0
        assert main(["train-prior", {str(tiny_run)!r}, "--epochs", "1", "--limit", "64",
                     "--no-progress", "--out", {str(out / "prior")!r}]) == 0
        classifier = ["--classifier", {str(out / "cpu" / "classifier")!r}, "--device", "cuda"]
        with fake_cuda():
            assert main(["evaluate", "fid", {str(tiny_run)!r}, *{common!r}, *classifier,
                         "--out", {str(out / "cuda")!r}]) == 0
            assert main(["evaluate", "fid", {str(tiny_run)!r}, *{common!r}, *classifier,
                         "--unconditional", "--prior", {str(out / "prior")!r},
                         "--out", {str(out / "prior-cuda")!r}]) == 0
            assert main(["evaluate", "fid", {str(tiny_run)!r}, *{common!r}, "--device", "cuda",
                         "--inception-weights", inception,
                         "--out", {str(out / "inception")!r}]) == 0
        """,
        tmp_path,
    )


def test_comoving_edits_and_their_fidelity_run_on_cuda(tmp_path):
    """The Python API the commands do not reach: co-moving edits and edit fidelity."""
    run_on_fake_cuda(
        """
        import torch
        from patronus import Patronus
        from patronus.interpret import (activation_bounds, comoving_directions, edit_fidelity,
                                        invert_images, visualize_prototypes)
        from patronus.models.presets import get_preset

        torch.manual_seed(0)
        model = Patronus(get_preset("synthetic-tiny").model).eval()
        images, reference = torch.rand(2, 3, 24, 24) * 2 - 1, torch.rand(16, 3, 24, 24) * 2 - 1
        with fake_cuda(), torch.no_grad():
            model.to("cuda")
            activations = model.encode(reference.to("cuda"))
            inversion = invert_images(model, images.to("cuda"), 3)
            vis = visualize_prototypes(model, inversion, activation_bounds(activations), [0, 3],
                                       directions=comoving_directions(activations, 1.0))
            fidelity = edit_fidelity(vis)
            print(fidelity.summary())
        """,
        tmp_path,
    )


def test_the_pipeline_on_cuda_takes_a_cpu_generator_as_diffusers_pipelines_do(tmp_path):
    """diffusers' pipelines draw their latents from a CPU generator on the CPU and move them to
    the GPU (the same images on every device); so does PatronusPipeline (it failed on a GPU)."""
    pytest.importorskip("diffusers")
    run_on_fake_cuda(
        """
        import torch
        from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
        from patronus import Patronus
        from patronus.models.presets import get_preset
        from patronus.pipelines.diffusers_pipeline import PatronusPipeline

        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                           norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                           up_block_types=("UpBlock2D",) * 2)
        theirs = DDIMPipeline(unet, DDIMScheduler(num_train_timesteps=50))
        ours = PatronusPipeline.from_patronus(Patronus(get_preset("synthetic-tiny").model))
        activations = ours.encode(torch.rand(2, 3, 24, 24) * 2 - 1).activations
        def generator():
            return torch.Generator().manual_seed(7)
        on_cpu = ours(activations=activations, num_inference_steps=3, generator=generator(),
                      output_type="pt").images
        theirs_on_cpu = theirs(batch_size=1, num_inference_steps=3, generator=generator(),
                               output_type="np").images
        with fake_cuda():
            theirs.to("cuda")  # the third party itself: a CPU generator is fine on a GPU
            theirs_on_cuda = theirs(batch_size=1, num_inference_steps=3, generator=generator(),
                                    output_type="np").images
            ours.to("cuda")
            on_cuda = ours(activations=activations, num_inference_steps=3, generator=generator(),
                           output_type="pt").images
            assert on_cuda.device.type == "cuda"
            on_cuda = on_cuda.cpu()
            with_cuda_generator = ours(activations=activations, num_inference_steps=3,
                                       generator=torch.Generator("cuda").manual_seed(7),
                                       output_type="pt").images
            assert with_cuda_generator.device.type == "cuda"
        assert abs(theirs_on_cuda - theirs_on_cpu).max() < 1e-5
        torch.testing.assert_close(on_cuda, on_cpu)
        print("ok")
        """,
        tmp_path,
    )


def test_the_readme_python_api_runs_on_cuda(tmp_path):
    """The README's first example (model, samplers, trajectories, the prototype layer) on cuda."""
    run_on_fake_cuda(
        """
        import torch
        import patronus
        from patronus.diffusion import SamplerOptions
        from patronus.models.presets import get_preset
        from patronus.nn import PrototypeLayer

        config = get_preset("synthetic-tiny").model
        model = patronus.Patronus(config).eval()
        with fake_cuda(), torch.no_grad():
            model.to("cuda")
            x0 = (torch.rand(2, *config.image_shape) * 2 - 1).to("cuda")
            out = model.prototype_output(x0)
            s = out.activations
            assert model.patch_boxes(out.patch_index).shape == (2, config.num_prototypes, 4)
            generator = torch.Generator("cuda").manual_seed(0)
            samples = [model.sample(s, generator=generator)]
            x_T = model.invert(x0, steps=3)
            samples.append(model.reconstruct(x0, steps=3))

            def raise_prototype_3(s):
                s[:, 3] = 9.0
                return s

            samples.append(model.edit(x0, raise_prototype_3, steps=3, x_T=x_T))
            kept = list(model.sample_steps(s, steps=3, after_step=lambda step: step.sample * 0.5))
            samples.append(kept[-1].pred_x0)
            # (not DDPM: it runs all 1000 steps; its noise is drawn as stochastic DDIM's)
            for options in (SamplerOptions(sampler="ddim", eta=0.5, clip_x0=True, steps=3),
                            SamplerOptions(sampler="dpmpp-3m", steps=3)):
                samples.append(model.sample(s, options, generator=generator))
            assert all(x.device.type == "cuda" for x in samples)
            layer = PrototypeLayer(num_prototypes=10, dim=16).to("cuda")
            features = torch.randn(2, 16, 7, 7, device="cuda")
            for shaped in (features, features.to(memory_format=torch.channels_last),
                           features.flatten(2).transpose(1, 2)):
                activations, distances, index = layer(shaped)
                assert activations.device.type == "cuda" and activations.shape == (2, 10)
        print("ok")
        """,
        tmp_path,
    )


@pytest.mark.parametrize(
    "name", ["test_shortcut_intervention_on_cuda", "test_fid_features_on_cuda_match_the_cpu"]
)
def test_the_real_cuda_tests_without_autograd_pass_on_the_simulated_device(name, tmp_path):
    """tests/test_cuda.py's own bodies, where they need no autograd: the intervention with the
    images and labels on the CPU as `diagnose --device cuda` passes them (the diagnose command
    above flags nothing on its tiny run, so it never reaches the intervention), and the FID
    features computed where the extractor's weights are."""
    run_on_fake_cuda(
        f"""
        import inspect
        import test_cuda
        from patronus.models.presets import get_preset

        test = test_cuda.{name}
        arguments = {{"tiny_config": get_preset("synthetic-tiny").model}}
        wanted = {{key: arguments[key] for key in inspect.signature(test).parameters}}
        with fake_cuda():
            test(**wanted)
        print("ok")
        """,
        tmp_path,
    )

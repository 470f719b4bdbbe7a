"""Importing the original implementation's checkpoints."""

import pickle
import re
from pathlib import Path

import pytest
import torch
from original_config import original_config, write_original_config
from original_patronus import OriginalPatronus

from patronus import load_reference_checkpoint
from patronus.checkpoint import CheckpointError
from patronus.reference_checkpoint import original_key, translate_key

# the original's state-dict keys and shapes (listed from a published checkpoint)
KEYS_FILE = Path(__file__).resolve().parent / "fixtures" / "ckpt-keys-fmnist32.tsv"


def write_original(folder: Path, model: torch.nn.Module, config="default") -> Path:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cpu")
    path = folder / "ckpt.tar"
    torch.save(
        {"model": model.state_dict(), "opt": optimizer.state_dict(), "scaler": scaler.state_dict()},
        path,
    )
    if config is not None:
        write_original_config(folder, original_config() if config == "default" else config)
    return path


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    model = OriginalPatronus().eval()
    for layer in model.proactBlock.encoder.features:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, 0.0, 0.1)
    return model


def test_the_original_layout_matches_the_published_keys(original):
    published = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            published[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    ours = {key: tuple(value.shape) for key, value in original.state_dict().items()}
    assert ours == published


def test_every_original_key_has_a_home(original, tiny_config):
    from patronus import Patronus
    from patronus.models.presets import get_preset

    target = set(Patronus(get_preset("fmnist32").model).state_dict())
    ignored = {"proactBlock.ones", "time_embeddings.time_blocks.0.weight"}
    translated = {translate_key(k) for k in original.state_dict() if k not in ignored}
    assert translated == target
    assert all(
        original_key(translate_key(k)) == k for k in original.state_dict() if k not in ignored
    )


def test_imported_model_computes_the_same_activations_and_noise(original, tmp_path):
    path = write_original(tmp_path, original)
    model = load_reference_checkpoint(path)
    assert model.config.image_size == 32 and model.num_prototypes == 30
    x0 = torch.rand(3, 1, 32, 32) * 2 - 1
    assert_same_outputs(model, original, x0, torch.randn(3, 1, 32, 32), torch.tensor([0, 417, 999]))


def assert_same_outputs(model, original, x0, x_t, t):
    """The imported model computes the original's activations and noise prediction."""
    with torch.no_grad():
        eps_original, s_original = original(x_t, t, x0)
        s = model.encode(x0)
        eps = model(x_t, t, s)
    torch.testing.assert_close(s, s_original, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps, eps_original, atol=1e-4, rtol=1e-4)


def test_small_variant_without_config_file(tmp_path):
    torch.manual_seed(1)
    encoder = ((3, 8, 8, 8), (8, 8, 8, 16), (3,) * 4, (2, 1, 1, 1), (1, 0, 0, 0))
    original = OriginalPatronus(
        input_channels=3,
        num_res_blocks=1,
        base_channels=16,
        base_channels_multiples=(1, 2),
        apply_attention=(False, True),
        num_protos=5,
        timesteps=50,
        plb=encoder,
    )
    path = write_original(tmp_path, original.eval(), config=None)
    with pytest.raises(CheckpointError, match="image size unknown"):
        load_reference_checkpoint(path)
    model = load_reference_checkpoint(path, image_size=16)
    assert model.config.unet.attention == (False, True)
    assert model.config.unet.num_res_blocks == 1
    x0, x_t, t = torch.rand(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    assert_same_outputs(model, original, x0, x_t, t)


def test_config_pickle_with_code_is_refused(original, tmp_path):
    path = write_original(tmp_path, original)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "config.pickle").write_bytes(pickle.dumps({"TrainingConfig": Evil()}))
    with pytest.raises(CheckpointError, match=r"refusing to load builtins\.print"):
        load_reference_checkpoint(path)


def test_inconsistent_config_and_bad_files(original, tmp_path):
    path = write_original(tmp_path, original, original_config(NUM_PROTOS=31))
    with pytest.raises(CheckpointError, match="NUM_PROTOS=31"):
        load_reference_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_reference_checkpoint(tmp_path / "missing.tar")
    (tmp_path / "junk.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_reference_checkpoint(tmp_path / "junk.tar")
    with pytest.raises(CheckpointError, match="no original Patronus state dict"):
        load_reference_checkpoint({"model": {"weight": torch.zeros(1)}})


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_the_config_pickle_the_original_writes_is_read(original, tmp_path, protocol, device):
    """config.pickle as save_config_train_diffusion writes it: asdict of the original's
    dataclasses (a torch.device in BaseConfig, P_VECTOR_SHAPE = (1, 128))."""
    path = write_original(tmp_path, original, config=None)
    write_original_config(tmp_path, original_config(device=device), protocol)
    model = load_reference_checkpoint(path)
    assert model.config.image_size == 32 and model.config.prototype_dim == 128
    assert model.config.encoder.strides == (2, 1, 1, 1)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"NUM_PROTOS": 31}, "NUM_PROTOS=31"),
        ({"P_VECTOR_SHAPE": (2, 128)}, r"P_VECTOR_SHAPE.*first entry must be 1"),
        ({"plb_channel_inputs": (1, 32, 64, 64, 64)}, "plb_channel_inputs"),
        ({"plb_layer_filter_sizes": (5, 5, 5, 5)}, "plb_layer_filter_sizes"),
        ({"plb_layer_strides": (2, 1, 1)}, "plb_layer_strides"),
        ({"IMG_SHAPE": (3, 32, 32)}, r"IMG_SHAPE=\(3, 32, 32\), the weights take 1 channel"),
        ({"TIMESTEPS": 500}, "TIMESTEPS=500"),
        ({"IMG_SHAPE": "32"}, "IMG_SHAPE"),
        ({"NUM_PROTOS": 30.0}, "NUM_PROTOS"),
    ],
)
def test_config_pickle_disagreeing_with_the_weights_is_named(original, tmp_path, change, message):
    path = write_original(tmp_path, original, original_config(**change))
    with pytest.raises(CheckpointError, match=message):
        load_reference_checkpoint(path)


def test_model_config_fields_are_checked_against_the_weights(original, tmp_path):
    config = original_config()
    config["ModelConfig"]["APPLY_ATTENTION"] = (False, True, False, False)
    path = write_original(tmp_path, original, config)
    with pytest.raises(CheckpointError, match="APPLY_ATTENTION"):
        load_reference_checkpoint(path)
    config["ModelConfig"].update(APPLY_ATTENTION=(False,) * 4, TIME_EMB_MULT=2)
    write_original_config(tmp_path, config)
    with pytest.raises(CheckpointError, match="TIME_EMB_MULT=2"):
        load_reference_checkpoint(path)


def test_a_state_dict_missing_keys_is_a_checkpoint_error(original):
    state = dict(original.state_dict())
    for key in ("first.weight", "time_embeddings.time_blocks.0.weight", "final.2.bias"):
        broken = {k: v for k, v in state.items() if k != key}
        with pytest.raises(CheckpointError, match=re.escape(key)):
            load_reference_checkpoint({"model": broken}, original_config())


@pytest.mark.parametrize(
    "payload, message",
    [
        # 63 bytes of allow-listed globals that would build a set of 2**31 - 1 integers
        (b"\x80\x04cbuiltins\nset\ncbuiltins\nrange\nJ\xff\xff\xff\x7f\x85R\x85R.", "range"),
        # an allowed constructor called with bad arguments
        (b"\x80\x04ccollections\nOrderedDict\nK\x05\x85R.", "OrderedDict"),
        (b"\x80\x04ctorch\ndevice\nK\x05\x85R.", "device"),
        (b"\x80\x04}(", "malformed"),  # truncated
        (b"\x80\x04(" * 200_000, "malformed"),  # deep nesting
    ],
)
def test_config_pickles_build_only_bounded_plain_data(original, tmp_path, payload, message):
    path = write_original(tmp_path, original, config=None)
    (tmp_path / "config.pickle").write_bytes(payload)
    with pytest.raises(CheckpointError, match=message):
        load_reference_checkpoint(path)


def test_oversized_config_pickle_is_refused_before_reading(original, tmp_path):
    path = write_original(tmp_path, original, config=None)
    (tmp_path / "config.pickle").write_bytes(pickle.dumps({"TrainingConfig": {"x": "a" * 2**21}}))
    with pytest.raises(CheckpointError, match="bytes"):
        load_reference_checkpoint(path)

"""Model pieces: masked pooling ignores padding, AM-Softmax puts the margin on the target only, input mean
normalisation removes a fixed channel; presets, and the TOML file and command line over them."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from voxaug.config import PRESETS, create_config, resolve_config
from voxaug.errors import VoxaugError
from voxaug.model import AMSoftmaxHead, MaskedAttentivePooling, ModelConfig, SoftmaxHead, build_model

SMALL = dict(d_model=32, num_heads=2, ffn_dim=64, num_layers=2, kernel_size=7, embedding_dim=24, num_classes=5)


def test_pooling_gives_padding_zero_weight():
    torch.manual_seed(0)
    pooling = MaskedAttentivePooling(8)
    frames = torch.randn(1, 5, 8)
    padded = torch.cat([frames, 1e3 * torch.randn(1, 7, 8)], dim=1)
    alone = pooling(frames, torch.tensor([5]))
    with_padding = pooling(padded, torch.tensor([5]))
    assert torch.allclose(alone, with_padding, atol=1e-6)


@pytest.mark.parametrize("input_norm", ["mean", "none"])
@pytest.mark.parametrize("kind", ["conformer", "transformer-mean"])
def test_padding_changes_nothing_in_eval(kind, input_norm):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, input_norm=input_norm, **SMALL)).eval()
    short = torch.randn(1, 30, 40)
    batch = torch.zeros(2, 55, 40)
    batch[0, :30] = short[0]
    batch[0, 30:] = 50.0  # garbage in padding must not leak
    batch[1] = torch.randn(55, 40)
    with torch.no_grad():
        alone, alone_logits = model(short, torch.tensor([30]))
        padded, padded_logits = model(batch, torch.tensor([30, 55]))
    assert torch.allclose(alone[0], padded[0], atol=1e-4)
    assert torch.allclose(alone_logits[0], padded_logits[0], atol=1e-3)


def test_model_returns_embeddings_and_logits():
    model = build_model(ModelConfig(**SMALL))
    embeddings, logits = model(torch.randn(3, 20, 40), torch.tensor([20, 10, 5]))
    assert embeddings.shape == (3, 24) and logits.shape == (3, 5)


def test_am_softmax_margin_on_target_only_and_weights_normalised():
    torch.manual_seed(0)
    head = AMSoftmaxHead(4, 3, scale=30.0, margin=0.2)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([[5.0], [0.1], [2.0]]))
    embeddings = torch.randn(6, 4)
    logits = head(embeddings)
    expected = 30.0 * F.normalize(embeddings, dim=1) @ F.normalize(head.weight, dim=1).t()
    assert torch.allclose(logits, expected, atol=1e-5)
    assert logits.abs().max() <= 30.0 + 1e-4
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    manual = F.cross_entropy(logits - 30.0 * 0.2 * F.one_hot(labels, 3), labels, reduction="none")
    assert torch.allclose(head.loss(logits, labels), manual)
    with_margin, plain = head.loss(logits, labels), F.cross_entropy(logits, labels, reduction="none")
    assert (with_margin >= plain).all()
    assert (with_margin > plain)[plain > 1e-6].all()  # an easy example's two losses both round to 0.0 in float32


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_and_runs(preset):
    config = create_config(preset)
    config.model.num_classes = 4
    if config.model.d_model > 128:
        config.model.num_layers = 1
    model = build_model(config.model)
    _, logits = model(torch.randn(2, 16, 40), torch.tensor([16, 9]))
    assert logits.shape == (2, 4)


def test_homework_sizes():
    strong, boss = create_config("strong"), create_config("boss")
    assert (strong.model.num_heads, strong.model.num_layers, strong.lr, strong.warmup) == (4, 6, 5e-4, 2000)
    assert (boss.model.d_model, boss.model.num_heads, boss.model.num_layers, boss.model.dropout) == (300, 6, 8, 0.15)
    assert (boss.lr, boss.warmup) == (1e-3, 5000)
    assert create_config("baseline").model.kind == "transformer-mean"


def test_command_line_preset_beats_the_toml_one_and_cpu_is_the_default(tmp_path):
    """Precedence is preset < TOML < command line, for the preset itself too; a TOML preset must name one."""
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "strong"\n')
    assert resolve_config(None, toml).preset == "strong"
    assert resolve_config("baseline", toml).model.kind == "transformer-mean"
    assert resolve_config().preset == "cpu"
    toml.write_text('preset = ["x"]\n')
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(toml))}: preset \['x'\] is not known; accepted: cpu"):
        resolve_config(None, toml)


@pytest.mark.parametrize("text, problem", [
    ("[model]\nfoo = 1\n", "model config: unknown keys ['foo']"),
    ("[frontend]\nfoo = 1\n", "front end: unknown settings ['foo']"),
    ("[model]\ndropout = 2.0\n", "model: dropout must be in [0, 1), got 2.0"),
    ("[frontend]\nn_mels = 40.0\n", "front end: n_mels must be an integer, got 40.0"),
    ('steps = "many"\n', "steps must be an int, got 'many'"),  # named the file already: once is enough
])
def test_errors_in_a_toml_file_name_it_once(tmp_path, text, problem):
    toml = tmp_path / "run.toml"
    toml.write_text(text)
    with pytest.raises(VoxaugError) as info:
        resolve_config(None, toml)
    assert str(info.value).startswith(f"{toml}: {problem}") and str(info.value).count(str(toml)) == 1, info.value


@pytest.mark.parametrize("kind", ["conformer", "transformer-mean"])
def test_mean_normalisation_removes_a_fixed_channel_and_none_keeps_it(kind):
    torch.manual_seed(0)
    utterance = torch.randn(1, 40, 40)
    channel = 3.0 * torch.cos(torch.linspace(0, 3.1416, 40)) + 2.0  # a fixed EQ curve plus gain, in log power
    for input_norm, invariant in (("mean", True), ("none", False)):
        torch.manual_seed(1)
        model = build_model(ModelConfig(kind=kind, input_norm=input_norm, **SMALL)).eval()
        with torch.no_grad():
            clean, _ = model(utterance, torch.tensor([40]))
            coloured, _ = model(utterance + channel, torch.tensor([40]))
        assert torch.allclose(clean, coloured, atol=1e-4) == invariant, input_norm


def test_input_norm_round_trips_and_models_saved_before_it_keep_raw_features():
    saved = {key: value for key, value in ModelConfig(**SMALL).to_dict().items() if key != "input_norm"}
    assert ModelConfig.from_dict(saved).input_norm == "none"
    assert ModelConfig(**SMALL).input_norm == "mean"
    for input_norm in ("mean", "none"):
        assert ModelConfig.from_dict(ModelConfig(input_norm=input_norm, **SMALL).to_dict()).input_norm == input_norm


def test_an_unknown_model_key_is_not_told_to_use_one_the_data_sets(tmp_path):
    """The accepted list leaves out n_mels, num_classes and num_speakers, which a config file may not set."""
    toml = tmp_path / "run.toml"
    toml.write_text("[model]\nd_modle = 96\n")
    with pytest.raises(VoxaugError, match=r"unknown keys \['d_modle'\]; accepted: \[.*'d_model'") as info:
        resolve_config(None, toml)
    assert not any(key in str(info.value) for key in ("n_mels", "num_classes", "num_speakers")), info.value


@pytest.mark.parametrize("head", [AMSoftmaxHead(16, 50, scale=30.0, margin=0.2), SoftmaxHead(16, 50)])
def test_the_heads_give_float32_logits_under_autocast(head):
    """Both heads cast to float32, but autocast (CUDA's AMP; the CPU's bfloat16 stands in here) still ran their
    product in half precision: logits off by up to 0.04 at scale 30."""
    embeddings = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    exact = head(embeddings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(embeddings)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, exact, atol=1e-5)


def test_the_baseline_embeds_without_torchs_fused_encoder_kernel(monkeypatch):
    """torch's fused TransformerEncoderLayer inference kernel holds every (B, heads, T, T) score matrix: one 2-minute
    clip took 5 GB through the transformer-mean baseline, and a 10-minute one would need about 110 GB. The layers now
    run unfused (scaled_dot_product_attention), and the process-wide switch is put back."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="transformer-mean", **SMALL)).eval()
    features, lengths = torch.randn(2, 30, 40), torch.tensor([30, 17])

    def fused(*args, **kwargs):
        raise AssertionError("the fused encoder kernel ran")

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", fused)
    with torch.no_grad():
        embeddings, _ = model(features, lengths)
        alone, _ = model(features[1:, :17], lengths[1:])
    assert torch.backends.mha.get_fastpath_enabled()
    assert torch.allclose(embeddings[1], alone[0], atol=1e-5)


@pytest.mark.parametrize("setting", [{"num_layers": 10**20}, {"d_model": 65536, "num_heads": 2},
                                     {"embedding_dim": 2**31 - 1}, {"kind": "transformer-mean", "num_layers": 10**11}])
def test_a_model_too_large_for_the_memory_is_refused_before_it_is_built(monkeypatch, setting):
    """`train --layers 99999999999999999999` built layer after layer until the kernel killed it, and `--d-model 65536`
    ended in `unexpected RuntimeError: ... can't allocate memory` (status 3): sizes are checked against the memory."""
    import voxaug.model as model_module

    monkeypatch.setattr(model_module, "physical_memory", lambda: 8 * 10**9, raising=False)
    with pytest.raises(VoxaugError, match=r"^model: about \S+ weights \(\S+ GB as float32\) do not fit in this "
                                          r"machine's 8 GB of memory; lower --d-model, --layers or --embedding-dim"):
        ModelConfig(**setting, num_classes=5).check_fits_memory()
    for preset in PRESETS:  # the largest preset needs about 0.07 GB
        create_config(preset).validate()


def test_the_fast_path_switch_stays_off_while_a_thread_embeds_and_is_put_back_after_overlapping_threads():
    """Two threads embedding with the baseline at once: the first to finish restored the fast path while the
    second still ran (the fused kernel, the memory the switch avoids), and the second then restored "off" for the
    whole process, so every MultiheadAttention ran unfused from then on."""
    import threading

    from voxaug.model import unfused_encoder_layers

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first() -> None:
        with unfused_encoder_layers():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with unfused_encoder_layers():
            second_in.set()
            first_out.wait(10)
            seen["inside"] = torch.backends.mha.get_fastpath_enabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert seen == {"inside": False}, "the fast path came back on while a thread was still embedding"
        assert torch.backends.mha.get_fastpath_enabled(), "the fast path was left off for the whole process"
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_a_long_value_in_a_toml_file_is_echoed_cut_short(tmp_path):
    """A wrong-typed TOML value or table was echoed whole in the error, all 10,000 characters of it."""
    toml = tmp_path / "run.toml"
    for text, problem in ((f'seed = "{"x" * 10000}"\n', "seed must be an int, got 'xxx"),
                          (f'model = "{"x" * 10000}"\n', "[model] must be a table, got 'xxx")):
        toml.write_text(text)
        with pytest.raises(VoxaugError) as info:
            resolve_config(None, toml)
        message = str(info.value)
        assert message.startswith(f"{toml}: {problem}") and message.endswith("…") and len(message) < 300, message


def test_a_long_preset_or_device_in_a_toml_file_or_run_config_is_echoed_cut_short(tmp_path):
    """A TOML file's or a run's config.json preset (or device) that is not known was echoed whole, all 10,000
    characters of it, where the file's other values are cut to 80."""
    import json

    from voxaug.train import Trainer

    long = "x" * 10000
    toml = tmp_path / "run.toml"
    toml.write_text(f'preset = "{long}"\n')
    with pytest.raises(VoxaugError) as info:
        resolve_config(None, toml)
    messages = [str(info.value)]
    for key in ("preset", "device"):
        run = tmp_path / key
        run.mkdir()
        (run / "config.json").write_text(json.dumps({**create_config("cpu").to_dict(), key: long}))
        with pytest.raises(VoxaugError) as info:
            Trainer.config_from_run(run)
        messages.append(str(info.value))
    for message, (where, key) in zip(messages, ((toml, "preset"), (tmp_path / "preset" / "config.json", "preset"),
                                               (tmp_path / "device" / "config.json", "--device"))):
        assert message.startswith(f"{where}: {key} 'xxx") and "…" in message and len(message) < 300, message



LONG = "x" * 10000


@pytest.mark.parametrize("text, problem", [
    (f'[model]\nkind = "{LONG}"\n', "--model 'xxx"),
    (f'[model]\ninput_norm = "{LONG}"\n', "--input-norm 'xxx"),
    (f'[augment]\nnames = ["{LONG}"]\n', "--augment: unknown augmentation 'xxx"),
    (f'[augment]\nnames = {{ k = "{LONG}" }}\n', "[augment] names must be a list of augmentation names, got {'k'"),
    (f'[augment]\n{LONG} = 1\n', "[augment] 'xxx"),
    (f'[augment]\nspecaug = "{LONG}"\n', "[augment.specaug] must be a table of parameters, got 'xxx"),
    (f'[augment]\nnames = ["specaug", "", "{LONG}"]\n', "--augment (or [augment] names): ['specaug', '', 'xxx"),
    (f'split_version = {"9" * 4000}\n', "split_version must be one of 1, 2, 3, got 999"),
    (f'[augment]\nnames = ["none", "{LONG}"]\n', "--augment: 'none' cannot be combined with other names ('none,xxx"),
    ("[augment]\nnames = [" + ", ".join(['"specaug"'] * 2000) + "]\n", "--augment: 'specaug,specaug,"),
])
def test_every_long_value_of_a_toml_file_is_echoed_cut_short(tmp_path, text, problem):
    """A TOML file's unknown [model] kind or input_norm, augmentation name or key, split_version, or a names list
    holding 'none' or a repeat was echoed whole (10,000 characters), where its preset, device and wrong-typed values
    are cut to 80."""
    toml = tmp_path / "run.toml"
    toml.write_text(text)
    with pytest.raises(VoxaugError) as info:
        resolve_config(None, toml)
    message = str(info.value)
    assert message.startswith(f"{toml}: {problem}") and "…" in message and len(message) < 400, message[:400]


@pytest.mark.parametrize("kind", ["conformer", "transformer-mean"])
def test_every_tensor_of_a_model_is_in_its_state_dict(kind):
    """``load_model`` gives the model storage without values and copies the checkpoint's state dict in: a buffer
    left out of it (``persistent=False``) or a plain tensor attribute would keep whatever that memory held."""
    model = build_model(ModelConfig(kind=kind, **SMALL))
    unsaved_buffers = [name for name, _ in model.named_buffers() if name not in model.state_dict()]
    tensor_attributes = [f"{module_name}.{name}" for module_name, module in model.named_modules()
                         for name, value in vars(module).items() if isinstance(value, torch.Tensor)]
    assert unsaved_buffers == [] and tensor_attributes == []

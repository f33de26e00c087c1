"""M2-CLIP as released (sallymmx/m2clip): the trainable count of each variant against the release's, every
difference itemised; the options that reproduce the release; the recipes' M2-CLIP settings per config; the
text adapters' lr multiplier reaching the optimizer."""

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import msta_fast
import msta_fast.data
from msta_fast.data.lists import read_labels
from msta_fast.methods.m2clip import M2CLIPLossOptions, M2CLIPObjective, WordList, head_options
from msta_fast.methods.m2clip.words import MASK_WORD, word_token_id
from msta_fast.patching import count_trainable
from msta_fast.training.config import ConfigError, build_config, method_config, method_options
from msta_fast.training.schedule import build_optimizer, build_scheduler

LABELS = Path(msta_fast.data.__file__).parent / "protocols" / "vifi" / "labels"
CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"

# The release's trainable parameters on CLIP ViT-B/16 (its parameters named "*adapter*"), by part.
RELEASE_K400 = dict(ted=14_247_936, text=788_224, frame=263_936, visual_head=307_600, mlm_head=530_440)
RELEASE_K400_TOTAL = 16_138_136
RELEASE_SSV2_TOTAL = 39_524_248
RELEASE_WORDS = {"k400": 520, "ssv2": 234}  # the lines of its k400_mlm_lables.txt / sthv2_mlm_lables.txt
MLM_HEAD_PER_WORD = 512 + 1  # a decoder row and its bias
MASK_EMBEDDING = 512


def names(dataset):
    return read_labels(LABELS / {"k400": "kinetics_400_labels.csv", "ssv2": "ssv2_labels.csv"}[dataset])


def frame_clip_b16(**options):
    model = msta_fast.build_frame_clip("ViT-B-16", context_length=32, device="meta")
    return msta_fast.patch(model, "m2clip", **options)


def parts(model):
    """Trainable parameters per part, named as the release's."""
    out = dict.fromkeys(("ted", "text", "frame", "visual_head", "mlm_head", "mask_embedding"), 0)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = name.split(".")[1]
        if part in ("vision", "vision_attn"):
            key = "ted"
        elif part in ("text", "text_attn") or name.startswith("m2clip_adapters.decoder.adapter"):
            key = "text"  # the release counts the MLM block's adapters among its text blocks
        elif name == "m2clip_adapters.decoder.mask_embedding":
            key = "mask_embedding"
        else:
            key = {"frame": "frame", "head": "visual_head", "decoder": "mlm_head"}[part]
        out[key] += p.numel()
    return out


def test_k400_count_is_the_release_s_but_for_the_documented_differences():
    classes = names("k400")
    words = len(WordList.from_class_names(classes))
    assert words == 598  # class-name tokens; the release lists 520 words
    model = frame_clip_b16(**head_options(classes))  # the defaults: the release's placement and heads
    got = parts(model)
    vocabulary = (words - RELEASE_WORDS["k400"]) * MLM_HEAD_PER_WORD
    assert got == {**RELEASE_K400, "mlm_head": RELEASE_K400["mlm_head"] + vocabulary,
                   "mask_embedding": MASK_EMBEDDING}
    assert count_trainable(model) == RELEASE_K400_TOTAL + vocabulary + MASK_EMBEDDING == 16_178_662
    # The word "mask" instead of a learned embedding (the release's masking code): only the vocabulary differs.
    release_mask = frame_clip_b16(**head_options(classes), mask_embedding=False)
    assert count_trainable(release_mask) == RELEASE_K400_TOTAL + vocabulary == RELEASE_K400_TOTAL + 40_014


def test_the_release_s_text_blocks_are_the_last_encoder_block_and_the_mlm_block():
    model = frame_clip_b16(**head_options(names("k400")))
    adapters = model.m2clip_adapters
    assert list(adapters.text) == ["11"] and not len(adapters.text_attn)
    assert adapters.decoder.adapter is not None and adapters.decoder.adapter_attn is None
    assert 2 * sum(p.numel() for p in adapters.text.parameters()) == RELEASE_K400["text"]  # 2 x 394,112


def test_ssv2_variant_count():
    classes = names("ssv2")
    words = len(WordList.from_class_names(classes))
    model = frame_clip_b16(**head_options(classes), pre_attn=True, text_layers="all")
    adapters = model.m2clip_adapters
    assert len(adapters.text) == len(adapters.text_attn) == 12 and adapters.decoder.adapter_attn is not None
    vocabulary = (words - RELEASE_WORDS["ssv2"]) * MLM_HEAD_PER_WORD
    assert count_trainable(model) == RELEASE_SSV2_TOTAL + vocabulary + MASK_EMBEDDING
    assert parts(model)["text"] == 13 * 2 * 394_112  # all 13 blocks, before attention and before the MLP


def test_viclip_has_no_frame_level_adapter():
    classes = names("k400")
    with torch.device("meta"):
        viclip = msta_fast.build_viclip("viclip-b16")
    msta_fast.patch(viclip, "m2clip", **head_options(classes))
    assert count_trainable(viclip) == count_trainable(frame_clip_b16(**head_options(classes))) - RELEASE_K400["frame"]


def tiny_patched(**options):
    model = msta_fast.build_viclip("viclip-tiny", num_frames=4)
    classes = ["jump rope", "ride a bike", "swim"]
    msta_fast.patch(model, "m2clip", dim=16, **head_options(classes), **options)
    return model, classes


def test_double_softmax_reproduces_the_release_s_cross_modal_term():
    model, classes = tiny_patched()
    encoded = msta_fast.methods.Encoded(torch.randn(4, 64), torch.randn(3, 64), torch.tensor(0.01))
    labels = torch.tensor([0, 1, 2, 1])
    only_text_ce = dict(contrastive=False, visual_ce=False, mlm=False)
    ours = M2CLIPObjective(model, classes, M2CLIPLossOptions(**only_text_ce))(encoded, labels)[1]["text_ce"]
    release = M2CLIPObjective(model, classes, M2CLIPLossOptions(**only_text_ce, double_softmax=True))
    got = release(encoded, labels)[1]["text_ce"]
    cos = F.normalize(encoded.video, dim=-1) @ F.normalize(encoded.text, dim=-1).t()
    assert got == pytest.approx(float(F.cross_entropy((100 * cos).softmax(-1), labels)), rel=1e-5)
    assert ours == pytest.approx(float(F.cross_entropy(100 * cos, labels)), rel=1e-5)


def test_without_a_mask_embedding_masked_tokens_become_the_word_mask():
    model, classes = tiny_patched(mask_embedding=False)
    assert model.m2clip_adapters.decoder.mask_embedding is None
    objective = M2CLIPObjective(model, classes, M2CLIPLossOptions(contrastive=False, text_ce=False, visual_ce=False,
                                                                  mask_prob=1.0))
    seen = []
    embedding = model.text_encoder.token_embedding
    handle = embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    _, features = objective.encode_video(model, torch.randn(2, 4, 3, 32, 32))
    objective.mlm_loss(features, torch.tensor([0, 1]), torch.tensor([5, 6]))
    handle.remove()
    mask_id = word_token_id(MASK_WORD)
    assert any((ids == mask_id).any() for ids in seen)  # 80% of the chosen tokens: "mask"
    with pytest.raises(ValueError, match="is 3 tokens, not one"):
        word_token_id("abseiling")


# --- the recipes ---------------------------------------------------------------------------------------------

TEXT_AT_HALF = {"m2clip_adapters.text": 0.5, "m2clip_adapters.decoder.adapter": 0.5}
RELEASE_OPTIMIZER = dict(betas=[0.9, 0.999], weight_decay=0.01, warmup_epochs=2.0, min_lr_ratio=0.0,
                         lr_multipliers=TEXT_AT_HALF)


def resolved(setting, dataset):
    return method_config(build_config(CONFIGS / setting / f"{dataset}.yaml"), "m2clip")


@pytest.mark.parametrize("setting", ["full", "zs", "b2n"])
def test_k400_configs_resolve_to_the_release_s_k400_script(setting):
    cfg = resolved(setting, "k400")
    expected = dict(RELEASE_OPTIMIZER, batch_size=72, lr=pytest.approx(1e-3 * 72 / 256), epochs=12)
    assert {k: cfg["optim"][k] for k in expected} == expected
    assert cfg["data"]["sampling"] == "stride" and cfg["data"]["frame_stride"] == 16
    assert cfg["model"]["num_frames"] == 8
    views = {"full": (3, 4), "zs": (1, 1), "b2n": (0, 0)}[setting]  # b2n: 0 = the protocol's single view
    assert (cfg["eval"]["num_clips"], cfg["eval"]["num_crops"]) == views
    spec, config, _ = method_options(cfg, "m2clip")
    assert not config.pre_attn and config.text_layers == 1 and config.dim == 384
    msta = method_config(build_config(CONFIGS / setting / "k400.yaml"), "msta")  # MSTA keeps the paper's
    assert msta["optim"]["betas"] == [0.9, 0.98] and msta["optim"]["lr_multipliers"] == {}
    assert msta["data"]["sampling"] == "segments"


@pytest.mark.parametrize("setting", ["b2n", "fs"])
def test_ssv2_configs_resolve_to_the_release_s_ssv2_script(setting):
    cfg = resolved(setting, "ssv2")
    expected = dict(RELEASE_OPTIMIZER, batch_size=128, lr=5e-4, epochs=50)
    assert {k: cfg["optim"][k] for k in expected} == expected
    assert cfg["data"]["sampling"] == "segments" and cfg["data"]["flip_prob"] == 0.0
    _, config, _ = method_options(cfg, "m2clip")
    assert config.pre_attn and config.text_layers == "all"


@pytest.mark.parametrize("setting, epochs", [("b2n", 11), ("fs", 50)])
@pytest.mark.parametrize("dataset", ["hmdb", "ucf"])
def test_other_configs_use_the_release_s_optimizer_on_the_protocol_s_budget(setting, epochs, dataset):
    cfg = resolved(setting, dataset)
    expected = dict(RELEASE_OPTIMIZER, batch_size=32, lr=pytest.approx(1e-3 * 32 / 256), epochs=epochs)
    assert {k: cfg["optim"][k] for k in expected} == expected


def test_lr_multipliers_reach_the_optimizer_groups_and_the_schedule():
    cfg = resolved("full", "k400")
    model, _ = tiny_patched()
    o = cfg["optim"]
    optimizer = build_optimizer(model, o["lr"], o["weight_decay"], o["betas"], o["lr_multipliers"])
    lr_of = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(lr_of) == sorted(trainable)
    half = [n for n in trainable if n.startswith(tuple(TEXT_AT_HALF))]
    assert {n.split(".")[1] for n in half} == {"text", "decoder"}
    assert "m2clip_adapters.decoder.head.dense.weight" not in half
    for n in trainable:
        assert lr_of[n] == pytest.approx(o["lr"] * (0.5 if n in half else 1.0)), n
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2, min_ratio=o["min_lr_ratio"])
    for _ in range(4):  # the schedule scales every group alike
        optimizer.step()
        scheduler.step()
    by_factor = {g["lr_multiplier"]: g["lr"] for g in optimizer.param_groups}
    assert by_factor[0.5] == pytest.approx(by_factor[1.0] / 2) and by_factor[1.0] > 0
    decays = {g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {0.0, 0.01}


def test_lr_multiplier_options_are_checked(caplog):
    model, _ = tiny_patched()
    with caplog.at_level(logging.WARNING, logger="msta_fast.training.schedule"):
        build_optimizer(model, 1e-3, 0.0, lr_multipliers={"m2clip_adapters.txet": 0.5})
    assert "no trainable parameter starts with 'm2clip_adapters.txet'" in caplog.text
    plain = build_optimizer(model, 1e-3, 0.01)
    assert [g["weight_decay"] for g in plain.param_groups] == [0.01, 0.0]  # the two groups of before
    with pytest.raises(ConfigError, match="optim.lr_multipliers must map parameter-name prefixes to numbers > 0"):
        build_config(None, overrides=["optim.lr_multipliers={m2clip_adapters.text: 0}"])
    cfg = build_config(None, overrides=["optim.lr_multipliers={m2clip_adapters.text.: 0.5}"])
    assert cfg["optim"]["lr_multipliers"] == {"m2clip_adapters.text.": 0.5}
    with pytest.raises(ConfigError, match="data.sampling must be one of"):
        build_config(None, overrides=["data.sampling=random"])
    with pytest.raises(ConfigError, match="eval.num_crops 0"):
        build_config(None, overrides=["eval.num_crops=2"])

"""The bundled model's training script (training/train_mini.py), kept outside the runtime package."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_mini.py"
EUROSAT = ROOT.parent / "shared" / "data" / "eurosat_rgb"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_mini", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("warmup", "total"), [(5, 50), (1, 10), (3, 7)])
def test_warmup_cosine_schedule(warmup: int, total: int) -> None:
    """Linear warm-up to the peak over `warmup` steps, then a cosine that reaches zero at the end."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = _script().warmup_cosine(optimizer, warmup, total)
    rates = []
    for _ in range(total + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1 / warmup)
    assert rates[warmup - 1] == pytest.approx(0.1)  # peak at the end of the warm-up
    assert rates[warmup] == pytest.approx(0.1)  # the cosine starts at the peak
    middle = warmup + (total - warmup) / 2
    if middle.is_integer():
        assert rates[int(middle)] == pytest.approx(0.05)
    assert rates[total] == pytest.approx(0.0, abs=1e-12)
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(rates[:warmup]))  # warm-up rises
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(rates[warmup:]))  # decay falls
    steps = range(warmup, total)
    expected = [0.05 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in steps]
    assert [rates[s] for s in steps] == pytest.approx(expected)


def test_training_script_is_not_in_the_package() -> None:
    assert importlib.util.find_spec("geobimors.models.mini.train") is None
    from geobimors.models.mini.classes import PLAIN_CLASS_NAMES

    assert len(PLAIN_CLASS_NAMES) == 10


@pytest.mark.slow
@pytest.mark.skipif(not EUROSAT.is_dir(), reason="needs the EuroSAT data in ../shared/data")
def test_training_script_writes_loadable_weights(tmp_path: Path) -> None:
    """A tiny run (one image per class) writes weights that the bundled model's loader accepts."""
    from safetensors.torch import load_file

    from geobimors.models.mini import build_mini

    out, log = tmp_path / "w.safetensors", tmp_path / "log.json"
    command = [sys.executable, str(SCRIPT), str(EUROSAT), "--out", str(out), "--log", str(log)]
    command += ["--epochs", "1", "--batch-size", "10", "--limit-per-class", "1"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, timeout=600)
    model, _, _ = build_mini(load_text_weights=False)
    missing, unexpected = model.load_state_dict(load_file(str(out)), strict=False)
    assert not unexpected
    assert all(key.startswith("text.transformer.") for key in missing)
    assert '"history"' in log.read_text()


def test_coarser_mosaics_are_made_of_their_own_class() -> None:
    """``train_mini_joint.py --mosaic``: a mosaic holds images of the picked image's class only."""
    sys.path.insert(0, str(ROOT / "training"))
    import train_mini_joint

    targets = torch.arange(3).repeat_interleave(4)  # 3 classes x 4 images
    # Image j of class c is one flat value 60 c + j: a mosaic's values tell where its tiles came from.
    values = (60 * targets + torch.arange(12) % 4).to(torch.uint8)
    images = values.view(12, 1, 1, 1).expand(12, 12, 12, 3).contiguous()
    picked = torch.tensor([0, 5, 11, 3, 7, 8])
    same, mask = train_mini_joint.coarser_mosaics(images, targets, picked, torch.Generator().manual_seed(0), 0.0)
    assert not mask.any() and torch.equal(same, images[picked])
    mosaics, mask = train_mini_joint.coarser_mosaics(images, targets, picked, torch.Generator().manual_seed(0), 1.0)
    assert mask.all() and mosaics.shape == (6, 12, 12, 3) and mosaics.dtype == torch.uint8
    for mosaic, index in zip(mosaics, picked.tolist()):
        own = set(values[targets == targets[index]].tolist())
        assert set(mosaic.unique().tolist()) <= own
    assert max(len(m.unique()) for m in mosaics) > 1  # tiles of several images, not the picked one alone


def test_joint_training_moves_its_data_to_the_training_device() -> None:
    """``train_mini_joint.py --device``: images, targets, phrasing banks and captions go to the device with the
    model; validation targets stay on the CPU, where accuracies are counted (``meta`` stands in for a GPU)."""
    sys.path.insert(0, str(ROOT / "training"))
    import train_mini_joint

    train = {
        "aid": {
            "images": torch.zeros(4, 8, 8, 3, dtype=torch.uint8),
            "targets": torch.arange(4),
            "bank": [torch.zeros(5, 384), torch.zeros(6, 384)],
            "captions": torch.zeros(4, 5, 384),
            "classes": ["a", "b"],
            "min_area": 0.3,
        }
    }
    evals = {"aid": {"x": torch.zeros(2, 3, 8, 8), "targets": torch.tensor([0, 1]), "pooled": torch.zeros(2, 384)}}
    meta = torch.device("meta")
    moved = train_mini_joint.on_device(train, meta)["aid"]
    assert all(moved[k].is_meta for k in ("images", "targets", "captions"))
    assert all(t.is_meta for t in moved["bank"]) and len(moved["bank"]) == 2
    assert moved["classes"] == ["a", "b"] and moved["min_area"] == 0.3
    assert not train["aid"]["images"].is_meta  # the CPU copy is left as it was
    moved_eval = train_mini_joint.on_device(evals, meta)["aid"]
    assert moved_eval["x"].is_meta and moved_eval["pooled"].is_meta
    assert moved_eval["targets"].device.type == "cpu"


def test_joint_training_distils_a_teachers_view_mean() -> None:
    """``train_mini_joint.py --teacher``: the KL term pulls the student's class probabilities toward the
    teacher's (mean over turned views), and the teacher draws no random numbers, so with
    ``--distill-weight 0`` the loss is exactly the run without a teacher."""
    sys.path.insert(0, str(ROOT / "training"))
    import train_mini_joint

    from geobimors.models.clip import ClipModel
    from geobimors.models.mini import build_mini

    torch.manual_seed(0)
    student, tokenizer, _ = build_mini()
    teacher, _, _ = build_mini()  # another random image tower
    teacher.eval()
    clip = ClipModel("mini", student, tokenizer, torch.device("cpu"), "fp32")
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    data = {
        "aid": {
            "images": images,
            "targets": torch.tensor([0, 1, 2, 0, 1, 2]),
            "bank": [torch.randn(4, 384) for _ in range(3)],
            "min_area": 0.5,
            "max_blur": 2.0,
        }
    }
    shares = {"aid": 6}

    def loss(generator_seed: int, **teaching: object) -> tuple[torch.Tensor, dict[str, float]]:
        generator = torch.Generator().manual_seed(generator_seed)
        return train_mini_joint.step_loss(student, clip, data, shares, generator, 0.0, **teaching)  # type: ignore[arg-type]

    student.eval()  # batch statistics aside, the same input gives the same loss
    plain, _ = loss(1)
    taught, parts = loss(1, teacher=teacher, teacher_views=4, distill_weight=0.0)
    assert torch.allclose(plain, taught) and parts["aid_kl"] > 0

    # Training on one augmented batch (the same generator seed at each step) isolates the KL term's pull.
    student.train()
    student.requires_grad_(False)
    student.visual.requires_grad_(True)
    optimizer = torch.optim.SGD(student.visual.parameters(), lr=0.05, momentum=0.9)
    kl = []
    for _ in range(20):
        total, parts = loss(0, teacher=teacher, teacher_views=4, distill_weight=1.0)
        kl.append(parts["aid_kl"])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert kl[-1] < 0.25 * kl[0]


def test_a_larger_input_teacher_sees_the_students_crops_undegraded() -> None:
    """``--teacher-size``: the teacher sees the student's crops, turned alike, before blur, colour, haze and
    JPEG, at its own input size; asking for that view draws no random numbers; ``--distill-sets`` limits
    the teaching; and the teacher's class probabilities use its own text projection."""
    sys.path.insert(0, str(ROOT / "training"))
    import train_mini_joint

    from geobimors.models.clip import ClipModel, dihedral_views
    from geobimors.models.mini import build_mini

    images = torch.randint(0, 256, (12, 16, 16, 3), dtype=torch.uint8)
    plain, none = train_mini_joint.augment_views(images, torch.Generator().manual_seed(3), 1.0, 3.0, 8)
    student_view, clean = train_mini_joint.augment_views(images, torch.Generator().manual_seed(3), 1.0, 3.0, 8, 1.0, 16)
    assert none is None and torch.equal(plain, student_view) and clean is not None and clean.shape == (12, 3, 16, 16)
    # Whole-image crops (area 1): each clean view is exactly a turn or mirror image of its input.
    source = images.permute(0, 3, 1, 2).float() / 255.0
    for i in range(12):
        errors = [float((clean[i] - v[0]).abs().max()) for v in dihedral_views(source[i : i + 1], 8)]
        assert min(errors) < 1e-5
    _, bigger = train_mini_joint.augment_views(images, torch.Generator().manual_seed(3), 1.0, 3.0, 8, 1.0, 32)
    assert bigger is not None and bigger.shape[-1] == 32

    torch.manual_seed(0)
    student, tokenizer, _ = build_mini()
    teacher, _, _ = build_mini()
    student.eval(), teacher.eval()
    clip = ClipModel("mini", student, tokenizer, torch.device("cpu"), "fp32")
    data = {
        name: {
            "images": torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8),
            "targets": torch.tensor([0, 1, 2, 0, 1, 2]),
            "bank": [torch.randn(4, 384) for _ in range(3)],
            "min_area": 0.5,
            "max_blur": 2.0,
        }
        for name in ("eurosat", "aid")
    }
    shares = {"eurosat": 6, "aid": 6}

    def loss(**teaching: object) -> tuple[torch.Tensor, dict[str, float]]:
        generator = torch.Generator().manual_seed(1)
        return train_mini_joint.step_loss(student, clip, data, shares, generator, 0.0, **teaching)  # type: ignore[arg-type]

    untaught, _ = loss()
    taught = {"teacher": teacher, "teacher_views": 1, "teacher_size": 48, "distill_sets": ("aid",)}
    same, parts = loss(distill_weight=0.0, **taught)
    assert torch.allclose(untaught, same)
    assert parts["aid_kl"] > 0 and "eurosat_kl" not in parts
    with torch.no_grad():
        teacher.text.proj.weight.mul_(-1.0)  # the teacher's own text space, not the student's
    _, flipped = loss(distill_weight=0.5, **taught)
    assert abs(flipped["aid_kl"] - parts["aid_kl"]) > 1e-3


def test_colour_jitter_strength_scales_every_range() -> None:
    """``--colour-jitter S``: 0 leaves images as they are, 1 is the shipped recipe, 2 doubles every deviation."""
    module = _script()
    images = torch.rand(64, 3, 8, 8) * 0.5 + 0.25  # away from the clamp at 0 and 1
    same = module.colour_jitter(images.clone(), torch.Generator().manual_seed(0), 0.0)
    assert torch.allclose(same, images)
    default = module.colour_jitter(images.clone(), torch.Generator().manual_seed(0))
    assert torch.equal(default, module.colour_jitter(images.clone(), torch.Generator().manual_seed(0), 1.0))
    # A flat grey image isolates gains and offsets (contrast has nothing to scale), and brightness.
    grey = torch.full((64, 3, 1, 1), 0.5)
    one = module.colour_jitter(grey.clone(), torch.Generator().manual_seed(1), 1.0) - 0.5
    two = module.colour_jitter(grey.clone(), torch.Generator().manual_seed(1), 2.0) - 0.5
    assert 1.5 < float(two.abs().mean() / one.abs().mean()) < 2.5


def test_aerial_sets_can_train_at_another_input_size() -> None:
    """``--aerial-size``: the named sets reach the image tower at their own input size, one forward pass per
    size; at the model's own size the loss is exactly the single-pass one."""
    sys.path.insert(0, str(ROOT / "training"))
    import train_mini_joint

    from geobimors.models.clip import ClipModel
    from geobimors.models.mini import build_mini

    torch.manual_seed(0)
    model, tokenizer, _ = build_mini()
    model.eval()
    clip = ClipModel("mini", model, tokenizer, torch.device("cpu"), "fp32")
    data = {
        name: {
            "images": torch.randint(0, 256, (5, side, side, 3), dtype=torch.uint8),
            "targets": torch.tensor([0, 1, 0, 1, 0]),
            "bank": [torch.randn(3, 384) for _ in range(2)],
            "min_area": 0.6,
            "max_blur": 2.0,
        }
        for name, side in (("eurosat", 64), ("aid", 128))
    }
    shares = {"eurosat": 4, "aid": 3}
    seen: list[tuple[int, ...]] = []
    hook = model.visual.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))

    def loss(set_sizes: dict[str, int] | None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(2)
        return train_mini_joint.step_loss(model, clip, data, shares, generator, 0.0, set_sizes=set_sizes)[0]

    plain = loss(None)
    assert seen == [(7, 3, 64, 64)]
    seen.clear()
    assert torch.equal(plain, loss({"aid": 64}))
    seen.clear()
    larger = loss({"aid": 96})
    hook.remove()
    assert sorted(seen) == [(3, 3, 96, 96), (4, 3, 64, 64)]
    assert torch.isfinite(larger) and not torch.equal(larger, plain)


def test_teacher_script_packs_trains_the_image_tower_and_scores_val(tmp_path: Path) -> None:
    """``training/train_mini_teacher.py``: ``pack`` carries the data cache's aerial images (JPEG q95) and the
    phrasing banks through the init's text projection; ``train`` changes the image tower only and writes
    bundled-format weights; ``evaluate`` scores val images read from their files at the teacher's size."""
    from PIL import Image
    from safetensors.torch import load_file, save_file

    rng = torch.Generator().manual_seed(0)
    classes = {"ucmerced": ["agricultural", "beach"], "aid": ["Airport", "Desert", "Forest"]}
    folders = {"ucmerced": "ucmerced", "aid": "aid_subset"}
    tensors: dict[str, torch.Tensor] = {}
    sets: dict[str, dict[str, dict[str, object]]] = {"train": {}, "evals": {}}
    for name, names in classes.items():
        count = 4 * len(names)
        # Smooth images (a colour per class plus a gentle ramp): JPEG keeps them within a few levels.
        colours = torch.randint(40, 200, (len(names), 3), generator=rng)
        targets = torch.arange(count) % len(names)
        ramp = torch.linspace(0, 30, 24).view(1, 24, 1, 1)
        images = (colours[targets].view(count, 1, 1, 3) + ramp).clamp(0, 255).to(torch.uint8).expand(count, 24, 24, 3)
        tensors[f"train/{name}/images"] = images.contiguous()
        tensors[f"train/{name}/targets"] = targets
        for i in range(len(names)):
            tensors[f"train/{name}/bank{i}"] = torch.randn(5, 384, generator=rng)
        sets["train"][name] = {"classes": names, "bank": len(names)}
        paths = []
        for i, cls in enumerate(names):
            folder = tmp_path / "data" / folders[name] / cls
            folder.mkdir(parents=True)
            Image.fromarray(images[i].numpy()).save(folder / "val.png")
            paths.append(f"{cls}/val.png")
        tensors[f"evals/{name}/targets"] = torch.arange(len(names))
        tensors[f"evals/{name}/pooled"] = torch.randn(len(names) * 10, 384, generator=rng)
        sets["evals"][name] = {"classes": names, "paths": paths}
    cache = tmp_path / "data-cache"
    save_file(tensors, str(cache.with_suffix(".safetensors")))
    cache.with_suffix(".json").write_text(json.dumps({"key": ["x", None], "sets": sets}))

    script = ROOT / "training" / "train_mini_teacher.py"
    init = ROOT / "geobimors" / "models" / "mini" / "mini.safetensors"
    pack, out = tmp_path / "pack.safetensors", tmp_path / "teacher.safetensors"
    python = [sys.executable, str(script)]
    common = ["--init", str(init)]
    subprocess.run(
        [*python, "pack", str(tmp_path / "data"), "--data-cache", str(cache), *common, "--pack", str(pack)], check=True
    )
    packed = load_file(str(pack))
    shipped = load_file(str(init))
    projected = tensors["train/aid/bank1"] @ shipped["text.proj.weight"].T
    assert torch.allclose(packed["aid/bank1"].float(), projected, rtol=2e-3, atol=2e-3)
    sys.path.insert(0, str(ROOT / "training"))
    import train_mini_teacher

    decoded = train_mini_teacher.decode(packed["ucmerced/jpeg"], packed["ucmerced/jpeg_len"])
    assert decoded.shape == (8, 24, 24, 3)
    assert (decoded.int() - tensors["train/ucmerced/images"].int()).abs().float().mean() < 3

    log = tmp_path / "teacher.json"
    train = ["train", "--pack", str(pack), *common, "--size", "32", "--steps", "3", "--warmup-steps", "1"]
    subprocess.run(
        [*python, *train, "--batch-size", "8", "--threads", "1", "--out", str(out), "--log", str(log)], check=True
    )
    taught = load_file(str(out))
    assert set(taught) == set(shipped)
    assert torch.equal(taught["text.proj.weight"], shipped["text.proj.weight"])
    assert not torch.equal(taught["visual.head.proj.weight"], shipped["visual.head.proj.weight"])
    assert json.loads(log.read_text())["steps"] == 3

    score = ["evaluate", str(tmp_path / "data"), str(out), "--data-cache", str(cache), *common, "--size", "32"]
    result = subprocess.run([*python, *score, "--threads", "1"], check=True, capture_output=True, text=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["size"] == 32
    for name, names in classes.items():
        for key in (f"val_{name}", f"val_{name}_tta8"):
            # Accuracies over len(names) val images: multiples of 1/len(names).
            assert 0 <= record[key] <= 1 and abs(record[key] * len(names) - round(record[key] * len(names))) < 1e-6
